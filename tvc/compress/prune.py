"""Structured pruning of vision transformers: the result is a smaller dense model, not a masked one.

What gets smaller, per transformer block: the attention (whole heads with `prune_heads`, else the
dimensions of every head) and the MLP hidden width; and, shared by all blocks, the embedding
(residual) width unless `keep` names "embed". The classifier's outputs are never touched.

How: torch-pruning's DependencyGraph finds every tensor coupled to a channel (q, k and v of a head,
the norms and position embedding of the residual stream, the classifier's inputs), and its group
importances (GroupMagnitudeImportance, GroupTaylorImportance, RandomImportance) or tvc's
label-free feature-matching Fisher (`data`, tvc.compress.fisher) score them. Which
channels to remove is decided here rather than by torch-pruning's MetaPruner, because a ViT has a
known layout: counts are exact, rounded to `round_to` for hardware alignment, whole heads stay
whole, and a ratio that would empty a layer is refused before anything changes. Afterwards the
attention bookkeeping (num_heads, head_dim, attn_dim, scale) is fixed so forward, ONNX export and
fused attention stay correct.

Supported: the families in tvc.models.families (timm ViT / DeiT / DeiT distilled / DINOv2;
Hugging Face ViT, DeiT, DINOv2 with and without registers, BEiT); anything else is refused with
the names of the layers that are not understood.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from tvc.compress.vit_layout import VitLayout, out_linear, vit_layout
from tvc.deps import require
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models.structure import LowRankLinear

log = logging.getLogger("tvc")

IMPORTANCES = ("magnitude", "data", "taylor", "random")
# Parts `keep` can name; anything else in `keep` is a block name such as "blocks.3" or
# "blocks.3.mlp" (a prefix of the attention / MLP module names).
KEEP_PARTS = ("head", "embed", "attn", "mlp")

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------- config


@dataclass
class PruneConfig:
    """How to prune. Validated on construction; every error names the valid range."""

    ratio: float  # fraction of each width to remove, in (0, 1)
    importance: str = "magnitude"  # magnitude | data | taylor | random
    global_pruning: bool = False  # rank channels / heads across blocks instead of per block
    prune_heads: bool = False  # remove whole heads (else: dimensions of every head)
    round_to: int = 8  # kept channel counts are multiples of this (heads stay whole)
    keep: tuple[str, ...] = ("head",)  # parts or blocks left unpruned
    steps: int = 1  # iterative pruning: reach `ratio` in this many steps
    seed: int = 0  # for random importance

    def __post_init__(self) -> None:
        if isinstance(self.keep, str):
            self.keep = tuple(k for k in self.keep.split(",") if k.strip())
        self.keep = tuple(k.strip() for k in self.keep)
        if not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise ConfigError(
                f"prune ratio must be in (0, 1), got {self.ratio}",
                "e.g. --prune 0.3 removes 30% of each width",
            )
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"unknown importance '{self.importance}'", f"use one of: {', '.join(IMPORTANCES)}"
            )
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(
                f"round_to must be an integer >= 1, got {self.round_to}",
                "use --round-to 8 (GPUs/NPUs) or --round-to 1 (no rounding)",
            )
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps}", "use --steps 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PruneConfig:
        """Build from a mapping (a recipe); unknown keys are an error, not ignored."""
        return cls(**_known_keys(cls, d, "prune"))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep"] = list(self.keep)
        return d


def _known_keys(cls, d: dict[str, Any], what: str) -> dict[str, Any]:
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown {what} option(s): {', '.join(unknown)}", f"valid: {', '.join(names)}"
        )
    return dict(d)


# ---------------------------------------------------------------------------------- pruning


def prune(
    model: nn.Module,
    cfg: PruneConfig,
    *,
    example_input: torch.Tensor,
    batches: Batches | None = None,
    between_steps: Callable[[nn.Module, int], None] | None = None,
) -> dict[str, Any]:
    """Prune `model` in place to `cfg` and return a summary of what was removed.

    `example_input` is one input batch for tracing; `batches` are (images, labels) tensors for
    taylor importance (data importance reads only the images); `between_steps(model, step)`
    runs after every step but the last (e.g. a short fine-tune) when `cfg.steps > 1`. On error
    the model may be half-pruned: prune a copy.
    """
    tp = require("torch_pruning", "structured pruning")
    layout = vit_layout(model)
    _check_keep(layout, cfg.keep)
    _check_classifier(layout, cfg)
    if cfg.prune_heads:
        layout.check_head_pruning()
    if cfg.importance in ("taylor", "data") and not batches:
        what = "labelled images" if cfg.importance == "taylor" else "images"
        raise ConfigError(
            f"{cfg.importance} importance needs a few batches of {what}",
            "pass --data DATA, or use --importance magnitude",
        )
    original = _unit_widths(layout)
    _uniform_targets(layout, original, cfg, cfg.ratio)  # refuses a ratio that empties a layer
    model.eval()
    num_classes = _num_outputs(model, example_input)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.enable_grad():
        # torch-pruning warns about the class/position tokens it detects as "unwrapped"
        # parameters; it prunes their last dimension, which is the embedding width: right.
        warnings.simplefilter("ignore")
        with layout.tracing():  # what the layout prunes itself stays out of the graph
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, ignored_params=layout.untraced()
            )
    for step in range(1, cfg.steps + 1):
        ratio = cfg.ratio * step / cfg.steps
        scorer = _importance(cfg.importance)
        if cfg.importance == "taylor":
            _taylor_gradients(model, batches or [], num_classes)
        elif cfg.importance == "data":
            scorer = _data_importance(model, batches or [], cfg.seed + step)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + step)  # random importance is reproducible
            ops, attn_shapes = _plan(layout, graph, tp, scorer, cfg, original, ratio)
        embed_before = layout.embed_dim
        for root, fn, idxs in ops:
            group = graph.get_pruning_group(root, fn, idxs)
            if not graph.check_pruning_group(group):
                raise ConfigError(
                    f"pruning would empty a layer coupled to {_name_of(model, root)}",
                    "use a smaller ratio or a smaller --round-to",
                )
            layout.follow(root, idxs)  # per-head tables, mask tokens: not traced by the graph
            group.prune()
        _fix_bookkeeping(layout, attn_shapes, embed_before)
        model.zero_grad(set_to_none=True)
        if between_steps is not None and step < cfg.steps:
            between_steps(model, step)
            model.eval()
    _check_output(model, example_input, num_classes)
    final = _unit_widths(layout)
    return {
        **cfg.as_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
        "heads_removed": sum(
            o[0] - f[0] for o, f in zip(original["attn"], final["attn"], strict=True)
        ),
        "embed": {"before": original["embed"], "after": final["embed"]},
    }


def _importance(name: str):
    tp = require("torch_pruning", "structured pruning")
    if name in ("magnitude", "data"):  # data: replaced per step by _data_importance
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.RandomImportance()


def _data_importance(model: nn.Module, batches: Batches, seed: int):
    """Feature-matching Fisher scores of the model as it is now (labels are ignored)."""
    from tvc.compress.fisher import feature_fisher, fisher_importance

    return fisher_importance(feature_fisher(model, [x for x, _ in batches], seed=seed))


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is module), type(module).__name__)


def _num_outputs(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x).shape[-1])


def _check_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    with torch.no_grad():
        y = model(x)
    if y.shape != (x.shape[0], num_classes):
        raise UnsupportedModelError(
            f"after pruning the model outputs {tuple(y.shape)} instead of "
            f"{(x.shape[0], num_classes)}",
            "this architecture is not pruned correctly by tvc; report it",
        )


def _taylor_gradients(model: nn.Module, batches: Batches, num_classes: int) -> None:
    """Accumulate loss gradients on `batches`: taylor importance is |weight * gradient|."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in batches:
            if int(y.max()) >= num_classes:
                raise ConfigError(
                    f"the data has label {int(y.max())} but the model has {num_classes} classes",
                    "use data with the model's classes, or --importance magnitude",
                )
            nn.functional.cross_entropy(model(x), y).backward()


