"""The HTML report in a real headless browser (Debian's chromium): no layout errors.

A small script is added to a copy of the page. Once the page has loaded it opens every <details>,
then lists elements that stick out of the viewport (outside the tables' own scroll boxes), a page
that scrolls sideways, tables that need their scrollbar, plot labels that fall outside their SVG
or overlap one another, and images that did not decode. It writes the findings into the DOM,
which chromium's --dump-dom hands back. At 1280 px no table may scroll; the print stylesheet is
checked at A4's printable width.
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
  const sw = document.scrollingElement.scrollWidth;
  if (sw > vw + 1) problems.push(`page scrolls sideways: ${sw} > ${vw}`);
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg")) continue;  // SVG texts are checked against their plot below
    if (el.parentElement.closest(".scroll")) continue;  // tables scroll inside their own box
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > vw + 1 || r.left < -1)) {
      problems.push(`${el.tagName.toLowerCase()} sticks out: ${Math.round(r.left)}..` +
                    `${Math.round(r.right)} of ${vw}: ${el.textContent.slice(0, 40)}`);
    }
  }
  const tables = [...document.querySelectorAll(".scroll")];
  const scrolled = tables.filter((t) => t.scrollWidth > t.clientWidth + 1)
    .map((t) => `table scrolls: ${t.scrollWidth} > ${t.clientWidth}: ` +
                t.querySelector("th:nth-child(2)").textContent);
  const svgs = [...document.querySelectorAll("figure svg")];
  for (const svg of svgs) {
    const box = svg.getBoundingClientRect();
    if (box.width < 100) problems.push(`plot too small: ${svg.getAttribute("aria-label")}`);
    const labels = [...svg.querySelectorAll("text")].filter((t) => t.textContent.trim())
      .map((t) => [t, t.getBoundingClientRect()]);
    for (const [t, r] of labels) {
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5 ||
          r.top < box.top - 0.5 || r.bottom > box.bottom + 0.5) {
        problems.push(`label clipped in ${svg.getAttribute("aria-label")}: "${t.textContent}"`);
      }
    }
    for (let i = 0; i < labels.length; i++) {
      for (let j = i + 1; j < labels.length; j++) {
        const [a, ra] = labels[i], [b, rb] = labels[j];
        const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
        const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
        if (w > 2 && h > 2) {  // text boxes include line spacing: touching is not overlap
          problems.push(`labels overlap in ${svg.getAttribute("aria-label")}: ` +
                        `"${a.textContent}" and "${b.textContent}" ` +
                        `by ${w.toFixed(1)}x${h.toFixed(1)}`);
        }
      }
    }
  }
  const images = [...document.images];
  for (const img of images) {
    if (!img.complete || img.naturalWidth === 0) problems.push(`image not loaded: ${img.alt}`);
    else if (img.getBoundingClientRect().width < 100) problems.push(`image too small: ${img.alt}`);
  }
  const out = document.createElement("pre");
  out.id = "layout-check";
  out.textContent = JSON.stringify({problems, scrolled, plots: svgs.length, width: vw,
                                    tables: tables.length});
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


SKIP = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


def _long(records):
    # a long command and a long board name are the usual ways to break a layout
    records[0].command = "tvc bench " + "/very/long/path/to/an/artifact" * 12 + " --batch 1,8"
    return records


@pytest.mark.browser
@SKIP
@pytest.mark.parametrize("width", [1280, 420])
def test_report_has_no_layout_errors_in_chromium(records, tmp_path, width):
    page = render_html(_long(records), title="Three boards")
    result = layout_check(page, tmp_path, width)
    assert result["plots"] == 3
    assert result["problems"] == []
    if width == 1280:  # the tables fit a 1280-px window: nothing hides behind a scrollbar
        assert result["tables"] == 7 and result["scrolled"] == []


@pytest.mark.browser
@SKIP
def test_report_fits_a_sheet_of_paper(records, tmp_path):
    # the print stylesheet applied on screen, at the printable width of A4 (about 700 px)
    page = render_html(_long(records)).replace("@media print{", "@media all{")
    result = layout_check(page, tmp_path, 700)
    assert result["problems"] == [] and result["scrolled"] == []


@pytest.mark.browser
@SKIP
def test_report_of_noisy_interleaved_records_fits_1280(noisy_records, tmp_path):
    # every column at once: intervals, noise marks, quality, power, a renamed variant
    result = layout_check(render_html(noisy_records), tmp_path, 1280)
    assert result["problems"] == [] and result["scrolled"] == []


@pytest.mark.browser
@SKIP
def test_the_check_catches_a_broken_page(records, tmp_path):
    # the check itself must fail on a page that overflows and has a broken image
    page = render_html(records).replace(
        "</h1>", '</h1><div style="width:3000px">wide</div><img alt="broken" src="data:,">'
    )
    # ... and on a plot label pushed out of its SVG
    page = re.sub(r"(<svg .*?<text[^>]*?) x=\"[^\"]*\"", r'\1 x="-500"', page, count=1,
                  flags=re.S)  # fmt: skip
    problems = layout_check(page, tmp_path, 1024)["problems"]
    assert any("page scrolls sideways" in p for p in problems)
    assert any("image not loaded: broken" in p for p in problems)
    assert any("label clipped in Latency vs accuracy" in p for p in problems)
