"""Save and rebuild the shapes of a compressed model without pickling modules.

A pruned or factorized model differs from a freshly built one only in the shapes of some modules
and parameters and in a few width attributes (num_heads, head_dim, the attention scale, the
embedding width). `describe_structure` records exactly those differences as JSON;
`apply_structure` replays them (and token merging, tvc.models.merge) on a fresh model, after
which the saved safetensors weights load with strict=True. Loading never runs code from a file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tvc.errors import ArtifactError
from tvc.models.merge import apply_merging, merging_spec

# Integer attributes that models derive from their widths; kept in step with pruning.
# timm Attention: num_heads, head_dim, attn_dim; timm VisionTransformer: embed_dim,
# num_features, head_hidden_size; HF ViTAttention: num_attention_heads, head_dim; HF
# DeformableDetrMultiscaleDeformableAttention: n_heads, d_model (its per-head width is
# d_model // n_heads). Only values that differ from a fresh build are recorded, so an attribute
# that pruning leaves alone (e.g. d_model elsewhere) never enters a structure.
ATTENTION_ATTRS = (
    "num_heads",
    "head_dim",
    "attn_dim",
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "embed_dim",
    "num_features",
    "head_hidden_size",
    "n_heads",
    "d_model",
)
# Float attributes: the attention scale (timm `scale`, HF `scaling`), which pruning head
# dimensions may change.
FLOAT_ATTRS = ("scale", "scaling")


class LowRankLinear(nn.Module):
    """y = B(A x): a Linear of rank r as two thin Linears (in -> r without bias, r -> out)."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.rank} -> {self.out_features}"


def module_spec(m: nn.Module) -> dict[str, Any] | None:
    """The constructor arguments that fix `m`'s shape, for the module types we can rebuild."""
    if isinstance(m, LowRankLinear):
        return {
            "type": "LowRankLinear",
            "in_features": m.in_features,
            "rank": m.rank,
            "out_features": m.out_features,
            "bias": m.second.bias is not None,
        }
    if isinstance(m, nn.Linear):
        return {
            "type": "Linear",
            "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None,
        }
    if isinstance(m, nn.LayerNorm):
        return {
            "type": "LayerNorm",
            "normalized_shape": list(m.normalized_shape),
            "eps": m.eps,
            "elementwise_affine": m.elementwise_affine,
            "bias": m.bias is not None,
        }
    if isinstance(m, nn.Conv2d):
        return {
            "type": "Conv2d",
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
            "groups": m.groups,
            "bias": m.bias is not None,
        }
    return None


def build_module(spec: dict[str, Any]) -> nn.Module:
    kind = spec["type"]
    args = {k: v for k, v in spec.items() if k != "type"}
    if kind == "LowRankLinear":
        return LowRankLinear(**args)
    if kind == "Linear":
        return nn.Linear(**args)
    if kind == "LayerNorm":
        return nn.LayerNorm(**args)
    if kind == "Conv2d":
        return nn.Conv2d(**args)
    raise ArtifactError(
        f"structure names an unknown module type '{kind}'",
        "the artifact was written by a newer tvc; upgrade tvc",
    )


def describe_structure(model: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """What differs between `model` and a freshly built `reference` of the same architecture."""
    ref_modules = dict(reference.named_modules())
    modules: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    typed_attrs = [(a, int) for a in ATTENTION_ATTRS] + [(a, float) for a in FLOAT_ATTRS]
    for name, m in model.named_modules():
        # The two Linears inside a LowRankLinear are rebuilt by their parent.
        if any(
            name.startswith(f"{p}.") for p, s in modules.items() if s["type"] == "LowRankLinear"
        ):
            continue
        spec = module_spec(m)
        ref = ref_modules.get(name)
        if spec is not None and (ref is None or module_spec(ref) != spec):
            modules[name] = spec
        if ref is None:
            continue
        for attr, kind in typed_attrs:
            value = getattr(m, attr, None)
            usable = isinstance(value, kind) and not isinstance(value, bool)
            if usable and getattr(ref, attr, None) != value:
                attrs.setdefault(name, {})[attr] = value
    ref_params = dict(reference.named_parameters(recurse=True))
    params = {}
    for name, p in model.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in modules:
            continue
        if name in ref_params and ref_params[name].shape != p.shape:
            params[name] = list(p.shape)
    out: dict[str, Any] = {"modules": modules, "params": params, "attrs": attrs}
    merge = merging_spec(model)
    if merge is not None:  # token merging (tvc.models.merge): recorded only when present
        out["merge"] = merge
    return out


def _parent_and_leaf(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, leaf


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built model in place to the recorded structure (weights uninitialised)."""
    try:
        for name, spec in structure.get("modules", {}).items():
            parent, leaf = _parent_and_leaf(model, name)
            setattr(parent, leaf, build_module(spec))
        for name, shape in structure.get("params", {}).items():
            parent, leaf = _parent_and_leaf(model, name)
            old = getattr(parent, leaf)
            setattr(parent, leaf, nn.Parameter(torch.empty(shape, dtype=old.dtype)))
        for name, values in structure.get("attrs", {}).items():
            m = model.get_submodule(name) if name else model
            for attr, value in values.items():
                setattr(m, attr, value)
        if structure.get("merge"):
            apply_merging(model, structure["merge"])
    except AttributeError as exc:
        raise ArtifactError(
            f"the recorded structure does not fit this architecture ({exc})",
            "the artifact's model section and its structure disagree; re-run 'tvc compress'",
        ) from exc
    return model
