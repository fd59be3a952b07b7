"""`tvc bench`."""

from __future__ import annotations

import logging

import click

from tvc.cli.options import command_line, model_options, parse_int_list
from tvc.errors import ConfigError

log = logging.getLogger("tvc")

# -------------------------------------------------------------------------------------- bench


@click.command()
@click.argument("target")
@click.option(
    "--backend",
    default="ort",
    show_default=True,
    help="Comma-separated: ort, torch (trt where TensorRT is installed).",
)
@click.option("--batch", "batches", default="1", show_default=True, help="e.g. 1,8")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores)."
)
@click.option("--provider", default="cpu", show_default=True, help="ORT provider: cpu, cuda, trt.")
@click.option("--warmup-s", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--min-runs", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--min-time-s", default=3.0, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write bench records (tvc.bench/1) to this file.",
)
@click.option(
    "--data",
    default=None,
    help="Also measure top-1/top-5 on DATA's test split (into the records); COCO mAP for "
    "detectors on detection DATA.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded subset of this many images.",
)
@model_options
def bench(
    target,
    backend,
    batches,
    threads,
    provider,
    warmup_s,
    min_runs,
    min_time_s,
    json_out,
    data,
    limit,
    weights,
    num_classes,
    pretrained,
) -> None:
    """Measure latency, throughput, size and memory of TARGET (ONNX, artifact or model)."""
    from tvc.report.schema import write_records
    from tvc.report.table import print_records
    from tvc.runtime.bench import BenchConfig
    from tvc.runtime.run import bench_target

    backends = tuple(b.strip() for b in backend.split(",") if b.strip())
    if not backends:  # '' would time nothing and print an empty table
        raise ConfigError("--backend is empty", "e.g. --backend ort or --backend ort,torch")
    cfg = BenchConfig(
        backends=backends,
        batches=parse_int_list(batches, "--batch"),
        threads=threads,
        warmup_s=warmup_s,
        min_runs=min_runs,
        min_time_s=min_time_s,
        provider=provider,
    )
    records = bench_target(
        target,
        cfg,
        command=command_line(),
        model_kwargs={"weights": weights, "num_classes": num_classes, "pretrained": pretrained},
        data=data,
        limit=limit,
    )
    print_records(records)
    if json_out:
        write_records(records, json_out)
        click.echo(f"wrote {len(records)} record(s) to {json_out}")


COMMANDS = [bench]
