"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) as a
rebuildable piece of a timm ViT's structure.

After each block's attention, bipartite soft matching merges `r` patch tokens into their most
similar partners: the patch tokens alternate into sets A and B, every A token picks its best B
token, and the `r` A tokens with the best matches are averaged (weighted by how many patches
each token already holds) into their B token. Attention then sees each token with its size:
proportional attention adds log(size) to the attention logits, so a merged token weighs as much
as the patches it stands for. The prefix tokens (class, distillation) are never merged and stay
at the front, so the classifier reads them where it always did.

Similarity is the cosine of the attention keys summed over heads (metric "keys", what ToMe
uses), or of the token features after attention, each standardized over its channels as
LayerNorm does (metric "tokens"): the latter keeps more accuracy on some models
(benchmarks/results/merge.md) at about the same cost.

Here it lives in `tvc.models` (not `tvc.compress`) because rebuilding an artifact needs it: the
structure records `{"merge": ...}` and `apply_structure` swaps `model.blocks` for a
`MergingBlocks`. That container is an nn.Sequential of the very same blocks, so the weights'
names do not change; it only replaces the loop over the blocks. Every token count is fixed by
the input size and the schedule, so the ONNX graph has static shapes, and the matching is written
with ops ONNX Runtime and TensorRT run (TopK, row Gathers, and a one-hot MatMul in place of a
scatter-add). Hugging Face ViT/DeiT/DINOv2 classifiers get the same matching on their own layers
(tvc.models.merge_hf); the functions under "structure" below serve both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tvc.errors import ArtifactError
from tvc.models.merge_hf import (
    apply_hf_merging,
    hf_layers,
    hf_merging_spec,
    hf_prefix_tokens,
    remove_hf_merging,
)

METRICS = ("keys", "tokens")  # what the matching compares (see the module docstring)


class MergingBlocks(nn.Sequential):
    """The blocks of a timm VisionTransformer with `schedule[i]` tokens merged after block i's
    attention. `prefix` tokens (class / distillation) at the front are never merged."""

    def __init__(
        self,
        blocks: Iterable[nn.Module],
        schedule: list[int],
        prefix: int,
        proportional: bool,
        metric: str = "keys",
    ) -> None:
        super().__init__(*blocks)
        if len(schedule) != len(self):
            raise ValueError(f"merge schedule has {len(schedule)} entries for {len(self)} blocks")
        if metric not in METRICS:
            raise ValueError(f"merge metric {metric!r} is not one of {', '.join(METRICS)}")
        self.schedule = [int(r) for r in schedule]
        self.prefix = int(prefix)
        self.proportional = bool(proportional)
        self.metric = metric
        self.margins: list[torch.Tensor] | None = None  # set by decision_margins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: torch.Tensor | None = None  # patches per token (B, N, 1); None until a merge
        for block, r in zip(self, self.schedule, strict=True):
            x, size = merging_block(
                block, x, size, r, self.prefix, self.proportional, self.margins, self.metric
            )
        return x

    def extra_repr(self) -> str:
        return (
            f"merge={self.schedule}, prefix={self.prefix}, proportional={self.proportional}, "
            f"metric={self.metric}"
        )