def _check_keep(layout: VitLayout, keep: Sequence[str]) -> None:
    names = [u.name for u in (*layout.attn, *layout.mlp)]
    for k in keep:
        if k in KEEP_PARTS:
            continue
        if not any(n == k or n.startswith(k + ".") for n in names):
            raise ConfigError(
                f"--keep '{k}' names no part or block of this model",
                f"use {', '.join(KEEP_PARTS)} or a block such as "
                f"{names[0].rsplit('.', 1)[0]} or {names[0]}",
            )


def _kept(unit_name: str, part: str, keep: Sequence[str]) -> bool:
    return part in keep or any(unit_name == k or unit_name.startswith(k + ".") for k in keep)


def _check_classifier(layout: VitLayout, cfg: PruneConfig) -> None:
    """The classifier's outputs stay; refuse a prune whose result could not classify."""
    for name, head in layout.classifiers:
        if isinstance(head, nn.Linear):
            continue
        if not isinstance(head, nn.Identity):
            raise UnsupportedModelError(
                f"the classifier {name} is a {type(head).__name__}, not a Linear; pruning its "
                "inputs would break it",
                "prune a model whose head is a plain Linear layer",
            )
        if "embed" not in cfg.keep:
            raise ConfigError(
                f"the model has no classifier ({name} is Identity, num_classes=0): its output is "
                "the embedding, which pruning would narrow",
                "build it with --num-classes N, or pass --keep embed",
            )


