"""Structured compression of DETR and Deformable DETR: heads, FFN channels, low-rank projections.

- **Pruning** removes, in every encoder and decoder layer, the FFN hidden channels and attention
  heads of least weight magnitude (channel j of an FFN scores |fc1 row j| * |fc2 column j|).
  - Standard attentions (DETR's self and cross attention, Deformable DETR's decoder self
    attention): a head scores its value rows times its output-projection columns, plus its query
    times key rows. transformers computes their shapes from `head_dim`, so fewer heads need no
    other change.
  - Deformable DETR's multi-scale deformable attentions (encoder `self_attn`, decoder
    `encoder_attn`): a head scores its value_proj rows times its output_proj columns. Its
    sampling_offsets and attention_weights rows (laid out heads-major) go with it; they decide
    where a head looks, not how much it contributes (its attention weights are a softmax over
    its own levels x points, summing to 1), so they do not enter the score, and dropping whole
    heads leaves the kept heads' softmax exact. The module reads its per-head width as
    `d_model // n_heads`, so both attributes are set to the pruned widths (and recorded in the
    structure).
- **Low-rank** replaces the attention projections and FFN Linears by two thin Linears from a
  truncated SVD, with the rank rules of tvc.compress.lowrank.
- The result records its shapes (tvc.models.structure) in `info.structure`, so a saved
  artifact rebuilds without pickles. Distil it afterwards (tvc.train.detection) and quantize it
  at export (tvc.export.flow, `--int8`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tvc.compress.surgery import keep_largest, linear_from
from tvc.errors import ConfigError, UnsupportedModelError

log = logging.getLogger("tvc")


@dataclass
class DetPruneConfig:
    ratio: float = 0.3  # share of FFN channels and attention heads removed in every layer
    heads: bool = True
    ffn: bool = True
    round_to: int = 8  # FFN widths stay multiples of this (tensor-core friendly)

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ConfigError(f"--prune must be in (0, 1), got {self.ratio}", "e.g. --prune 0.3")
        if self.round_to < 1:
            raise ConfigError(f"--round-to must be >= 1, got {self.round_to}", "e.g. --round-to 8")
        if not (self.heads or self.ffn):
            raise ConfigError("nothing to prune: heads and FFN are both off", "enable one")


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The encoder and decoder layers of an HFDetector."""
    inner = getattr(model, "inner", None)
    body = getattr(inner, "model", None)
    if body is None or not hasattr(body, "encoder") or not hasattr(body, "decoder"):
        raise UnsupportedModelError(
            "the model is not a DETR-style detector (no inner.model.encoder/decoder)",
            "pass a detector loaded by tvc (detr_* / deformable_detr_* or an HF DETR directory)",
        )
    out = []
    for part in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(body, part).layers):
            out.append((f"inner.model.{part}.layers.{i}", layer))
    return out


def _standard_attentions(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in layer.named_children()
        if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))
    ]


def _prune_ffn(mlp: nn.Module, ratio: float, round_to: int) -> tuple[int, int]:
    fc1, fc2 = mlp.fc1, mlp.fc2
    width = fc1.out_features
    n = max(round_to, round(width * (1 - ratio) / round_to) * round_to)
    if n >= width:
        return width, width
    keep = keep_largest(fc1.weight.norm(dim=1) * fc2.weight.norm(dim=0), n)
    mlp.fc1 = linear_from(fc1.weight[keep], fc1.bias[keep] if fc1.bias is not None else None)
    mlp.fc2 = linear_from(fc2.weight[:, keep], fc2.bias)
    return width, n


def _prune_heads(attn: nn.Module, ratio: float) -> tuple[int, int]:
    hd = attn.head_dim
    heads = attn.q_proj.out_features // hd
    n = max(1, round(heads * (1 - ratio)))
    if n >= heads:
        return heads, heads

    def per_head(w: torch.Tensor) -> torch.Tensor:  # (heads * hd, in) -> (heads,)
        return w.reshape(heads, hd, -1).norm(dim=(1, 2))

    o_cols = attn.o_proj.weight.t()  # (heads * hd, out)
    scores = per_head(attn.v_proj.weight) * per_head(o_cols) + per_head(
        attn.q_proj.weight
    ) * per_head(attn.k_proj.weight)
    kept_heads = keep_largest(scores, n)
    rows = (kept_heads[:, None] * hd + torch.arange(hd)).reshape(-1)
    for name in ("q_proj", "k_proj", "v_proj"):
        lin = getattr(attn, name)
        setattr(
            attn,
            name,
            linear_from(lin.weight[rows], lin.bias[rows] if lin.bias is not None else None),
        )
    attn.o_proj = linear_from(attn.o_proj.weight[:, rows], attn.o_proj.bias)
    return heads, n


