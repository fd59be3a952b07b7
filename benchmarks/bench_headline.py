"""The headline claim, as bench records that `tvc report` renders.

    .venv/bin/python benchmarks/bench_headline.py              # ~6 min on 2 cores
    .venv/bin/tvc report benchmarks/results/headline.records.json -o report.html

It runs what `make demo` runs (the `fmnist-reuse` recipe: the trained Fashion-MNIST teacher in
benchmarks/artifacts, pruned 50% by heads + MLP width, distilled for one CPU epoch on 12k images,
exported FP32 and INT8, benchmarked with ONNX Runtime on the CPU at a fixed thread count, accuracy
on the 10k test images) from scratch in its own run directory, and keeps the records (schema
tvc.bench/1) and the Markdown report in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from tvc.demo import run_demo
from tvc.pipeline.runner import RECORDS_FILE
from tvc.records import read_records
from tvc.report.render import write_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="ORT threads in the bench stage")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "headline"))
    args = ap.parse_args()
    os.chdir(ROOT)  # the recipe names the teacher relative to the repository root
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # measure from scratch, never from a cache
    run_demo(run_dir, threads=args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    records_file = RESULTS / "headline.records.json"
    shutil.copy(run_dir / "bench" / RECORDS_FILE, records_file)
    write_report(
        read_records(records_file),
        RESULTS / "headline_report.md",
        title="Headline: pruned + distilled + INT8 ViT vs its FP32 teacher (Fashion-MNIST)",
    )
    print(f"wrote {records_file} and {RESULTS / 'headline_report.md'}")


if __name__ == "__main__":
    main()
