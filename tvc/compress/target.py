"""A parameter target for pruning: find the width ratio that removes a fraction of the parameters.

`--prune R` removes R of every width (attention heads or head dims, MLP/FFN channels, and the
embedding unless kept), so parameters fall faster than R: a ViT's Linear layers shrink in both
dimensions, and `--prune 0.3` leaves about 0.5 of them. `--prune-params P` asks for what users
usually mean, "remove P of the parameters": the width ratio is solved by bisection, pruning
copies of the model over its real structure (round-to, kept layers, heads) before any training.
Parameter counts fall in steps (widths are multiples of round_to), so the result is as close as
the structure allows; the solver reports the fraction it reached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("tvc")

MAX_RATIO = 0.95  # the widest pruning the search tries
TOLERANCE = 0.005  # stop once the kept fraction is this close to the target
ITERATIONS = 14  # bisection steps at most (2^-14 of the ratio range)
MIN_STEP = 0.002  # stop once the bracket is this narrow


@dataclass(frozen=True)
class Solved:
    ratio: float  # the width ratio --prune to use
    kept: float  # parameters kept at that ratio / parameters before
    target_kept: float  # 1 - the requested fraction to remove
    tried: int  # pruned copies built


def solve_width_ratio(
    params_after: Callable[[float], int | None], params_before: int, remove: float
) -> Solved:
    """The width ratio whose pruned model keeps closest to (1 - remove) of `params_before`
    parameters. `params_after(r)` prunes a copy at ratio r and counts its parameters (None when
    that ratio cannot be applied, e.g. it would remove every head: treated as too much)."""
    target = 1.0 - remove
    lo, hi = 0.0, MAX_RATIO  # kept(lo) >= target; kept(hi) may be above or below
    best: tuple[float, float] | None = None  # (ratio, kept)
    tried = 0
    for _ in range(ITERATIONS):
        mid = (lo + hi) / 2
        n = params_after(mid)
        tried += 1
        if n is None:  # too much: the structure cannot take it
            hi = mid
            continue
        kept = n / params_before
        if best is None or abs(kept - target) < abs(best[1] - target):
            best = (mid, kept)
        if abs(kept - target) <= TOLERANCE:
            break
        if kept > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < MIN_STEP:  # finer than any width step the structure can take
            break
    if best is None:
        from tvc.errors import ConfigError

        raise ConfigError(
            f"no width ratio could be applied to reach --prune-params {remove}",
            "ask for fewer parameters removed, or pass --keep to leave parts unpruned",
        )
    ratio = round(best[0], 4)
    return Solved(ratio=ratio, kept=best[1], target_kept=target, tried=tried)


def width_ratio_for_params(task, model, settings: dict, remove: float, *, example,
                           batches=None) -> Solved:  # fmt: skip
    """Solve --prune-params `remove` for `model` through `task.prune` on deep copies."""
    import copy

    from tvc.compress.report import count_params
    from tvc.errors import ConfigError

    before = count_params(model)

    def params_after(ratio: float) -> int | None:
        trial = copy.deepcopy(model)
        try:
            task.prune(trial, {**settings, "prune": ratio}, example=example, batches=batches)
        except ConfigError:  # e.g. the ratio would remove every head of a block
            return None
        return count_params(trial)

    solved = solve_width_ratio(params_after, before, remove)
    log.info("--prune-params %.2f: pruning %.1f%% of each width keeps %.3f of the parameters "
             "(target %.3f; %d trial prunes)", remove, solved.ratio * 100, solved.kept,
             solved.target_kept, solved.tried)  # fmt: skip
    return solved


def ratio_line(ratio: float, params: float | None, macs: float | None) -> str:
    """'pruned 30% of each width: params 0.49x, MACs 0.51x' (ratios vs the parent)."""
    parts = [f"{name} {v:.2f}x" for name, v in (("params", params), ("MACs", macs)) if v]
    return f"pruned {ratio * 100:.3g}% of each width: {', '.join(parts)} of the parent"
