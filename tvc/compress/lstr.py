"""Structured pruning and low-rank factorization of the lane-shape transformer (tvc.models.lstr):
attention heads and FFN channels of every encoder / decoder layer by weight magnitude, and the
shapes recorded so the compressed model rebuilds from a fresh build (tvc.models.structure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tvc.compress.surgery import linear_from
from tvc.errors import ConfigError

if TYPE_CHECKING:
    from tvc.models.info import LoadedModel


def _prune_heads(attn, ratio: float) -> tuple[int, int]:
    """Keep the heads of `attn` (tvc.models.lstr.Attention) with the largest value x output and
    query x key weight norms."""
    import torch

    hd = attn.head_dim
    heads = attn.q_proj.out_features // hd
    n = max(1, round(heads * (1 - ratio)))
    if n >= heads:
        return heads, heads

    def per_head(w):  # (heads * hd, in) -> (heads,)
        return w.reshape(heads, hd, -1).norm(dim=(1, 2))

    scores = per_head(attn.v_proj.weight) * per_head(attn.o_proj.weight.t()) + per_head(
        attn.q_proj.weight
    ) * per_head(attn.k_proj.weight)
    kept = torch.sort(torch.topk(scores, n).indices).values
    rows = (kept[:, None] * hd + torch.arange(hd)).reshape(-1)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(attn, name)
            setattr(attn, name, linear_from(lin.weight[rows], lin.bias[rows]))
        attn.o_proj = linear_from(attn.o_proj.weight[:, rows], attn.o_proj.bias)
    return heads, n


def _prune_ffn(ffn, ratio: float, round_to: int) -> tuple[int, int]:
    import torch

    width = ffn.fc1.out_features
    n = max(round_to, round(width * (1 - ratio) / round_to) * round_to)
    if n >= width:
        return width, width
    scores = ffn.fc1.weight.norm(dim=1) * ffn.fc2.weight.norm(dim=0)
    keep = torch.sort(torch.topk(scores, n).indices).values
    with torch.no_grad():
        ffn.fc1 = linear_from(ffn.fc1.weight[keep], ffn.fc1.bias[keep])
        ffn.fc2 = linear_from(ffn.fc2.weight[:, keep], ffn.fc2.bias)
    return width, n


def prune_lstr(model, ratio: float, *, heads: bool = True, ffn: bool = True,
               round_to: int = 8) -> dict[str, Any]:  # fmt: skip
    """Remove `ratio` of the attention heads and FFN channels of every encoder and decoder
    layer of an LSTR, in place (lowest weight-magnitude scores first). The backbone and the
    heads stay whole. Returns what was removed per layer."""
    from tvc.compress.report import count_params

    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"--prune must be in (0, 1), got {ratio}", "e.g. --prune 0.5")
    if not (heads or ffn):
        raise ConfigError("nothing to prune: heads and FFN are both off", "enable one")
    if not hasattr(model, "encoder") or not hasattr(model, "decoder"):
        raise ConfigError("the model is not an LSTR (no encoder/decoder)",
                          "pass an lstr_* model or an LSTR artifact")  # fmt: skip
    before = count_params(model)
    layers: dict[str, Any] = {}
    for part in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, part)):
            entry: dict[str, Any] = {}
            if heads:
                for attn_name in ("self_attn", "cross_attn"):
                    attn = getattr(layer, attn_name, None)
                    if attn is not None:
                        entry[attn_name] = list(_prune_heads(attn, ratio))
            if ffn:
                entry["ffn"] = list(_prune_ffn(layer.ffn, ratio, round_to))
            layers[f"{part}.{i}"] = entry
    return {"ratio": ratio, "heads": heads, "ffn": ffn, "round_to": round_to,
            "params_before": before, "params_after": count_params(model),
            "layers": layers}  # fmt: skip


def factorize_lstr(model, cfg) -> dict[str, Any]:
    """Replace the attention projections and FFN Linears of every encoder and decoder layer by
    low-rank pairs (truncated SVD) where that lowers MACs; `cfg` is a LowRankConfig."""
    import torch
    from torch import nn

    from tvc.compress.lowrank import choose_rank, svd_factors

    names = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
    report = []
    for part in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, part)):
            for n, m in list(layer.named_modules()):
                if not (isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names):
                    continue
                name = f"{part}.{i}.{n}"
                out_f, in_f = m.out_features, m.in_features
                with torch.no_grad():
                    s = torch.linalg.svdvals(m.weight.double())
                rank, energy = choose_rank(s, out_f, in_f, cfg)
                entry = {"name": name, "shape": [out_f, in_f], "rank": rank,
                         "energy": round(energy, 6)}  # fmt: skip
                if rank * (out_f + in_f) >= out_f * in_f:
                    report.append({**entry, "factorized": False})
                    continue
                parent, _, leaf = name.rpartition(".")
                with torch.no_grad():
                    setattr(model.get_submodule(parent), leaf, svd_factors(m, rank))
                report.append({**entry, "factorized": True})
    return {**cfg.as_dict(), "factorized": sum(e["factorized"] for e in report),
            "layers": report}  # fmt: skip


def record_structure(loaded: LoadedModel) -> None:
    """Write the compressed shapes of `loaded.model` into its info (rebuilt from a fresh
    build of info.kwargs plus this structure)."""
    from tvc.models.lstr import lstr_build
    from tvc.models.structure import describe_structure

    loaded.info.structure = describe_structure(loaded.model, lstr_build(loaded.info.kwargs))


# ---------------------------------------------------------------------------------- export
