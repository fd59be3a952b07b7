"""Low-rank factorization: replace a Linear (out x in) by two thin Linears from a truncated SVD.

W ~= U_r S_r V_r^T, stored as `first` = sqrt(S_r) V_r^T (in -> r, no bias) and `second` =
U_r sqrt(S_r) (r -> out, with the original bias): the square roots split the scale evenly, which
keeps both factors in a similar range (kinder to FP16 and INT8 later).

Per layer the rank comes from the retained spectral energy (sum of the kept s_i^2 over the total),
a fixed rank, or a fraction of the full rank; it is rounded up to a multiple of `round_to`, and
the layer is replaced only where that lowers its MACs: r * (in + out) < in * out. The targets are
the attention (qkv / q,k,v, proj / o_proj) and MLP (fc1, fc2) Linears of a supported ViT; the
patch embedding and the classifier stay whole. Each layer's rank, energy and its relative output
error on sample inputs are reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from tvc.compress.prune import _known_keys
from tvc.compress.vit_layout import vit_layout
from tvc.errors import ConfigError
from tvc.models.structure import LowRankLinear

TARGETS = ("attn", "mlp")


@dataclass
class LowRankConfig:
    """Exactly one of `energy`, `rank`, `rank_ratio` chooses each layer's rank."""

    energy: float | None = None  # keep this share of spectral energy, in (0, 1]
    rank: int | None = None  # a fixed rank (capped at the layer's full rank)
    rank_ratio: float | None = None  # a fraction of each layer's full rank, in (0, 1]
    round_to: int = 8  # ranks are rounded up to a multiple of this
    targets: tuple[str, ...] = TARGETS  # "attn", "mlp"
    require_saving: bool = True  # factorize only where it lowers MACs
    sample_rows: int = 512  # token rows per layer used to measure the output error

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        chosen = [n for n in ("energy", "rank", "rank_ratio") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ConfigError(
                "low-rank needs exactly one of energy, rank or rank_ratio"
                + (f" (got {', '.join(chosen)})" if chosen else ""),
                "pass --lowrank ENERGY (e.g. 0.9) or --lowrank-rank R (e.g. 64, or 0.25 of full)",
            )
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConfigError(
                f"low-rank energy must be in (0, 1], got {self.energy}",
                "e.g. --lowrank 0.9 keeps 90% of each layer's spectral energy",
            )
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank < 1):
            raise ConfigError(f"low-rank rank must be an integer >= 1, got {self.rank}",
                              "e.g. --lowrank-rank 64")  # fmt: skip
        if self.rank_ratio is not None and not 0.0 < self.rank_ratio <= 1.0:
            raise ConfigError(
                f"low-rank rank ratio must be in (0, 1], got {self.rank_ratio}",
                "e.g. --lowrank-rank 0.25 keeps a quarter of each layer's full rank",
            )
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1, got {self.round_to}",
                              "use 8 (GPUs/NPUs) or 1 (no rounding)")  # fmt: skip
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"unknown low-rank target(s) {bad or '(none)'}",
                              f"use some of: {', '.join(TARGETS)}")  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LowRankConfig:
        """Build from a mapping (a recipe); unknown keys are an error, not ignored."""
        return cls(**_known_keys(cls, d, "low-rank"))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


def choose_rank(s: torch.Tensor, out_features: int, in_features: int, cfg: LowRankConfig):
    """(rank, energy kept) for singular values `s` (descending) under `cfg`."""
    full = len(s)
    power = s.double() ** 2
    cumulative = torch.cumsum(power, 0) / power.sum().clamp_min(1e-300)
    if cfg.energy is not None:
        # The smallest rank whose energy reaches the target (tolerating float round-off).
        rank = int((cumulative < cfg.energy - 1e-9).sum()) + 1
    elif cfg.rank is not None:
        rank = cfg.rank
    else:
        rank = math.ceil(cfg.rank_ratio * full)
    rank = min(full, math.ceil(rank / cfg.round_to) * cfg.round_to)
    return rank, float(cumulative[rank - 1])


def svd_factors(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The rank-`rank` LowRankLinear closest to `linear` (truncated SVD, balanced factors)."""
    w = linear.weight.detach()
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    lr = LowRankLinear(linear.in_features, rank, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        lr.first.weight.copy_((root[:, None] * vh[:rank]).to(w.dtype))
        lr.second.weight.copy_((u[:, :rank] * root[None, :]).to(w.dtype))
        if linear.bias is not None:
            lr.second.bias.copy_(linear.bias.detach())
    return lr.to(w.device)


def target_linears(model: nn.Module, targets: tuple[str, ...] = TARGETS):
    """(name, module) of the Linears of a supported ViT that low-rank may replace."""
    layout = vit_layout(model)
    found = []
    for a, m in zip(layout.attn, layout.mlp, strict=True):
        if "attn" in targets:
            found += a.linears()
        if "mlp" in targets:
            found += m.linears()
    return found


def _capture_inputs(model: nn.Module, layers, sample_inputs: torch.Tensor, rows: int):
    """Each layer's input rows during one forward pass (a seeded subset of `rows` tokens)."""
    captured: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)

    def hook(name):
        def fn(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            if x.shape[0] > rows:
                x = x[torch.randperm(x.shape[0], generator=gen)[:rows]]
            captured[name] = x.clone()

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    try:
        with torch.no_grad():
            model(sample_inputs)
    finally:
        for h in handles:
            h.remove()
    return captured


def factorize(
    model: nn.Module, cfg: LowRankConfig, *, sample_inputs: torch.Tensor
) -> dict[str, Any]:
    """Replace the target Linears of `model` in place; return the per-layer report."""
    t0 = time.perf_counter()
    model.eval()
    layers = target_linears(model, cfg.targets)
    inputs = _capture_inputs(model, layers, sample_inputs, cfg.sample_rows)
    report = []
    for name, layer in layers:
        entry: dict[str, Any] = {"name": name, "shape": None, "factorized": False}
        if isinstance(layer, LowRankLinear):
            entry.update(shape=[layer.out_features, layer.in_features], rank=layer.rank,
                         reason="already low-rank")  # fmt: skip
            report.append(entry)
            continue
        out_f, in_f = layer.out_features, layer.in_features
        s = torch.linalg.svdvals(layer.weight.detach().double())
        rank, energy = choose_rank(s, out_f, in_f, cfg)
        entry.update(shape=[out_f, in_f], full_rank=len(s), rank=rank, energy=round(energy, 6),
                     macs_per_token=out_f * in_f)  # fmt: skip
        if cfg.require_saving and rank * (out_f + in_f) >= out_f * in_f:
            entry["reason"] = (
                f"rank {rank} does not lower MACs (needs < {_break_even(out_f, in_f)})"
            )
            report.append(entry)
            continue
        new = svd_factors(layer, rank)
        x = inputs[name]
        with torch.no_grad():
            ref = layer(x)
            err = float((new(x) - ref).norm() / ref.norm().clamp_min(1e-12))
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, new)
        entry.update(factorized=True, rel_error=err, macs_per_token=rank * (out_f + in_f))
        report.append(entry)
    done = [e for e in report if e["factorized"]]
    return {
        **cfg.as_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
        "factorized": len(done),
        "skipped": len(report) - len(done),
        "layers": report,
    }


def _break_even(out_f: int, in_f: int) -> int:
    """The smallest rank at which factorizing no longer saves MACs."""
    return math.ceil(out_f * in_f / (out_f + in_f))
