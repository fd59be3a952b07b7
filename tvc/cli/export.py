"""`tvc export`: the export stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.stages.export import Config


@click.command()
@options_from(Config)
@click.pass_context
def export(ctx: click.Context, **options) -> None:
    """Export MODEL (name, HF dir, model or ONNX artifact) to ONNX and optimised variants.

    The FP32 ONNX is proven against PyTorch; --fp16 / --int8 add variants to the same artifact;
    --trt builds a TensorRT engine here (or writes the trtexec command for the board).
    """
    from tvc.stages import get_stage

    _print_export(get_stage("export").run(config_from(Config, ctx, options)))


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
        if "drop" in v:  # the gate's drop, in the task's metric (top-1 %, mAP, ...)
            line += f", {v.get('metric', 'quality')} drop {v['drop']:.2f} points"
        if v.get("float_layers"):
            line += f", {len(v['float_layers'])} layer(s) kept in float"
        speedup = (v.get("latency_ms") or {}).get("speedup")
        if speedup is not None:
            slower = " (SLOWER than FP32)" if speedup < 1.0 else ""
            line += f", {speedup:.2f}x FP32 speed{slower} (indicative, 1 thread)"
        click.echo(line)


COMMANDS = [export]
