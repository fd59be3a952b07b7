"""`make demo`: the main job on the built-in default, end to end on a CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tvc.export.onnx import OnnxExportConfig, export_onnx
from tvc.models import load_model
from tvc.report.schema import write_records
from tvc.report.table import print_records
from tvc.runtime.bench import BenchConfig
from tvc.runtime.run import bench_target

log = logging.getLogger("tvc")
DEMO_MODEL = "vit_nano"


def run_demo(out: Path, *, threads: int | None, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX", DEMO_MODEL)
    loaded = load_model(DEMO_MODEL, warn_random=False)
    art = export_onnx(loaded, out / "exported", OnnxExportConfig(dynamic_batch=True))
    cfg = BenchConfig(backends=("ort",), batches=(1, 8), threads=threads, min_time_s=2.0)
    records = bench_target(str(art.path), cfg, command=command, model_kwargs={})
    cfg_torch = BenchConfig(backends=("torch",), batches=(1, 8), threads=threads, min_time_s=2.0)
    records += bench_target(
        DEMO_MODEL,
        cfg_torch,
        command=command,
        model_kwargs={"weights": None, "num_classes": None, "pretrained": False},
    )
    write_records(records, out / "bench.json")
    print_records(records)
    ort1 = next(r for r in records if r.backend == "ort" and r.batch == 1)
    pt1 = next(r for r in records if r.backend == "torch" and r.batch == 1)
    click.echo(f"records: {out / 'bench.json'}")
    click.echo(
        f"headline: ONNX Runtime p50 {ort1.latency_ms.p50:.2f} ms vs PyTorch eager "
        f"{pt1.latency_ms.p50:.2f} ms at batch 1 ({pt1.latency_ms.p50 / ort1.latency_ms.p50:.1f}x)"
    )
