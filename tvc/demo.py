"""`make demo`: the main job on the built-in default, end to end on a CPU.

It reuses the trained teacher the repository keeps (benchmarks/artifacts/fmnist_teacher, a plain
ViT trained on a GPU by benchmarks/bench_distill_fmnist.py) through the `fmnist-reuse` recipe, or,
where that artifact is absent, trains a small one on the CPU with the `fmnist-demo` recipe. Then:
prune the teacher by half, distil the student from it, export FP32 and INT8, benchmark every
variant with accuracy on the 10k test images, and write the report. Unchanged stages are skipped
on a re-run. The last lines say where the report is and give the headline.

`tvc demo --detection` tells the same story for detection with the `fmnist-det` recipe: a DETR
trained here on the built-in Fashion-MNIST scenes, pruned, distilled, INT8, reported in mAP.
"""

from __future__ import annotations

import time
from pathlib import Path

from tvc.pipeline.recipe import load_recipe
from tvc.pipeline.runner import RECORDS_FILE, Echo, Runner
from tvc.records import read_records
from tvc.report.headline import run_headline

TRAINED_TEACHER = Path("benchmarks/artifacts/fmnist_teacher")


def demo_recipe(detection: bool = False, lanes: bool = False) -> str:
    """The recipe the demo runs: detection, lanes, or classification from the kept teacher if
    present."""
    if lanes:  # LSTR trained here on the built-in lane scenes (benchmarks/bench_lanes.py)
        return "lanes-synth"
    if detection:  # DETR trained here on the built-in detection scenes (about 5 min on 2 cores)
        return "fmnist-det"
    return "fmnist-reuse" if (TRAINED_TEACHER / "artifact.json").is_file() else "fmnist-demo"


def run_demo(out: Path, *, threads: int | None = None, detection: bool = False,
             echo: Echo = print, progress: Echo = print, lanes: bool = False,
             force: bool = False) -> None:  # fmt: skip
    """Run the demo recipe in `out`: `progress` gets the stages' lines, `echo` the result.
    With `force` every stage runs again and replaces its previous output (a fresh measurement);
    without it, stages whose settings and inputs are unchanged are skipped."""
    t0 = time.perf_counter()
    name = demo_recipe(detection, lanes)
    progress(f"running recipe {name} (see 'tvc recipes --show {name}')")
    runner = Runner(load_recipe(name), out, echo=progress, force=force)
    if threads is not None:
        for step in runner.steps:
            if step.kind == "bench":
                step.options["threads"] = threads
    results = runner.run()
    records = [
        rec
        for r in results
        if r.step.kind == "bench"
        for rec in read_records(r.output / RECORDS_FILE)
    ]
    reports = [
        r.output / f"report.{fmt}"
        for r in results
        if r.step.kind == "report"
        for fmt in r.step.formats
    ]
    if lanes:  # the picture of predicted lanes joins the report
        from tvc.tasks.lanes import demo_picture

        for line in demo_picture(results, reports):
            progress(line)
    echo(f"demo finished in {time.perf_counter() - t0:.0f} s; run directory: {out}")
    for path in reports:
        echo(f"report: {path}")
    # the report's own headline (what would ship, the most derived variant, vs the baseline)
    baseline = next((r.step.options.get("baseline") for r in results if r.step.kind == "report"),
                    None)  # fmt: skip
    line = run_headline(records, baseline)
    if line:
        echo(f"headline: {line}")