def merging_block(
    block: nn.Module,
    x: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    prefix: int,
    proportional: bool,
    margins: list[torch.Tensor] | None = None,
    metric: str = "keys",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """timm Block.forward with token merging between the attention and the MLP."""
    keys = r > 0 and metric == "keys"
    y, k = _attention(block.attn, block.norm1(x), size if proportional else None, keys)
    x = x + block.drop_path1(block.ls1(y))
    if r > 0:
        if keys:
            x, size = merge_tokens(x, k, size, r, prefix, margins)
        else:
            x, size = merge_tokens(x, standardized(x), size, r, prefix, margins, unit=True)
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size


def standardized(x: torch.Tensor) -> torch.Tensor:
    """The "tokens" metric: each token standardized over its channels (what LayerNorm does
    before its scale and shift) and divided by sqrt(C), so every row has unit norm and the
    matching needs no normalization of its own: one LayerNormalization op on ONNX Runtime, where
    LN's output plus a norm and a division were three. Its matches kept the accuracy of matches
    on the block's own norm2 output (scale and shift included) within 0.35 points at r = 8..12
    on the Fashion-MNIST teacher."""
    c = x.shape[-1]
    return F.layer_norm(x, (c,), weight=x.new_full((c,), c**-0.5))


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None, keys: bool = True):
    """timm Attention (unfused, so the size bias can enter the logits); also returns the
    keys metric (None unless `keys`): the keys summed over heads (B, N, head_dim). ToMe
    averages them; matching normalizes the metric, so the sum picks the same partners, and
    summing in the token-major layout (before the heads are moved to the front) is a contiguous
    reduction that ONNX Runtime runs about 3x faster than one over the heads axis."""
    b, n, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1)
    # k_norm (a per-head norm over D, or Identity) is applied in both layouts: a second norm
    # costs less than a second transpose of q, k and v
    metric = attn.k_norm(qkv[:, :, 1]).sum(2) if keys else None
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if size is not None:  # proportional attention: a token of s patches counts s times
        # (B, N, 1) -> (B, 1, 1, N): one Reshape, which ONNX Runtime runs in place
        logits = logits + size.log().view(-1, 1, 1, n)
    weights = attn.attn_drop(logits.softmax(dim=-1))
    out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    return out, metric


