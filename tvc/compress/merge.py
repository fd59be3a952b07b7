"""Token merging as a compress step: `--merge-tokens R` (or a per-block schedule R1,R2,...).

Pruning and low-rank shrink the widths; token merging shrinks the other axis of a transformer's
cost, the sequence. The merging itself (bipartite soft matching, proportional attention) is part
of the model's rebuildable structure and lives in tvc.models.merge; this module checks that the
model can take it, turns the user's R into a per-block schedule that fits the model's token count,
and reports the token count of every block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from tvc.errors import ConfigError, UnsupportedModelError

EXAMPLE = "e.g. --merge-tokens 8, or one value per block: --merge-tokens 8,8,6,6,4,4"


def parse_schedule(text: str | int) -> list[int]:
    """'8' -> [8] (every block), '8,8,6' -> [8, 8, 6]; anything else is a ConfigError."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--merge-tokens {text!r} is not a token count or a comma-separated list of them",
            EXAMPLE,
        ) from None
    if any(v < 0 for v in values):
        raise ConfigError(f"--merge-tokens {text!r} has a negative token count", EXAMPLE)
    if not any(values):
        raise ConfigError(f"--merge-tokens {text!r} merges nothing", EXAMPLE)
    return values


def expand_schedule(values: list[int], depth: int) -> list[int]:
    """One R for every block, or exactly one value per block."""
    if len(values) == 1:
        return values * depth
    if len(values) != depth:
        raise ConfigError(
            f"--merge-tokens gives {len(values)} values for a model with {depth} blocks",
            f"give one R for every block or exactly {depth} comma-separated values",
        )
    return list(values)


def check_mergeable(model: Any) -> None:
    """Token merging needs a timm ViT/DeiT whose classifier reads the prefix tokens, or a
    Hugging Face ViT, DeiT or DINOv2 classifier (tvc.models.merge_hf)."""
    from tvc.compress.vit_layout import vit_layout
    from tvc.models.merge_hf import MERGEABLE

    layout = vit_layout(model, "merge tokens of")  # refuses unknown layers by name
    if layout.name in MERGEABLE:
        return
    if layout.name != "timm-vit":
        inner = getattr(layout.model, "inner", layout.model)
        raise UnsupportedModelError(
            f"token merging supports timm ViT/DeiT and Hugging Face ViT/DeiT/DINOv2 models, "
            f"not {type(inner).__name__} ({layout.name})",
            "compress a ViT/DeiT/DINOv2 build of the architecture, or use --prune / --lowrank",
        )
    pool = getattr(model, "global_pool", "token")
    if getattr(model, "attn_pool", None) is not None or pool not in ("token", ""):
        raise UnsupportedModelError(
            f"token merging needs a classifier on the class token; this model pools '{pool}'",
            "use a ViT/DeiT with global_pool='token' (the standard ones)",
        )
    if getattr(model, "dynamic_img_size", False):
        raise UnsupportedModelError(
            "token merging fixes the token count of every block; this model takes any image size",
            "build it with a fixed img_size",
        )


def tokens_entering_blocks(model: Any, input_size: tuple[int, int, int]) -> int:
    """The sequence length the first block sees (patch + prefix tokens), by running the model."""
    import torch

    from tvc.models.merge import merge_blocks

    seen: list[int] = []
    first = merge_blocks(model)[0]
    hook = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        hook.remove()
    return seen[0]


def merge(
    model: Any,
    values: list[int],
    input_size: tuple[int, int, int],
    *,
    proportional: bool = True,
    metric: str = "keys",
) -> dict[str, Any]:
    """Put token merging on `model` (in place, replacing any earlier schedule); the report.
    `metric`: what the matching compares, "keys" (ToMe) or "tokens" (tvc.models.merge)."""
    from tvc.models.merge import (
        METRICS,
        apply_merging,
        clamp_schedule,
        merge_blocks,
        prefix_tokens,
        remove_merging,
        token_counts,
    )

    if metric not in METRICS:
        raise ConfigError(
            f"--merge-metric {metric!r} is not one of {', '.join(METRICS)}",
            "pass --merge-metric keys (ToMe's choice) or tokens",
        )
    check_mergeable(model)
    remove_merging(model)
    depth = len(merge_blocks(model))
    asked = expand_schedule(values, depth)
    prefix = prefix_tokens(model)
    patches = tokens_entering_blocks(model, input_size) - prefix
    schedule = clamp_schedule(patches, asked)
    spec = {"schedule": schedule, "prefix": prefix, "proportional": proportional, "metric": metric}
    apply_merging(model, spec)
    counts = token_counts(patches, prefix, schedule)
    return {
        "requested": asked,
        "schedule": schedule,
        "clamped": schedule != asked,
        "prefix_tokens": prefix,
        "proportional_attention": proportional,
        "metric": metric,
        "tokens_in": counts[:-1],
        "tokens_out": counts[-1],
        "mean_tokens": sum(counts[:-1]) / depth,
    }


@contextlib.contextmanager
def merging_suspended(model: Any) -> Iterator[None]:
    """Run the blocks without merging inside (pruning and low-rank trace and measure the plain
    model), then put the same schedule back on the possibly reshaped blocks."""
    from tvc.models.merge import apply_merging, remove_merging

    spec = remove_merging(model)
    try:
        yield
    finally:
        if spec is not None:
            apply_merging(model, spec)
