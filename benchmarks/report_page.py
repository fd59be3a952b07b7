"""The report page from a small real run, and a screenshot of it at 1280 px.

    .venv/bin/python benchmarks/report_page.py        # ~3 min on 2 shared cores
    .venv/bin/python benchmarks/report_page.py --records benchmarks/results/report_page.records.json
                                                      # re-render the kept records only

Exports the Fashion-MNIST teacher and the pruned + distilled student kept in benchmarks/artifacts
(FP32, and INT8 for the student), benchmarks all three interleaved in one `tvc bench` run on one
pinned thread with top-1 on a seeded 2,000-image subset of the test split, renders `tvc report`,
and keeps in benchmarks/results/: the records (report_page.records.json), the page
(report_page.html) and a screenshot of the whole page at 1280 px (report_page_1280.png, taken by
Debian's chromium, reduced to a 64-colour palette to stay small). Timing on a shared machine is
what the report's noise column and intervals are for: read them, not the point estimates.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, ROOT, rel, repo_relative

ARTIFACTS = ROOT / "benchmarks" / "artifacts"
WIDTH = 1280


def tvc(*args: str) -> None:
    cmd = [sys.executable, "-m", "tvc", *args]
    print("$ tvc " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("error: chromium is not installed; apt-get install chromium")
    profile = tempfile.mkdtemp(prefix="tvc-chromium-")
    try:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--disable-sync",
             f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def page_height(page: Path) -> int:
    """The page's full height at WIDTH px, from the browser itself."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace(
        "</body>", '<script>addEventListener("load", () => { const p = document.createElement('
        '"pre"); p.id = "h"; p.textContent = document.scrollingElement.scrollHeight; '
        "document.body.appendChild(p); });</script></body>"))  # fmt: skip
    out = chromium(f"--window-size={WIDTH},900", "--virtual-time-budget=5000", "--dump-dom",
                   probe.as_uri()).stdout  # fmt: skip
    return int(re.search(r'<pre id="h">(\d+)</pre>', out).group(1))


def screenshot(page: Path, png: Path) -> None:
    from PIL import Image

    height = page_height(page)
    raw = page.with_name("raw.png")
    chromium(f"--window-size={WIDTH},{height}", "--virtual-time-budget=5000",
             f"--screenshot={raw}", page.as_uri())  # fmt: skip
    img = Image.open(raw).convert("RGB").quantize(colors=64)
    img.save(png, optimize=True)
    print(f"screenshot {png.relative_to(ROOT)}: {img.width}x{img.height}, "
          f"{png.stat().st_size // 1024} KiB")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "report_page"))
    ap.add_argument("--limit", type=int, default=2000, help="test images for top-1")
    ap.add_argument("--records", help="render these records instead of measuring anew")
    args = ap.parse_args()
    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)  # measure from scratch, never from a cache
    if args.records:
        run.mkdir(parents=True)
        shutil.copy(args.records, run / "bench.json")
    else:
        measure(run, args.limit)
    records = run / "bench.json"
    page = run / "report.html"
    title = "Fashion-MNIST ViT: teacher vs pruned + distilled student (small run)"
    tvc("report", rel(records), "-o", rel(page), "--title", title)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.records:  # kept with paths relative to the repository
        kept = repo_relative(json.loads(records.read_text()))
        (RESULTS / "report_page.records.json").write_text(json.dumps(kept, indent=2) + "\n")
    shutil.copy(page, RESULTS / "report_page.html")
    screenshot(page, RESULTS / "report_page_1280.png")
    for rec in json.loads(records.read_text()):
        c = rec.get("conditions") or {}
        lat = rec["latency_ms"]
        ci = f"{lat.get('ci_low', 0):.3f}-{lat.get('ci_high', 0):.3f}"
        print(f"{rec['variant']}: p50 {lat['p50']:.3f} ms [{ci}], noisy={c.get('noisy')} "
              f"{c.get('reasons', [])}")  # fmt: skip


def measure(run: Path, limit: int) -> None:
    """Export the teacher and the student, and bench all three variants interleaved."""
    teacher, student = run / "teacher-onnx", run / "student-onnx"
    tvc("export", rel(ARTIFACTS / "fmnist_teacher"), "-o", rel(teacher))
    tvc("export", rel(ARTIFACTS / "fmnist_student_p50_kd"), "-o", rel(student), "--int8",
        "static", "--calib", "fashion-mnist", "--calib-size", "256")  # fmt: skip
    tvc("bench", rel(teacher), rel(student), "--threads", "1", "--data", "fashion-mnist",
        "--limit", str(limit), "--min-time-s", "1.5", "--max-time-s", "5",
        "--json", rel(run / "bench.json"))  # fmt: skip


if __name__ == "__main__":
    main()
