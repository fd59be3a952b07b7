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
    """What the export wrote and every quality figure it recorded: parity, the task's metric
    (--eval-data), and each variant's parity with FP32, its metric before/after and drop."""
    from tvc.tasks import task_named

    metrics = art.meta["metrics"]
    task = task_named(art.meta.get("task") or "classification")
    p = metrics.get("parity", {})
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
            f"{'simplified' if metrics.get('simplified') else 'not simplified'}"
        )
    quality = metrics.get(task.quality_key)
    if isinstance(quality, dict) and task.metric in quality:
        click.echo(
            f"  model.onnx: {task.describe(quality)} "
            f"({quality.get('dataset')} {quality.get('split')} split)"
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
        for extra in _variant_lines(task, v):
            click.echo(f"    {extra}")


def _variant_lines(task, v: dict) -> list[str]:
    """A variant's recorded quality figures, one line each."""
    lines = []
    acc = v.get("accuracy")
    if isinstance(acc, dict) and "fp32" in acc:
        data = v.get("eval_data") or {}
        before = (
            f" (before float fallback {acc['int8_before']:.2f})"
            if acc.get("int8_before") not in (None, acc.get("int8"))
            else ""
        )
        lines.append(
            f"{v.get('metric', 'quality')}: FP32 {acc['fp32']:.2f} -> {acc['int8']:.2f}{before} "
            f"on {data.get('n')} {data.get('name')} {data.get('split')} images, budget "
            f"{v.get('budget', 0):g} points{'' if v.get('budget_met', True) else ' MISSED'}"
        )
    fused = v.get("fused_ops")
    if isinstance(fused, dict):  # model.ort.onnx: what ONNX Runtime's optimizer fused
        words = ", ".join(f"{k} {n}" for k, n in fused.items()) or "nothing"
        att = "" if v.get("attention_fused") else " (attention not matched: kept as MatMuls)"
        lines.append(f"fused: {words}{att}")
    parity = v.get("parity_vs_fp32")
    if isinstance(parity, dict):
        where = f" on {parity['inputs']}" if parity.get("inputs") else ""
        line = f"parity vs FP32{where}: {task.parity_words(parity)}"
        if parity.get("within_tolerance") is False:
            line += " -- OUTSIDE TOLERANCE"
        lines.append(line)
    elif isinstance(v.get("parity"), dict):  # FP16's own check on its sample inputs
        lines.append(f"parity vs FP32: max abs diff {v['parity']['max_abs_diff']:.2e}")
    return lines


COMMANDS = [export]
