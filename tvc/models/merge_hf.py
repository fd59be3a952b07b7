"""Token merging on Hugging Face ViT, DeiT and DINOv2 classifiers (the same matching as
tvc.models.merge, on transformers' own layers).

transformers loops over its layers itself (`for layer in self.layers: h = layer(h, mask)`), so
tvc cannot swap the loop as it does timm's `blocks`. Each layer instead gets a MergeStep (a
plain attribute: nothing in the state dict, the weights keep their names) and runs
`merging_forward` in place of its own forward: attention with the size bias, the merge, then
the MLP. The sizes travel to the next layer as one extra channel of the hidden states (the only
thing transformers passes on), and the last layer returns the plain width to the final norm.
The classifiers read the prefix tokens (ViT, DeiT) or, for DINOv2, the class token and the mean
of the tokens left (each merged token counts once there, as in ToMe).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tvc.models.families import family_of

# the families whose layers merging_forward knows (BEiT's relative position bias has one entry
# per patch pair, which merged tokens no longer are)
MERGEABLE = ("hf-vit", "hf-deit", "hf-dinov2", "hf-dinov2-registers")
_NORMS = (("layernorm_before", "layernorm_after"), ("norm1", "norm2"))  # ViT/DeiT, DINOv2


@dataclass
class MergeStep:
    """One layer's part of the schedule (see tvc.models.merge.MergingBlocks for the fields)."""

    r: int
    last: bool
    prefix: int
    proportional: bool
    metric: str
    margins: list[torch.Tensor] | None = None  # set by decision_margins


def hf_layers(model: nn.Module) -> nn.ModuleList | None:
    """The layer list of a mergeable Hugging Face classifier (HFClassifier), else None."""
    fam = family_of(model)
    if fam is None or fam.name not in MERGEABLE:
        return None
    node: Any = model
    for part in fam.backbone.split("."):
        node = getattr(node, part)
    for path in fam.layers:  # transformers versions keep the list in different places
        layers: Any = node
        for part in path.split("."):
            layers = getattr(layers, part, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    return None


def hf_prefix_tokens(model: nn.Module) -> int:
    """Tokens in front of the patches: the class token, DeiT's distillation token, DINOv2's
    registers."""
    fam = family_of(model)
    node: Any = model
    for part in fam.backbone.split("."):
        node = getattr(node, part)
    emb = node.embeddings
    prefix = 1 + int(getattr(emb, "distillation_token", None) is not None)
    registers = getattr(emb, "register_tokens", None)
    return prefix + (int(registers.shape[1]) if registers is not None else 0)


def apply_hf_merging(layers: nn.ModuleList, spec: dict[str, Any]) -> None:
    """Give every layer its MergeStep and merging_forward (in place)."""
    schedule = [int(r) for r in spec["schedule"]]
    if len(schedule) != len(layers):
        raise ValueError(f"merge schedule has {len(schedule)} entries for {len(layers)} layers")
    for i, (layer, r) in enumerate(zip(layers, schedule, strict=True)):
        layer.tvc_merge = MergeStep(
            r, i == len(layers) - 1, int(spec["prefix"]), bool(spec["proportional"]),
            str(spec.get("metric", "keys")),
        )  # fmt: skip
        layer.forward = types.MethodType(merging_forward, layer)


def hf_merging_spec(layers: nn.ModuleList) -> dict[str, Any] | None:
    steps = [getattr(layer, "tvc_merge", None) for layer in layers]
    if steps[0] is None:
        return None
    return {
        "schedule": [s.r for s in steps],
        "prefix": steps[0].prefix,
        "proportional": steps[0].proportional,
        "metric": steps[0].metric,
    }


def remove_hf_merging(layers: nn.ModuleList) -> None:
    for layer in layers:
        layer.__dict__.pop("forward", None)  # the class's own forward again
        layer.__dict__.pop("tvc_merge", None)


def merging_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The layer's forward with token merging between its attention and its MLP (a method of
    the layer; transformers' extra arguments, an all-pass attention mask here, are unused)."""
    from tvc.models.merge import merge_tokens, standardized

    step: MergeStep = self.tvc_merge
    norm1, norm2 = next((getattr(self, a), getattr(self, b)) for a, b in _NORMS if hasattr(self, a))
    width = norm1.normalized_shape[0]
    x, size = hidden_states, None
    if x.shape[-1] == width + 1:  # the sizes the previous layer passed on
        x, size = x[..., :width], x[..., width:]
    keys = step.r > 0 and step.metric == "keys"
    bias = size if step.proportional else None
    y, k = _attention(self.attention, norm1(x), bias, keys)
    x = x + _residual_branch(self, y, 1)
    if step.r > 0:
        metric = k if keys else standardized(x)
        x, size = merge_tokens(x, metric, size, step.r, step.prefix, step.margins, unit=not keys)
    x = x + _residual_branch(self, self.mlp(norm2(x)), 2)
    if step.last or size is None:
        return x
    return torch.cat([x, size], dim=-1)


def _residual_branch(layer: nn.Module, y: torch.Tensor, i: int) -> torch.Tensor:
    """What the layer does to a branch before its residual add: DINOv2's LayerScale and drop
    path, or ViT's dropout (all identities at inference but LayerScale)."""
    scale = getattr(layer, f"layer_scale{i}", None)
    if scale is not None:
        y = scale(y)
    drop = getattr(layer, "drop_path", None) or getattr(layer, "dropout", None)
    return drop(y) if drop is not None else y


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, keys: bool):
    """transformers' eager attention with the size bias in the logits; also returns the keys
    summed over heads (B, N, head_dim) when `keys` (see tvc.models.merge._attention)."""
    b, n, _ = x.shape
    shape = (b, n, -1, attn.head_dim)
    k_tokens = attn.k_proj(x).view(shape)  # token-major (B, N, H, D)
    metric = k_tokens.sum(2) if keys else None
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = k_tokens.transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    logits = (q @ k.transpose(-2, -1)) * attn.scaling
    if size is not None:  # proportional attention: a token of s patches counts s times
        logits = logits + size.log().view(-1, 1, 1, n)
    weights = nn.functional.dropout(
        logits.softmax(dim=-1), p=attn.attention_dropout if attn.training else 0.0
    )
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    return attn.o_proj(out), metric
