"""The HTML report in a real headless browser (Debian's chromium): no layout errors.

A small script is added to a copy of the page. Once the page has loaded it opens every <details>,
then lists elements that stick out of the viewport (outside the tables' own scroll boxes), a page
that scrolls sideways, and images that did not decode. It writes the findings into the DOM, which
chromium's --dump-dom hands back.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from tvc.report.render import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

CHECK = """
<script>
window.addEventListener("load", () => {
  document.querySelectorAll("details").forEach((d) => { d.open = true; });
  const vw = document.documentElement.clientWidth;
  const problems = [];
  const sw = document.documentElement.scrollWidth;
  if (sw > vw + 1) problems.push(`page scrolls sideways: ${sw} > ${vw}`);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.parentElement.closest(".scroll")) continue;  // tables scroll inside their own box
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > vw + 1 || r.left < -1)) {
      problems.push(`${el.tagName.toLowerCase()} sticks out: ${Math.round(r.left)}..` +
                    `${Math.round(r.right)} of ${vw}: ${el.textContent.slice(0, 40)}`);
    }
  }
  const images = [...document.images];
  for (const img of images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image not loaded: ${img.alt}`);
    else if (img.getBoundingClientRect().width < 100) problems.push(`image too small: ${img.alt}`);
  }
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({problems, images: images.length, width: vw});
  document.body.appendChild(out);
});
</script>
"""


def layout_check(page: str, tmp_path, width: int) -> dict:
    html_file = tmp_path / f"report-{width}.html"
    html_file.write_text(page.replace("</body>", CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom",
           html_file.as_uri()]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', res.stdout, re.S)
    assert found, f"chromium gave no layout result (exit {res.returncode}): {res.stderr[-500:]}"
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("width", [1280, 420])
def test_report_has_no_layout_errors_in_chromium(records, tmp_path, width):
    # a long command and a long board name are the usual ways to break a layout
    records[0].command = "tvc bench " + "/very/long/path/to/an/artifact" * 12 + " --batch 1,8"
    page = render_html(records, title="Three boards")
    result = layout_check(page, tmp_path, width)
    assert result["images"] == 3
    assert result["problems"] == []


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_check_catches_a_broken_page(records, tmp_path):
    # the check itself must fail on a page that overflows and has a broken image
    page = render_html(records).replace(
        "</h1>", '</h1><div style="width:3000px">wide</div><img alt="broken" src="data:,">'
    )
    problems = layout_check(page, tmp_path, 1024)["problems"]
    assert any("page scrolls sideways" in p for p in problems)
    assert any("image not loaded: broken" in p for p in problems)
