"""What a compression run did: parameters, MACs, size, widths and output agreement, before/after.

MACs are counted by running the model once under torch.utils.flop_counter.FlopCounterMode (MACs =
FLOPs / 2), which sees the two matmuls of a factorized layer as they really run. On the CPU,
PyTorch's fused scaled_dot_product_attention has no FLOP formula, so timm attention is counted on
its unfused path (same maths, the attention matmuls become visible).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from tvc.errors import UnsupportedModelError


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: the size of the saved weights, give or take headers."""
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


@contextlib.contextmanager
def _unfused_attention(model: nn.Module) -> Iterator[None]:
    """Temporarily turn off timm's fused attention so its matmuls are counted."""
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in fused:
            m.fused_attn = True


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1."""
    return int(_count_flops(model, input_size).get_total_flops() // 2)


def count_macs_lowrank(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """(all MACs, MACs inside factorized layers) of one forward pass at batch 1: a factorized
    layer runs two thin GEMMs, which cost more per MAC, so latency tables count them apart."""
    from tvc.compress.lowrank import LowRankLinear

    counter = _count_flops(model, input_size)
    total = int(counter.get_total_flops() // 2)
    names = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    if not names:
        return total, 0
    counts = counter.get_flop_counts()  # keyed by the root's class name + the module path
    root = type(model).__name__
    return total, int(sum(sum(counts.get(f"{root}.{n}", {}).values()) for n in names) // 2)


def flop_counts(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int]:
    """FLOPs of one forward pass at batch 1 by aten op (`mm`, `bmm`, `convolution`, ...)."""
    counts = _count_flops(model, input_size).get_flop_counts().get("Global", {})
    return {str(op): int(flops) for op, flops in counts.items()}


def _count_flops(model: nn.Module, input_size: tuple[int, int, int]):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_size)
    counter = FlopCounterMode(display=False)
    # The counter's module tracker hooks tensors that require grad; under no_grad some carry no
    # grad_fn (Deformable DETR's query split) and it asserts. Frozen parameters avoid that.
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with _unfused_attention(model), counter, torch.no_grad():
            model.eval()(x)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return counter


def widths(model: nn.Module) -> dict[str, Any] | None:
    """Embedding width and per-block heads, head_dim and MLP width; None for other models."""
    from tvc.compress.vit_layout import vit_layout

    try:
        return vit_layout(model).widths()
    except UnsupportedModelError:
        return None


def summarize(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "params": count_params(model),
        "macs": count_macs(model, input_size),
        "size_bytes": weight_bytes(model),
        "widths": widths(model),
    }


def ratio(after: float, before: float) -> float | None:
    return round(after / before, 4) if before else None


# --------------------------------------------------------------------------------- printing


def _m(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _g(n: int) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.2f} M"


def print_compression_report(report: dict[str, Any], console=None) -> None:
    """The report of `compress_model` as rich tables on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 120)
    before, after = report["before"], report["after"]
    table = Table(title="tvc compress")
    for col in ("", "before", "after", "after / before"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("params", _m(before["params"]), _m(after["params"]),
                  f"{after['params'] / before['params']:.3f}")  # fmt: skip
    table.add_row("MACs", _g(before["macs"]), _g(after["macs"]),
                  f"{after['macs'] / before['macs']:.3f}")  # fmt: skip
    table.add_row("size", f"{before['size_bytes'] / 1e6:.2f} MB",
                  f"{after['size_bytes'] / 1e6:.2f} MB",
                  f"{after['size_bytes'] / before['size_bytes']:.3f}")  # fmt: skip
    console.print(table)

    wb, wa = before.get("widths"), after.get("widths")
    if wb and wa and wb != wa:
        blocks = Table(title=f"widths (embedding {wb['embed']} -> {wa['embed']})")
        for col in ("block", "heads", "head dim", "attn width", "mlp width"):
            blocks.add_column(col, justify="right")
        for i, (b, a) in enumerate(zip(wb["blocks"], wa["blocks"], strict=True)):
            cells = [f"{b[k]} -> {a[k]}" if b[k] != a[k] else str(a[k])
                     for k in ("heads", "head_dim", "attn_width", "mlp")]  # fmt: skip
            blocks.add_row(str(i), *cells)
        console.print(blocks)

    prune = report.get("prune") or {}
    if prune.get("params_ratio") is not None:
        from tvc.compress.target import ratio_line

        target = prune.get("params_target")
        asked = (f" (--prune-params {target['remove']}: target {1 - target['remove']:.2f}x)"
                 if target else "")  # fmt: skip
        console.print(ratio_line(prune["ratio"], prune["params_ratio"], prune.get("macs_ratio"))
                      + asked)  # fmt: skip
    heads = [h for e in prune.get("layers", []) if isinstance(e, dict)
             for h in e.get("heads", {}).values()]  # fmt: skip
    ffn = [e["ffn"] for e in prune.get("layers", []) if isinstance(e, dict) and "ffn" in e]
    if heads or ffn:  # detectors: heads and FFN channels of every encoder/decoder layer
        console.print(
            f"pruned {prune['ratio']:.0%}: attention heads {sum(h[0] for h in heads)} -> "
            f"{sum(h[1] for h in heads)}, FFN channels {sum(f[0] for f in ffn)} -> "
            f"{sum(f[1] for f in ffn)}"
        )

    lowrank = report.get("lowrank")
    if lowrank and all("full_rank" in e for e in lowrank["layers"] if e["factorized"]):
        layers = Table(title=f"low-rank: {lowrank['factorized']} layers factorized, "
                       f"{lowrank.get('skipped', 0)} kept whole")  # fmt: skip
        for col in ("layer", "shape", "rank", "energy", "rel. output error"):
            layers.add_column(col, justify="left" if col == "layer" else "right")
        for e in lowrank["layers"]:
            if e["factorized"]:
                layers.add_row(e["name"], "x".join(map(str, e["shape"])),
                               f"{e['rank']}/{e['full_rank']}", f"{e['energy']:.3f}",
                               f"{e['rel_error']:.2e}")  # fmt: skip
        if lowrank["factorized"]:
            console.print(layers)
        else:
            reasons = sorted({e.get("reason", "") for e in lowrank["layers"]})
            console.print(f"low-rank: no layer factorized ({'; '.join(reasons)})")
    elif lowrank:
        console.print(
            f"low-rank: {lowrank['factorized']} of {len(lowrank['layers'])} layers factorized"
        )

    quality = report.get("quality") or {}
    label = report.get("metric_label", "quality")
    metric = report.get("metric")
    parts = [f"{k} {quality[k][metric]:.2f}" for k in ("source", "compressed", "distilled")
             if metric and k in quality]  # fmt: skip
    if parts:
        last = quality.get("distilled") or quality.get("compressed") or quality["source"]
        agree = last.get("agreement")
        with_teacher = f"; agreement with the teacher {agree:.2f}" if agree is not None else ""
        console.print(f"{label}: {', '.join(parts)} on {last['n']} {last['dataset']} "
                      f"{last['split']} images{with_teacher}")  # fmt: skip
    distill = report.get("distill")
    if distill:
        training = distill.get("training") or distill  # classifiers nest fit()'s result
        parts = [f"{training['epochs']} epoch(s)"] if "epochs" in training else []
        if "steps" in training:
            parts.append(f"{training['steps']} steps")
        seconds = distill.get("wall_s", distill.get("seconds"))
        if isinstance(seconds, (int, float)):
            parts.append(f"{seconds:.0f} s")
        console.print(f"distillation: {', '.join(parts) or 'done'}")

    agree = report.get("agreement")
    if agree:
        versus = "the teacher" if report.get("teacher") not in (None, "source") else "original"
        extra = "".join(f", {label} {agree[k]:.3g}" for k, label in
                        (("rel_error", "relative error"),
                         ("boxes_mean_abs_diff", "boxes mean abs diff")) if k in agree)  # fmt: skip
        console.print(
            f"output vs {versus} on {agree['n']} {agree['inputs']}: agreement "
            f"{agree['agreement']:.1%}, max abs diff {agree['max_abs_diff']:.3g}{extra}"
        )

    target = report.get("latency_target")
    if target:
        from tvc.compress.latency_target import describe_choice

        chosen = target["chosen"]
        met = "met" if target["meets_target"] else "MISSED (more than 10% over)"
        console.print(
            f"latency target {target['target_ms']:g} ms ({target['on']['backend']}, "
            f"{target['on']['threads']} thread(s), table {target['table']}): "
            f"{describe_choice(chosen)}; predicted "
            f"{target['predicted_ms']:.3f} ms, measured {target['measured_ms']:.3f} ms "
            f"(parent {target['parent_measured_ms']:.3f} ms, {target['speedup']:.2f}x): {met}"
        )
        drift = target.get("machine_drift")
        if drift is not None and abs(drift) > 0.10:
            at_table = "met" if target["meets_target_at_table_speed"] else "still missed"
            console.print(
                f"  the parent ran {drift:+.0%} against the table's prediction "
                f"({target['parent_predicted_ms']:.3f} ms): this machine's speed changed; "
                f"at the table's speed the target is {at_table}"
            )