def _deformable_attentions(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """transformers' DeformableDetrMultiscaleDeformableAttention children of a layer."""
    attrs = ("sampling_offsets", "attention_weights", "value_proj", "output_proj", "n_heads")
    attrs += ("d_model", "n_levels", "n_points")
    return [(n, m) for n, m in layer.named_children() if all(hasattr(m, a) for a in attrs)]


def deformable_head_scores(attn: nn.Module) -> torch.Tensor:
    """Per-head weight magnitude of a multi-scale deformable attention: (n_heads,).

    |value_proj rows| * |output_proj columns| of each head bounds how much it adds to the output
    (its sampled values are mixed with softmax weights that sum to 1).
    """
    heads = attn.n_heads
    hd = attn.d_model // heads
    v = attn.value_proj.weight.reshape(heads, hd, -1).norm(dim=(1, 2))
    o = attn.output_proj.weight.t().reshape(heads, hd, -1).norm(dim=(1, 2))
    return v * o


def _prune_deformable_heads(attn: nn.Module, ratio: float) -> tuple[int, int]:
    heads = attn.n_heads
    n = max(1, round(heads * (1 - ratio)))
    projections = ("value_proj", "output_proj", "sampling_offsets", "attention_weights")
    if n >= heads or not all(isinstance(getattr(attn, a), nn.Linear) for a in projections):
        return heads, heads  # already factorized projections have no per-head rows to slice
    hd = attn.d_model // heads
    kept = keep_largest(deformable_head_scores(attn), n)

    def rows(per_head: int) -> torch.Tensor:  # heads-major rows of the kept heads
        return (kept[:, None] * per_head + torch.arange(per_head)).reshape(-1)

    # Row layouts, as forward's view()s read them: value (heads, hd); offsets
    # (heads, levels, points, 2); attention weights (heads, levels * points).
    samples = attn.n_levels * attn.n_points
    for name, per_head in (
        ("value_proj", hd),
        ("sampling_offsets", samples * 2),
        ("attention_weights", samples),
    ):
        lin, r = getattr(attn, name), rows(per_head)
        bias = lin.bias[r] if lin.bias is not None else None
        setattr(attn, name, linear_from(lin.weight[r], bias))
    attn.output_proj = linear_from(attn.output_proj.weight[:, rows(hd)], attn.output_proj.bias)
    # forward splits value_proj's output as (n_heads, d_model // n_heads): both shrink together.
    attn.n_heads, attn.d_model = n, n * hd
    return heads, n


@torch.no_grad()
def prune_detector(model: nn.Module, cfg: DetPruneConfig) -> dict[str, Any]:
    """Prune `model` (an HFDetector) in place; return what changed, layer by layer."""
    cfg.validate()
    before = sum(p.numel() for p in model.parameters())
    layers = []
    for name, layer in _layers(model):
        entry: dict[str, Any] = {"layer": name}
        if cfg.ffn and hasattr(layer, "mlp"):
            entry["ffn"] = list(_prune_ffn(layer.mlp, cfg.ratio, cfg.round_to))
        if cfg.heads:
            entry["heads"] = {
                n: list(_prune_heads(a, cfg.ratio)) for n, a in _standard_attentions(layer)
            }
            entry["heads"].update(
                {
                    n: list(_prune_deformable_heads(a, cfg.ratio))
                    for n, a in _deformable_attentions(layer)
                }
            )
        layers.append(entry)
    after = sum(p.numel() for p in model.parameters())
    return {**asdict(cfg), "params_before": before, "params_after": after, "layers": layers}


# ---------------------------------------------------------------------------------- low-rank


def _lowrank_targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "value_proj", "output_proj", "fc1", "fc2")
    out = []
    for prefix, layer in _layers(model):
        for n, m in layer.named_modules():
            if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names:
                out.append((f"{prefix}.{n}", m))
    return out


@torch.no_grad()
def factorize_detector(model: nn.Module, cfg) -> dict[str, Any]:
    """Replace attention projections and FFN Linears by low-rank pairs where that saves MACs.

    `cfg` is a tvc.compress.lowrank.LowRankConfig (energy, rank or rank_ratio; round_to).
    """
    from tvc.compress.lowrank import choose_rank, svd_factors

    report = []
    for name, layer in _lowrank_targets(model):
        out_f, in_f = layer.out_features, layer.in_features
        s = torch.linalg.svdvals(layer.weight.double())
        rank, energy = choose_rank(s, out_f, in_f, cfg)
        entry = {"name": name, "shape": [out_f, in_f], "rank": rank, "energy": round(energy, 6)}
        if rank * (out_f + in_f) >= out_f * in_f:
            report.append({**entry, "factorized": False})
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, svd_factors(layer, rank))
        report.append({**entry, "factorized": True})
    return {**cfg.as_dict(), "factorized": sum(e["factorized"] for e in report), "layers": report}


# ----------------------------------------------------------------------------------- combined


def compress_detector(loaded, *, prune: DetPruneConfig | None = None, lowrank=None):
    """A compressed copy of `loaded` (LoadedModel), its shapes recorded in info.structure.

    Returns (new LoadedModel, report). The original is left untouched, e.g. as the teacher.
    """
    from tvc.models.detection import det_build, is_detector
    from tvc.models.load import LoadedModel, ModelInfo
    from tvc.models.structure import describe_structure

    if not is_detector(loaded):
        raise UnsupportedModelError(
            f"{loaded.info.name} is not a detection model", "use tvc compress for classifiers"
        )
    if prune is None and lowrank is None:
        raise ConfigError(
            "nothing to do: no pruning and no low-rank asked for",
            "pass a prune ratio or a low-rank setting",
        )
    model = copy.deepcopy(loaded.model).eval()
    report: dict[str, Any] = {"params_before": sum(p.numel() for p in model.parameters())}
    if prune is not None:
        report["prune"] = prune_detector(model, prune)
    if lowrank is not None:
        report["lowrank"] = factorize_detector(model, lowrank)
    report["params_after"] = sum(p.numel() for p in model.parameters())
    info = ModelInfo.from_json(loaded.info.to_json())
    # Shapes are recorded against a fresh build, so they also cover earlier compression.
    info.structure = describe_structure(model, det_build(info.kwargs))
    info.name = f"{loaded.info.name}-compressed"
    log.info(
        "compressed %s: %d -> %d parameters",
        loaded.info.name,
        report["params_before"],
        report["params_after"],
    )
    return LoadedModel(model, info, loaded.artifact), report