def merge_tokens(
    x: torch.Tensor,
    metric: torch.Tensor,
    size: torch.Tensor | None,
    r: int,
    prefix: int,
    margins: list[torch.Tensor] | None = None,
    *,
    unit: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` of x's patch tokens (bipartite soft matching on `metric`, B x N x C'), size-
    weighted; returns the shorter x and every token's size (None: every token is one patch).
    `unit`: the metric's rows already have unit norm."""
    return bipartite_matching(metric, r, prefix, margins, unit=unit).weighted(x, size)


def bipartite_matching(
    metric: torch.Tensor,
    r: int,
    prefix: int,
    margins: list[torch.Tensor] | None = None,
    *,
    unit: bool = False,
) -> Matching:
    """The Matching that merges `r` tokens of a (B, N, C) tensor: A = even, B = odd patch tokens;
    the r A tokens most similar (cosine) to some B token are averaged into it, weighted by size.
    With `margins`, each image's closest call is appended to it (see decision_margins);
    `unit`: the metric's rows already have unit norm, so it is not normalized again."""
    n = metric.shape[1]
    # A and B are each one strided Slice of the whole sequence: every copy of a (B, N, C)
    # tensor counts on ONNX Runtime, where merging is a few percent of a merged model's time
    tokens = metric if unit else metric / metric.norm(dim=-1, keepdim=True)
    a, b = tokens[:, prefix::2], tokens[:, prefix + 1 :: 2]
    n_b = b.shape[1]
    scores = a @ b.transpose(-1, -2)  # (B, Na, Nb) cosine similarities
    # every A token's best B partner: TopK(1) gives both in one op; ONNX Runtime's ArgMax
    # alone takes about 4x as long on a (98, 98) score matrix
    best, best_idx = (t.squeeze(-1) for t in scores.topk(1, dim=-1))  # Squeeze: no copy
    order = best.argsort(dim=-1, descending=True)  # (B, Na)
    if margins is not None:
        margins.append(_closest_call(scores, best, r))
    # A token i is row prefix + 2i of its image, and image j starts at row j * N of the batch
    # flattened: one Mul and one Add here, and every gather below is a Reshape and a Gather
    starts = torch.arange(a.shape[0], device=metric.device)[:, None] * n + prefix
    rows = order * 2 + starts
    src_idx, keep_idx = rows[:, :r], rows[:, r:]
    dst_idx = best_idx.gather(1, order[:, :r])  # (B, r)
    # One-hot rows (B, r, Nb) of the moved tokens' partners sum them into those partners by a
    # MatMul, where a scatter-add would need ScatterElements' reduction (which not every runtime
    # supports). Taken as rows of an identity matrix: one Gather where comparing indices takes
    # an Unsqueeze, an Equal and a Cast.
    onehot = torch.eye(n_b, dtype=metric.dtype, device=metric.device)[dst_idx]
    return Matching(src_idx, keep_idx, onehot, prefix)


class Matching:
    """Which patch tokens merge into which: A tokens `src_idx` (B, r) move into their B
    partners (`onehot`, B x r x Nb: moved token i's partner), A tokens `keep_idx` stay; both
    index the rows of the batch flattened (see take_rows). `weighted` averages the moved rows
    of a (B, N, C) tensor into their partners by size."""

    def __init__(
        self, src_idx: torch.Tensor, keep_idx: torch.Tensor, onehot: torch.Tensor, prefix: int
    ) -> None:
        self.src_idx, self.keep_idx, self.onehot, self.prefix = src_idx, keep_idx, onehot, prefix
        # Merging every A token leaves none to keep: an empty gather exports to a Reshape that
        # ONNX shape inference refuses, so that case is left out of the graph.
        self.keep_none = keep_idx.shape[1] == 0

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prefix rows, the moved A rows and the B rows (the partners) of t (B, N, C)."""
        return t[:, : self.prefix], take_rows(t, self.src_idx), t[:, self.prefix + 1 :: 2]

    def _join(self, t: torch.Tensor, head: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        if self.keep_none:
            return torch.cat([head, dst], dim=1)
        return torch.cat([head, take_rows(t, self.keep_idx), dst], dim=1)

    def weighted(
        self, x: torch.Tensor, size: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x merged as size-weighted averages, and the new sizes. Only the B tokens that take
        others in change, so only they are weighted and divided (on ONNX Runtime this is
        cheaper than weighting, concatenating and dividing the whole sequence)."""
        head, moved, dst = self._split(x)
        # (B, Nb, r): the transpose goes into the MatMul (ONNX Runtime's FusedMatMul, transA)
        into = self.onehot.to(x.dtype).transpose(1, 2)
        if size is None:  # every token is one patch so far: the prefix and kept rows stay 1
            total = 1 + self.onehot.sum(1)[..., None]  # partners' sizes (B, Nb, 1)
            dst = (dst + into @ moved) / total
            ones = x.new_ones(x.shape[0], x.shape[1] - moved.shape[1] - dst.shape[1], 1)
            return self._join(x, head, dst), torch.cat([ones, total], dim=1)
        _, moved_size, s_dst = self._split(size)
        total = s_dst + into @ moved_size
        dst = (dst * s_dst + into @ (moved * moved_size)) / total
        # the prefix tokens never merge: their sizes are ones (a constant, not a Slice)
        ones = size.new_ones(size.shape[0], self.prefix, 1)
        return self._join(x, head, dst), self._join(size, ones, total)


def take_rows(x: torch.Tensor, flat_idx: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, N, C) by their index in the batch flattened to B * N rows (image i's row
    j is i * N + j; flat_idx is B x k): (B, k, C). One Gather of whole rows; GatherElements
    would need an index tensor as large as its output, which ONNX Runtime reads about 4x
    slower."""
    return x.reshape(-1, x.shape[-1])[flat_idx]


def _closest_call(scores: torch.Tensor, best: torch.Tensor, r: int) -> torch.Tensor:
    """Per image, the smallest similarity gap behind a choice: an A token's best B partner over
    its second best, and the r-th merged A token over the first kept one."""
    inf = torch.full_like(best[:, 0], float("inf"))
    partner = inf
    if scores.shape[-1] > 1:
        top2 = scores.topk(2, dim=-1).values
        partner = (top2[..., 0] - top2[..., 1]).amin(dim=-1)
    ranked = best.sort(dim=-1, descending=True).values
    cut = ranked[:, r - 1] - ranked[:, r] if 0 < r < ranked.shape[1] else inf
    return torch.minimum(partner, cut)


def decision_margins(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Per image of `x`, how close token merging came to choosing differently (the smallest
    cosine-similarity gap behind any partner or rank choice, every block); None when `model`
    does not merge. Matching is an argmax and a sort: where two candidates are closer than the
    rounding difference between two runtimes, ONNX Runtime may pick the other one, which is a
    valid merge but not the same numbers, so parity checks use images whose choices are clear."""
    if merging_spec(model) is None:
        return None
    blocks = model.blocks if isinstance(getattr(model, "blocks", None), MergingBlocks) else None
    holders = [blocks] if blocks is not None else [layer.tvc_merge for layer in hf_layers(model)]
    found: list[torch.Tensor] = []
    for h in holders:
        h.margins = found  # every block appends to the same list
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in holders:
            h.margins = None
    if not found:
        return torch.full((len(x),), float("inf"))
    return torch.stack(found).amin(dim=0)


def token_counts(patches: int, prefix: int, schedule: list[int]) -> list[int]:
    """Tokens entering each block, then the count after the last (prefix included)."""
    counts = [patches + prefix]
    for r in schedule:
        counts.append(counts[-1] - r)
    return counts


def clamp_schedule(patches: int, schedule: list[int]) -> list[int]:
    """The schedule with each r capped at half the patch tokens left (the A set's size, and
    what ToMe allows), so a merge never runs out of tokens."""
    out, left = [], patches
    for r in schedule:
        r = max(0, min(int(r), left // 2))
        out.append(r)
        left -= r
    return out


# ----------------------------------------------------------------------------- structure
def merge_blocks(model: nn.Module) -> nn.Module | None:
    """The list of blocks token merging runs over: a timm ViT's `blocks`, or a Hugging Face
    ViT/DeiT/DINOv2's layers (tvc.models.merge_hf); None for any other model."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential):
        return blocks
    return hf_layers(model)


def prefix_tokens(model: nn.Module) -> int:
    """The tokens in front of the patches, which merging never touches."""
    if hf_layers(model) is not None:
        return hf_prefix_tokens(model)
    return int(getattr(model, "num_prefix_tokens", 1))


def merging_spec(model: nn.Module) -> dict[str, Any] | None:
    """What `apply_merging` needs to put token merging back on a fresh build; None if absent."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, MergingBlocks):
        layers = hf_layers(model)
        return hf_merging_spec(layers) if layers is not None else None
    return {
        "schedule": list(blocks.schedule),
        "prefix": blocks.prefix,
        "proportional": blocks.proportional,
        "metric": blocks.metric,
    }


def apply_merging(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Swap model.blocks for MergingBlocks of the same blocks, or give a Hugging Face model's
    layers their merging steps (in place; weights untouched)."""
    blocks = getattr(model, "blocks", None)
    layers = hf_layers(model)
    if layers is None and (blocks is None or not isinstance(blocks, nn.Sequential)):
        raise ArtifactError(
            f"the recorded token merging needs a timm ViT with blocks or a Hugging Face "
            f"ViT/DeiT/DINOv2, not {type(model).__name__}",
            "the artifact's model section and its structure disagree; re-run 'tvc compress'",
        )
    try:
        if layers is not None:
            remove_hf_merging(layers)
            apply_hf_merging(layers, spec)
            return model
        model.blocks = MergingBlocks(
            list(blocks),
            list(spec["schedule"]),
            int(spec["prefix"]),
            bool(spec["proportional"]),
            str(spec.get("metric", "keys")),  # artifacts written before the option: keys
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"the recorded token merging is unreadable ({exc})",
            "re-run 'tvc compress --merge-tokens' to write it again",
        ) from exc
    return model


def remove_merging(model: nn.Module) -> dict[str, Any] | None:
    """Put a plain nn.Sequential of the same blocks back (or the Hugging Face layers' own
    forward); returns the spec that was removed."""
    spec = merging_spec(model)
    layers = hf_layers(model)
    if spec is not None and layers is not None:
        remove_hf_merging(layers)
    elif spec is not None:
        model.blocks = nn.Sequential(*list(model.blocks))
    return spec
