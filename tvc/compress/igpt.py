"""Structured pruning and low-rank factorization of Image GPT (tvc.models.igpt): whole attention
heads and MLP channels of every block by weight magnitude, and the shapes recorded so the
compressed model rebuilds from a fresh build (tvc.models.structure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvc.compress.surgery import linear_from
from tvc.errors import ConfigError

if TYPE_CHECKING:
    from tvc.models.info import LoadedModel


def _prune_heads(attn, ratio: float) -> tuple[int, int]:
    """Keep the heads with the largest (query . key + value . output) weight norms."""
    import torch
    from torch import nn

    if not isinstance(attn.qkv, nn.Linear) or not isinstance(attn.proj, nn.Linear):
        raise ConfigError(
            "cannot prune heads of a factorized iGPT", "prune before low-rank factorization"
        )
    heads, hd = attn.num_heads, attn.head_dim
    n = max(1, round(heads * (1 - ratio)))
    if n >= heads:
        return heads, heads
    w = attn.qkv.weight.reshape(3, heads, hd, -1)
    q, k, v = (w[i].flatten(1).norm(dim=1) for i in range(3))
    o = attn.proj.weight.reshape(-1, heads, hd).permute(1, 0, 2).flatten(1).norm(dim=1)
    scores = q * k + v * o
    kept = torch.sort(torch.topk(scores, n).indices).values
    per_head = (kept[:, None] * hd + torch.arange(hd)).reshape(-1)
    rows = torch.cat([part * heads * hd + per_head for part in range(3)])
    with torch.no_grad():
        attn.qkv = linear_from(attn.qkv.weight[rows], attn.qkv.bias[rows])
        attn.proj = linear_from(attn.proj.weight[:, per_head], attn.proj.bias)
    attn.num_heads = n
    return heads, n


def _prune_mlp(mlp, ratio: float, round_to: int) -> tuple[int, int]:
    import torch
    from torch import nn

    if not isinstance(mlp.fc1, nn.Linear) or not isinstance(mlp.fc2, nn.Linear):
        raise ConfigError(
            "cannot prune the MLP of a factorized iGPT", "prune before low-rank factorization"
        )
    width = mlp.fc1.out_features
    n = max(round_to, round(width * (1 - ratio) / round_to) * round_to)
    if n >= width:
        return width, width
    scores = mlp.fc1.weight.norm(dim=1) * mlp.fc2.weight.norm(dim=0)
    keep = torch.sort(torch.topk(scores, n).indices).values
    with torch.no_grad():
        mlp.fc1 = linear_from(mlp.fc1.weight[keep], mlp.fc1.bias[keep])
        mlp.fc2 = linear_from(mlp.fc2.weight[:, keep], mlp.fc2.bias)
    return width, n


def prune_igpt(
    model, ratio: float, *, heads: bool = True, mlp: bool = True, round_to: int = 8
) -> dict[str, Any]:
    """Remove `ratio` of the attention heads and MLP channels of every block, in place (lowest
    weight-magnitude scores first). Embeddings, norms and heads keep their width (the residual
    stream is untouched, so the KV cache keeps its head_dim). Returns what was removed."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--prune must be in (0, 1), got {ratio}", "e.g. --prune 0.5")
    if not (heads or mlp):
        raise ConfigError("nothing to prune: heads and MLP are both off", "enable one")
    if not hasattr(model, "blocks") or not hasattr(model, "step"):
        raise ConfigError("the model is not an Image GPT", "pass an igpt_* model or artifact")
    before = int(sum(p.numel() for p in model.parameters()))
    blocks = []
    for b in model.blocks:
        entry: dict[str, Any] = {}
        if heads:
            entry["heads"] = list(_prune_heads(b.attn, ratio))
        if mlp:
            entry["mlp"] = list(_prune_mlp(b.mlp, ratio, round_to))
        blocks.append(entry)
    after = int(sum(p.numel() for p in model.parameters()))
    return {
        "ratio": ratio,
        "heads": heads,
        "mlp": mlp,
        "round_to": round_to,
        "params_before": before,
        "params_after": after,
        "blocks": blocks,
    }


def factorize_igpt(model, cfg) -> dict[str, Any]:
    """Replace qkv, proj, fc1, fc2 of every block by low-rank pairs (truncated SVD) where that
    lowers MACs; `cfg` is a tvc.compress.lowrank.LowRankConfig."""
    import torch
    from torch import nn

    from tvc.compress.lowrank import choose_rank, svd_factors

    report = []
    targets = {"attn": ("qkv", "proj"), "mlp": ("fc1", "fc2")}
    for i, b in enumerate(model.blocks):
        for part, leaves in targets.items():
            if part not in cfg.targets:
                continue
            owner = getattr(b, part)
            for leaf in leaves:
                m = getattr(owner, leaf)
                if not isinstance(m, nn.Linear):
                    continue
                out_f, in_f = m.out_features, m.in_features
                with torch.no_grad():
                    s = torch.linalg.svdvals(m.weight.double())
                rank, energy = choose_rank(s, out_f, in_f, cfg)
                entry = {
                    "name": f"blocks.{i}.{part}.{leaf}",
                    "shape": [out_f, in_f],
                    "rank": rank,
                    "energy": round(energy, 6),
                }
                if cfg.require_saving and rank * (out_f + in_f) >= out_f * in_f:
                    report.append({**entry, "factorized": False})
                    continue
                with torch.no_grad():
                    setattr(owner, leaf, svd_factors(m, rank))
                report.append({**entry, "factorized": True})
    return {**cfg.as_dict(), "factorized": sum(e["factorized"] for e in report), "layers": report}


def record_structure(loaded: LoadedModel) -> None:
    """Write the compressed shapes of `loaded.model` into its info (rebuilt from a fresh build
    of info.kwargs plus this structure)."""
    from tvc.models.igpt import igpt_build
    from tvc.models.structure import describe_structure

    loaded.info.structure = describe_structure(loaded.model, igpt_build(loaded.info.kwargs))


# ---------------------------------------------------------------------------------- generate
