"""`make demo`: the main job on the built-in default, end to end on a CPU.

It runs the shipped `fmnist-demo` recipe: train a small ViT teacher on the real Fashion-MNIST
(or reuse it: unchanged stages are skipped on a re-run), prune it by half and distil it from the
teacher, export FP32 and INT8, benchmark every variant with accuracy on the 10k test images, and
write the report. The last lines say where the report is and give the headline.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from tvc.pipeline.recipe import load_recipe
from tvc.pipeline.runner import RECORDS_FILE, Runner
from tvc.report.render import analyse, headline
from tvc.report.schema import read_records

DEMO_RECIPE = "fmnist-demo"


def run_demo(out: Path, *, threads: int | None = None) -> None:
    t0 = time.perf_counter()
    runner = Runner(load_recipe(DEMO_RECIPE), out, echo=lambda s: click.echo(s, err=True))
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
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; run directory: {out}")
    for path in reports:
        click.echo(f"report: {path}")
    analysis = analyse(records)
    # The headline compares what would ship (the INT8 student) with the FP32 teacher.
    shipped = next((r.variant for r in records if r.variant.endswith("int8-qdq")), None)
    line = headline(analysis, shipped) or headline(analysis)
    if line:
        click.echo(f"headline: {line}")
