"""`tvc export`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tvc.cli.options import artifact_output, model_options
from tvc.errors import ConfigError

log = logging.getLogger("tvc")


@click.command()
@click.argument("model")
@artifact_output("Artifact directory to write.")
@model_options
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--batch", default=1, show_default=True, type=int, help="Fixed batch size.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension.")
@click.option("--input-size", type=int, default=None, help="Input resolution (model names only).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--fp16", is_flag=True, help="Also write an FP16 ONNX (norms/softmax kept FP32).")
@click.option(
    "--int8",
    type=click.Choice(["static", "dynamic"]),
    default=None,
    help="Also write an INT8 ONNX: static (calibrated Q/DQ) or dynamic.",
)
@click.option("--calib", default=None, help="Calibration DATA for static INT8.")
@click.option("--calib-size", default=512, show_default=True, type=int)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
)
@click.option(
    "--int8-budget",
    default=0.5,
    show_default=True,
    type=float,
    help="Max top-1 points INT8 may lose before layers fall back to float.",
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    help="Keep an INT8 model that misses its budget (exit 0, loud warning).",
)
@click.option(
    "--int8-ops",
    type=click.Choice(["safe", "all"]),
    default="safe",
    show_default=True,
    help="safe: only Linear/MatMul inputs; all: every op (the naive setting).",
)
@click.option(
    "--eval-data",
    default=None,
    help="DATA for the INT8 accuracy gate (default: the calibration set's val split).",
)
@click.option("--trt", is_flag=True, help="Build a TensorRT engine on this machine.")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--workspace-mb", default=1024, show_default=True, type=click.IntRange(min=16))
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file, reused across builds.",
)
@click.option(
    "--dla",
    "dla_core",
    type=click.IntRange(min=0),
    default=None,
    help="Jetson DLA core to build for.",
)
@click.option(
    "--sampling",
    type=click.Choice(["gather", "grid"]),
    default="gather",
    show_default=True,
    help="Deformable DETR: bilinear sampling by Gathers, or by GridSample.",
)
@click.option("--pixel-mask", is_flag=True, help="Detectors: add a pixel_mask input for padding.")
def export(
    model,
    out,
    weights,
    num_classes,
    pretrained,
    opset,
    batch,
    dynamic_batch,
    input_size,
    no_simplify,
    fp16,
    int8,
    calib,
    calib_size,
    calib_method,
    int8_budget,
    allow_accuracy_drop,
    int8_ops,
    eval_data,
    trt,
    min_batch,
    opt_batch,
    max_batch,
    workspace_mb,
    timing_cache,
    dla_core,
    sampling,
    pixel_mask,
) -> None:
    """Export MODEL (name, HF dir, model or ONNX artifact) to ONNX and optimised variants.

    The FP32 ONNX is proven against PyTorch; --fp16 / --int8 add variants to the same artifact;
    --trt builds a TensorRT engine here (or writes the trtexec command for the board).
    """
    from tvc.export.flow import ExportRequest, Int8Request, run_export
    from tvc.export.onnx import OnnxExportConfig

    if trt and not (min_batch <= opt_batch <= max_batch):
        raise ConfigError(
            f"batch profile must satisfy min <= opt <= max, got "
            f"{min_batch}/{opt_batch}/{max_batch}",
            "e.g. --min-batch 1 --opt-batch 1 --max-batch 8",
        )
    is_path = Path(model).exists()
    req = ExportRequest(
        onnx=OnnxExportConfig(
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch or (trt and max_batch > 1),
            simplify=not no_simplify,
        ),
        fp16=fp16,
        int8=Int8Request(
            mode=int8,
            calib=calib,
            calib_size=calib_size,
            calib_method=calib_method,
            budget=int8_budget,
            allow_accuracy_drop=allow_accuracy_drop,
            ops=int8_ops,
            eval_data=eval_data,
        )
        if int8
        else None,
        trt={
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
            "workspace_mb": workspace_mb,
            "timing_cache": Path(timing_cache) if timing_cache else None,
            "dla_core": dla_core,
        }
        if trt
        else None,
    )
    model_kwargs = {
        "weights": weights,
        "num_classes": num_classes,
        "pretrained": pretrained,
        "input_size": input_size if not is_path else None,
    }
    from tvc.deps import available

    if available("torch"):  # DETR / Deformable DETR go through tvc/export/detection.py
        from tvc.models.detection import is_detection_spec

        if is_detection_spec(model):
            from tvc.export.detection import DetExportConfig, export_detection_model

            det = DetExportConfig(
                opset=opset,
                batch=batch,
                input_size=input_size,
                pixel_mask=pixel_mask,
                sampling=sampling,
                simplify=not no_simplify,
                int8=int8,
                calib=calib,
                calib_size=calib_size,
                eval_data=eval_data,
            )
            refused = {"--fp16": fp16, "--trt": trt, "--dynamic-batch": dynamic_batch}
            art = export_detection_model(model, Path(out), det, model_kwargs, unsupported=refused)
            _print_export(art)
            return
    art = run_export(model, Path(out), req, model_kwargs)
    if input_size is not None and is_path and art.meta["model"]["input_size"][1] != input_size:
        log.warning(
            "--input-size is ignored for artifacts and directories (fixed at %s)",
            art.meta["model"]["input_size"][1],
        )
    _print_export(art)


def _print_export(art) -> None:
    p = art.meta["metrics"].get("parity", {})
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB in all)")
    if p:
        # Detectors record the per-query class agreement; classifiers top-1 agreement.
        agree = (
            ("class", p["class_agreement"])
            if "class_agreement" in p
            else ("top-1", p["top1_agreement"])
        )
        click.echo(
            f"  model.onnx: parity vs PyTorch max abs diff {p['max_abs_diff']:.2e}, "
            f"{agree[0]} agreement {agree[1]:.0%}, "
            f"{'simplified' if art.meta['metrics'].get('simplified') else 'not simplified'}"
        )
    for fname, v in art.meta.get("variants", {}).items():
        if fname == "model.onnx":
            continue
        size = art.meta["files"].get(fname, {}).get("bytes", 0) / 1e6
        line = f"  {fname}: {v['precision']}, {size:.2f} MB"
        if "accuracy_drop" in v:
            line += f", top-1 drop {v['accuracy_drop']:.2f} points"
        if v.get("float_layers"):
            line += f", {len(v['float_layers'])} layer(s) kept in float"
        click.echo(line)


COMMANDS = [export]