def _unit_widths(layout: VitLayout) -> dict[str, Any]:
    return {
        "embed": layout.embed_dim,
        "attn": [(a.heads, a.head_dim) for a in layout.attn],
        "mlp": [m.hidden for m in layout.mlp],
    }


def _round_count(n: float, multiple: int) -> int:
    """`n` rounded to the nearest multiple of `multiple` (halves round up)."""
    return math.floor(n / multiple + 0.5) * multiple


def _uniform_targets(
    layout: VitLayout, original: dict[str, Any], cfg: PruneConfig, ratio: float
) -> dict[str, Any]:
    """Widths after removing `ratio` of each original width; refuses to empty a layer."""

    def target(width: int, multiple: int, what: str, unit: str) -> int:
        kept = min(width, _round_count(width * (1.0 - ratio), multiple))
        if kept <= 0:
            rounding = f" after rounding to multiples of {multiple}" if multiple > 1 else ""
            raise ConfigError(
                f"prune ratio {cfg.ratio} would remove every {what} of {unit} "
                f"({width} -> 0{rounding})",
                "use a smaller ratio" + (" or a smaller --round-to" if multiple > 1 else ""),
            )
        return kept

    r = cfg.round_to
    embed = original["embed"]
    if "embed" not in cfg.keep:
        embed = target(embed, r, "channel", "the embedding")
    attn = []
    for unit, (heads, dim) in zip(layout.attn, original["attn"], strict=True):
        if _kept(unit.name, "attn", cfg.keep):
            attn.append((heads, dim))
        elif cfg.prune_heads:
            attn.append((target(heads, 1, "head", unit.name), dim))
        else:
            attn.append((heads, target(dim, r, "head dimension", unit.name)))
    mlp = []
    for unit, hidden in zip(layout.mlp, original["mlp"], strict=True):
        kept = _kept(unit.name, "mlp", cfg.keep)
        mlp.append(hidden if kept else target(hidden, r, "channel", unit.name))
    return {"embed": embed, "attn": attn, "mlp": mlp}


def _scores(graph, tp, scorer, root: nn.Module, dim: str):
    """Importance of every input or output channel of `root`, scored over its whole group."""
    if isinstance(root, nn.Conv2d):
        fn, n = tp.prune_conv_out_channels, root.out_channels
    elif dim == "out":
        fn, n = tp.prune_linear_out_channels, root.out_features
    else:
        fn, n = tp.prune_linear_in_channels, root.in_features
    imp = scorer(graph.get_pruning_group(root, fn, list(range(n))))
    if imp is None or len(imp) != n:
        raise UnsupportedModelError(
            f"torch-pruning could not score the channels of a {type(root).__name__}",
            "this model's graph is not traceable for pruning; report it",
        )
    return imp.detach().float().cpu(), fn


def _lowest(scores: torch.Tensor, n_remove: int) -> list[int]:
    if n_remove <= 0:
        return []
    return torch.argsort(scores, stable=True)[:n_remove].tolist()


def _global_counts(
    scores: list[torch.Tensor], originals: list[int], ratio: float, multiple: int
) -> list[int]:
    """Kept count per unit when one threshold is applied to the pooled scores of all units.

    Each unit keeps at least one `multiple` (one head): global ranking never empties a layer.
    """
    if not scores:
        return []
    pooled = torch.cat(scores)
    total_keep = round(sum(originals) * (1.0 - ratio))
    if total_keep >= len(pooled):
        return [len(s) for s in scores]
    threshold = torch.topk(pooled, max(total_keep, 1)).values[-1]
    counts = []
    for s in scores:
        kept = _round_count(int((s >= threshold).sum()), multiple)
        counts.append(min(len(s), max(min(multiple, len(s)), kept)))
    return counts


