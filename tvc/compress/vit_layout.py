"""The layout of a vision transformer that structured pruning and low-rank need to know.

`vit_layout(model)` names, per block, the attention (q, k, v and output projections, heads, head
dimension) and the MLP (its two Linears), plus the residual width and the classifier, for timm
VisionTransformer (ViT, DeiT, DeiT distilled) and Hugging Face ViTForImageClassification
(wrapped by tvc.models.hf.HFClassifier). Anything else is refused with the names of the layers
that are not understood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tvc.errors import UnsupportedModelError
from tvc.models.structure import LowRankLinear


@dataclass
class AttnUnit:
    """One attention module and the Linear whose channels index its pruning group."""

    name: str
    module: nn.Module
    root: nn.Linear
    root_dim: str  # "in" or "out": which channels of `root` the group is indexed by
    style: str  # "timm" (fused qkv, scale attribute) or "hf" (q/k/v projections, scaling)

    @property
    def heads(self) -> int:
        return int(
            self.module.num_heads if self.style == "timm" else self.module.num_attention_heads
        )

    @property
    def head_dim(self) -> int:
        return int(self.module.head_dim)

    def linears(self) -> list[tuple[str, nn.Module]]:
        names = (
            ("qkv", "proj") if self.style == "timm" else ("q_proj", "k_proj", "v_proj", "o_proj")
        )
        return [(f"{self.name}.{n}", getattr(self.module, n)) for n in names]


@dataclass
class MlpUnit:
    name: str
    fc1: nn.Module
    fc2: nn.Module

    @property
    def root(self) -> nn.Linear:
        return out_linear(self.fc1)

    @property
    def hidden(self) -> int:
        return int(self.fc1.out_features)

    def linears(self) -> list[tuple[str, nn.Module]]:
        return [(f"{self.name}.fc1", self.fc1), (f"{self.name}.fc2", self.fc2)]


@dataclass
class VitLayout:
    """Where the prunable widths of a supported ViT live."""

    family: str  # "timm" or "hf"
    model: nn.Module
    embed: nn.Conv2d  # patch projection: its output channels are the embedding width
    attn: list[AttnUnit]
    mlp: list[MlpUnit]
    classifiers: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def embed_dim(self) -> int:
        return int(self.embed.out_channels)

    def widths(self) -> dict[str, Any]:
        """Embedding width and per-block heads / head_dim / MLP hidden width."""
        return {
            "embed": self.embed_dim,
            "blocks": [
                {
                    "heads": a.heads,
                    "head_dim": a.head_dim,
                    "attn_width": a.heads * a.head_dim,
                    "mlp": m.hidden,
                }
                for a, m in zip(self.attn, self.mlp, strict=True)
            ],
        }


def out_linear(m: nn.Module) -> nn.Linear:
    """The Linear that produces `m`'s outputs (the second half of a factorized layer)."""
    return m.second if isinstance(m, LowRankLinear) else m


def in_linear(m: nn.Module) -> nn.Linear:
    """The Linear that consumes `m`'s inputs (the first half of a factorized layer)."""
    return m.first if isinstance(m, LowRankLinear) else m


_GENERIC_OK = {
    "Linear", "LowRankLinear", "Conv2d", "LayerNorm", "Identity", "Dropout", "DropPath",
    "GELU", "GELUTanh", "QuickGELU", "SiLU", "ReLU", "Tanh", "Sequential", "ModuleList",
}  # fmt: skip
_TIMM_OK = {
    "VisionTransformer", "VisionTransformerDistilled", "PatchEmbed", "Block", "Attention", "Mlp",
    "LayerScale", "PatchDropout", "MergingBlocks",  # token merging's loop (tvc.models.merge)
}  # fmt: skip
_HF_OK = {
    "HFClassifier", "ViTForImageClassification", "ViTModel", "ViTEmbeddings",
    "ViTPatchEmbeddings", "ViTLayer", "ViTAttention", "ViTMLP", "GELUActivation",
}  # fmt: skip


