"""`tvc eval`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tvc.cli.options import model_options
from tvc.errors import ConfigError

log = logging.getLogger("tvc")


@click.command("eval")
@click.argument("target")
@click.option(
    "--data",
    required=True,
    help="fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors "
    "fashion-mnist-det or a COCO-format directory (COCO mAP).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded subset of this many images.",
)
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"])
)
@click.option(
    "--reference",
    default=None,
    help="MODEL or artifact to measure top-1 agreement with (e.g. FP32 source).",
)
@click.option(
    "--backend",
    default=None,
    type=click.Choice(["ort", "torch", "trt"]),
    help="Default: ort for ONNX files/export artifacts, torch for models.",
)
@click.option(
    "--variant",
    "variant_file",
    default=None,
    help="Only this file of an export artifact, e.g. model.int8.onnx.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--provider", default="cpu", show_default=True, help="ORT provider: cpu, cuda, trt.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results as JSON.",
)
@model_options
def eval_cmd(
    target,
    data,
    limit,
    split,
    reference,
    backend,
    variant_file,
    threads,
    provider,
    batch_size,
    json_out,
    weights,
    num_classes,
    pretrained,
) -> None:
    """Top-1/top-5 of TARGET (model, model artifact, ONNX file or export artifact) on DATA."""
    import json

    from tvc.data.detection import is_detection_spec as is_detection_data

    common = {
        "split": split,
        "limit": limit,
        "reference": reference,
        "variant_file": variant_file,
        "threads": threads,
        "provider": provider,
        "batch_size": batch_size,
        "model_kwargs": {"weights": weights, "num_classes": num_classes, "pretrained": pretrained},
    }
    if is_detection_data(data):  # COCO mAP of DETR-style detectors: tvc/eval/detection.py
        from tvc.eval.detection import eval_detection_target

        if backend == "trt":
            raise ConfigError("detection evaluation runs on ort or torch", "drop --backend trt")
        results = eval_detection_target(target, data, **common)
        for r in results:
            agree = f", agreement mAP {r['agreement']:.2f}" if r["agreement"] is not None else ""
            click.echo(
                f"{r['variant']}: mAP {r['map']:.2f}, AP50 {r['ap50']:.2f}{agree} on {r['n']} "
                f"{r['dataset']} {r['split']} images"
            )
    else:
        from tvc.eval.run import eval_target

        results = eval_target(target, data, backend=backend, **common)
        for r in results:
            top5 = f", top-5 {r['top5']:.2f}%" if r["top5"] is not None else ""
            agree = f", agreement {r['agreement']:.2f}%" if r["agreement"] is not None else ""
            click.echo(
                f"{r['variant']} [{r['backend']}]: top-1 {r['top1']:.2f}%{top5}{agree} on "
                f"{r['n']} {r['dataset']} {r['split']} images"
            )
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


COMMANDS = [eval_cmd]