def _plan(
    layout: VitLayout,
    graph,
    tp,
    scorer,
    cfg: PruneConfig,
    original: dict[str, Any],
    ratio: float,
):
    """The (root, pruning fn, channel indices) to remove in this step, and each attention's
    (heads, head_dim) afterwards. All scores are taken before anything is pruned."""
    uniform = _uniform_targets(layout, original, cfg, ratio)
    ops = []

    if "embed" not in cfg.keep:
        scores, fn = _scores(graph, tp, scorer, layout.embed, "out")
        ops.append((layout.embed, fn, _lowest(scores, layout.embed_dim - uniform["embed"])))

    # Attention: scores per (head, dim) of each unit that is pruned.
    attn_shapes = [(a.heads, a.head_dim) for a in layout.attn]
    live = [i for i, a in enumerate(layout.attn) if not _kept(a.name, "attn", cfg.keep)]
    per_unit = {}
    for i in live:
        a = layout.attn[i]
        scores, fn = _scores(graph, tp, scorer, a.root, a.root_dim)
        per_unit[i] = (scores.view(a.heads, a.head_dim), fn)
    if cfg.prune_heads:
        if cfg.global_pruning:
            head_scores = [per_unit[i][0].mean(1) for i in live]
            counts = _global_counts(head_scores, [original["attn"][i][0] for i in live], ratio, 1)
        else:
            counts = [uniform["attn"][i][0] for i in live]
        for i, kept_heads in zip(live, counts, strict=True):
            grid, fn = per_unit[i]
            heads, dim = grid.shape
            drop = sorted(_lowest(grid.mean(1), heads - kept_heads))
            idxs = [h * dim + j for h in drop for j in range(dim)]
            ops.append((layout.attn[i].root, fn, idxs))
            attn_shapes[i] = (kept_heads, dim)
    else:
        if cfg.global_pruning:
            dim_scores = [per_unit[i][0].mean(0) for i in live]
            originals = [original["attn"][i][1] for i in live]
            counts = _global_counts(dim_scores, originals, ratio, cfg.round_to)
        else:
            counts = [uniform["attn"][i][1] for i in live]
        for i, kept_dim in zip(live, counts, strict=True):
            grid, fn = per_unit[i]
            heads, dim = grid.shape
            # Every head keeps its own best dimensions; all heads keep the same number.
            idxs = [h * dim + j for h in range(heads) for j in _lowest(grid[h], dim - kept_dim)]
            ops.append((layout.attn[i].root, fn, sorted(idxs)))
            attn_shapes[i] = (heads, kept_dim)

    # MLP hidden channels.
    live = [i for i, m in enumerate(layout.mlp) if not _kept(m.name, "mlp", cfg.keep)]
    mlp_scores = {i: _scores(graph, tp, scorer, layout.mlp[i].root, "out") for i in live}
    if cfg.global_pruning:
        originals = [original["mlp"][i] for i in live]
        counts = _global_counts([mlp_scores[i][0] for i in live], originals, ratio, cfg.round_to)
    else:
        counts = [uniform["mlp"][i] for i in live]
    for i, kept in zip(live, counts, strict=True):
        scores, fn = mlp_scores[i]
        ops.append((layout.mlp[i].root, fn, _lowest(scores, layout.mlp[i].hidden - kept)))
    return [op for op in ops if op[2]], attn_shapes


def _fix_bookkeeping(layout: VitLayout, attn_shapes: list[tuple[int, int]], old_embed: int) -> None:
    """Bring the attributes that forward() reads in line with the pruned weights."""
    for m in layout.model.modules():
        if isinstance(m, LowRankLinear):
            m.in_features, m.rank = m.first.in_features, m.first.out_features
            m.out_features = m.second.out_features
    for a, (heads, dim) in zip(layout.attn, attn_shapes, strict=True):
        if layout.family == "hf":
            # HF passes `scaling` to the attention explicitly: it keeps the trained value.
            a.module.num_attention_heads, a.module.head_dim = heads, dim
            continue
        m = a.module
        if dim != m.head_dim:
            # timm's fused attention (scaled_dot_product_attention, and its ONNX export) scales
            # by 1/sqrt(head_dim) and ignores `scale`; fold the trained scale into q instead.
            factor = m.scale * math.sqrt(dim)
            q_rows = heads * dim
            out = out_linear(m.qkv)
            with torch.no_grad():
                out.weight[:q_rows] *= factor
                if out.bias is not None:
                    out.bias[:q_rows] *= factor
            m.scale = dim**-0.5
        m.num_heads, m.head_dim = heads, dim
        if hasattr(m, "attn_dim"):
            m.attn_dim = heads * dim
    if layout.family == "timm":
        new = layout.embed_dim
        for attr in ("embed_dim", "num_features", "head_hidden_size"):
            if getattr(layout.model, attr, None) == old_embed:
                setattr(layout.model, attr, new)