def vit_layout(model: nn.Module) -> VitLayout:
    """The layout of a supported ViT; UnsupportedModelError names what is not understood."""
    kind = type(model).__name__
    if kind in ("VisionTransformer", "VisionTransformerDistilled"):
        layout = _timm_layout(model)
        allowed = _GENERIC_OK | _TIMM_OK
    elif kind == "HFClassifier" and type(model.inner).__name__ == "ViTForImageClassification":
        layout = _hf_layout(model)
        allowed = _GENERIC_OK | _HF_OK
    else:
        inner = getattr(model, "inner", None)
        what = f"{kind} ({type(inner).__name__})" if inner is not None else kind
        raise UnsupportedModelError(
            f"cannot prune or factorize {what}: tvc understands timm VisionTransformer (ViT, "
            "DeiT) and Hugging Face ViTForImageClassification",
            "use one of those architectures",
        )
    unknown = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
               if type(m).__name__ not in allowed]  # fmt: skip
    if layout.family == "timm":
        for a in layout.attn:
            extras = {"q_norm": a.module.q_norm, "k_norm": a.module.k_norm,
                      "norm": getattr(a.module, "norm", None)}  # fmt: skip
            for leaf, sub in extras.items():
                if sub is not None and not isinstance(sub, nn.Identity):
                    unknown.append(f"{a.name}.{leaf} (qk/scale norm over head dims)")
            if getattr(a.module, "gate", None) is not None:
                unknown.append(f"{a.name}.gate (gated attention)")
    if unknown:
        shown = ", ".join(unknown[:6]) + (
            f" and {len(unknown) - 6} more" if len(unknown) > 6 else ""
        )
        raise UnsupportedModelError(
            f"cannot prune or factorize {kind}: it has {len(unknown)} layer(s) tvc does not "
            f"understand: {shown}",
            "use a plain ViT/DeiT (timm) or ViTForImageClassification (Hugging Face)",
        )
    return layout


def _timm_layout(model: nn.Module) -> VitLayout:
    attn, mlp = [], []
    for i, block in enumerate(model.blocks):
        name = f"blocks.{i}"
        a, m = getattr(block, "attn", None), getattr(block, "mlp", None)
        if type(a).__name__ != "Attention" or not hasattr(m, "fc1") or not hasattr(m, "fc2"):
            raise UnsupportedModelError(
                f"cannot prune {type(model).__name__}: block {name} has attention "
                f"{type(a).__name__} and MLP {type(m).__name__}, tvc understands timm Attention "
                "and Mlp",
                "use a plain ViT/DeiT architecture",
            )
        attn.append(AttnUnit(f"{name}.attn", a, in_linear(a.proj), "in", "timm"))
        mlp.append(MlpUnit(f"{name}.mlp", m.fc1, m.fc2))
    heads = [("head", model.head)]
    if getattr(model, "head_dist", None) is not None:
        heads.append(("head_dist", model.head_dist))
    return VitLayout("timm", model, model.patch_embed.proj, attn, mlp, heads)


def _hf_layout(model: nn.Module) -> VitLayout:
    vit = model.inner.vit
    layers = getattr(vit, "layers", None)
    if layers is None:  # older transformers: vit.encoder.layer with ViTSelfAttention
        layers = getattr(getattr(vit, "encoder", None), "layer", [])
    attn, mlp = [], []
    prefix = "inner.vit.layers" if hasattr(vit, "layers") else "inner.vit.encoder.layer"
    for i, layer in enumerate(layers):
        name = f"{prefix}.{i}"
        a, m = layer.attention, getattr(layer, "mlp", None)
        if not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or m is None:
            raise UnsupportedModelError(
                f"cannot prune this ViTForImageClassification: {name} has the attention layout "
                "of another transformers version",
                "use transformers >= 5 (q_proj/k_proj/v_proj/o_proj attention)",
            )
        # The group is rooted at v_proj's outputs: torch-pruning traces q, k, v and o_proj from
        # there (from o_proj's inputs it loses the trail at the attention reshape).
        attn.append(AttnUnit(f"{name}.attention", a, out_linear(a.v_proj), "out", "hf"))
        mlp.append(MlpUnit(f"{name}.mlp", m.fc1, m.fc2))
    emb = vit.embeddings.patch_embeddings.projection
    return VitLayout("hf", model, emb, attn, mlp, [("inner.classifier", model.inner.classifier)])
