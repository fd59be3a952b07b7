"""Choose a compression for a latency target: a grid of (width prune ratio, per block or
ranked across blocks, low-rank energy, merge r) candidates.

Every candidate is built on a copy of the model (pruned with the user's importance, either
every block by the ratio or heads and channels ranked across blocks so each layer keeps what
its importance earns; its attention and MLP projections factorized to keep a share of their
spectral energy, each layer at its own rank; then token merging with r tokens per block), its
MACs and summed block tokens counted, and its latency predicted from a latency table
(tvc.compress.latency_table). Among the candidates predicted to meet the target, only the
frontier is scored: for each width variant the least merging that meets it (more merging on
the same widths only loses more). Each frontier candidate's top-1 agreement with the parent on
a few hundred images is its predicted loss; the most faithful one wins (ties: the slower, i.e.
less compressed). Merging is uniform (one r for every block) in the grid, then
`refine_schedule` spreads the winner's merging over the blocks from a sensitivity pass, and
the per-block schedule replaces it when it scores better.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tvc.compress.latency_table import LatencyTable
from tvc.errors import ConfigError

log = logging.getLogger("tvc")

Width = tuple[float, bool, float | None]  # prune ratio, ranked across blocks, low-rank energy
Key = tuple[float, bool, float | None, int]  # a width and the tokens merged per block

PRUNE_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# spectral energy every factorized layer keeps (tvc.compress.lowrank); None: not factorized.
# A layer is factorized only where that lowers its MACs, so on weights whose spectrum is flat
# (random ones) the low-rank variant is the plain one and is left out of the grid.
LOWRANK_GRID = (None, 0.9)
MERGE_STEPS = 7  # merge r values from 0 to the largest, evenly spaced


@dataclass
class Candidate:
    prune: float
    merge: int  # tokens merged per block (uniform); 0: none
    macs: int
    tokens: int  # tokens entering each block, summed over blocks
    schedule: list[int] = field(default_factory=list)
    predicted_ms: float | None = None
    agreement: float | None = None
    per_block: bool = False  # a schedule from refine_schedule, not one r for every block
    lowrank: float | None = None  # spectral energy kept by factorizing; None: not factorized
    global_prune: bool = False  # channels and heads ranked across blocks (--global)
    lowrank_macs: int = 0  # of `macs`, those inside factorized layers

    @property
    def width(self) -> Width:
        """The width variant: prune ratio, ranked across blocks or not, low-rank energy."""
        return self.prune, self.global_prune, self.lowrank

    @property
    def key(self) -> Key:
        """(prune, global, lowrank, merge): how CandidateModels and the search name it."""
        return self.prune, self.global_prune, self.lowrank, self.merge

    @property
    def merge_option(self) -> str | None:
        """What --merge-tokens takes for this candidate: 'r', 'r0,r1,...', or None."""
        if not any(self.schedule):
            return None
        return ",".join(map(str, self.schedule)) if self.per_block else str(self.merge)

    @property
    def merging_blocks(self) -> int:
        return sum(1 for r in self.schedule if r)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_choice(chosen: dict[str, Any]) -> str:
    """'prune 0.1 (global) + low-rank 0.9 + merge 13 per block', or with 'merge [8, 8, 12, ...]
    (per-block schedule)', for a candidate's as_dict() (records written before per-block
    schedules or the low-rank axis lack 'per_block' / 'lowrank')."""
    lowrank = chosen.get("lowrank")
    lowrank_part = f" + low-rank {lowrank:g}" if lowrank is not None else ""
    if chosen.get("global_prune"):
        lowrank_part = " (global)" + lowrank_part
    if chosen.get("per_block"):
        merge_part = f"merge {chosen['schedule']} (per-block schedule)"
    else:
        merge_part = f"merge {chosen['merge']} per block"
    return f"prune {chosen['prune']:g}{lowrank_part} + {merge_part}"


def merge_grid(patches: int, depth: int, steps: int = MERGE_STEPS) -> list[int]:
    """0 .. about 1.5 x patches/depth tokens per block (the top values get clamped in the last
    blocks, so the token count falls to a handful): `steps` evenly spaced, distinct values."""
    top = max(1, math.ceil(1.5 * patches / depth))
    return sorted({round(top * k / (steps - 1)) for k in range(steps)})


class CandidateModels:
    """The candidates' models by Candidate.key. Each width variant (prune ratio, low-rank
    energy) is built once and kept; its merged copies are made again when asked for (a copy and
    a merge, quick next to pruning), so a grid of a hundred candidates holds a dozen models."""

    def __init__(self, input_size: tuple[int, int, int], metric: str) -> None:
        self.input_size, self.metric = input_size, metric
        self.bases: dict[Width, Any] = {}
        self.keys: set[Key] = set()

    def base(self, width: Width) -> Any:
        """The pruned (and factorized) model without merging."""
        return self.bases[width]

    def __contains__(self, key: Key) -> bool:
        return key in self.keys

    def __getitem__(self, key: Key) -> Any:
        from tvc.compress.merge import merge

        if key not in self.keys:
            raise KeyError(key)
        *width, r = key
        base = self.base(tuple(width))
        if not r:
            return base
        m = copy.deepcopy(base).eval()
        merge(m, [r], self.input_size, metric=self.metric)
        return m

    def clear(self) -> None:
        self.bases.clear()
        self.keys.clear()


def build_candidates(
    model: Any,
    input_size: tuple[int, int, int],
    prune: Callable[[Any, float, bool], None],
    prune_grid: tuple[float, ...] = PRUNE_GRID,
    merge_values: list[int] | None = None,
    metric: str = "keys",
    factorize: Callable[[Any, float], None] | None = None,
    lowrank_grid: tuple[float | None, ...] = LOWRANK_GRID,
    prune_modes: tuple[bool, ...] = (False,),
) -> tuple[list[Candidate], CandidateModels]:
    """Every (ratio, mode, energy, r) of the grid built on copies of `model` (no merging on
    it): `prune(copy, ratio, global_prune)` prunes in place, each ratio in every mode of
    `prune_modes` (False: every block loses the ratio; True: channels and heads ranked across
    blocks, so each block keeps what its importance earns), `factorize(copy, energy)`
    factorizes in place (None: no low-rank axis); merging compares `metric`. Returns the
    candidates and their models. Ratios the structure cannot take (a ConfigError from prune)
    are skipped, and so is a low-rank variant that factorizes nothing (its MACs are the
    unfactorized ones)."""
    from tvc.compress.merge import check_mergeable, merge, tokens_entering_blocks
    from tvc.compress.report import count_macs, count_macs_lowrank
    from tvc.models.merge import merge_blocks, prefix_tokens

    check_mergeable(model)
    depth = len(merge_blocks(model))
    seq = tokens_entering_blocks(model, input_size)
    prefix = prefix_tokens(model)
    values = merge_values if merge_values is not None else merge_grid(seq - prefix, depth)
    energies = lowrank_grid if factorize is not None else (None,)
    candidates, models = [], CandidateModels(input_size, metric)
    ways = [(ratio, mode) for ratio in prune_grid for mode in prune_modes
            if ratio > 0 or mode == prune_modes[0]]  # fmt: skip
    for ratio, mode in ways:
        pruned = copy.deepcopy(model).eval()
        if ratio > 0:
            try:
                prune(pruned, ratio, mode)
            except ConfigError as e:
                log.info("latency search: prune ratio %.2f skipped (%s)", ratio, e.problem)
                continue
        plain_macs = count_macs(pruned, input_size)
        for energy in energies:
            base = pruned if energy is None else copy.deepcopy(pruned).eval()
            if energy is not None:
                factorize(base, energy)
                if count_macs(base, input_size) >= plain_macs:
                    log.info("latency search: low-rank %.2f saves nothing at prune %.2f",
                             energy, ratio)  # fmt: skip
                    continue
            models.bases[(ratio, mode, energy)] = base
            for r in values:
                m = copy.deepcopy(base) if r else base
                schedule, tokens = [0] * depth, seq * depth
                if r:
                    rep = merge(m, [r], input_size, metric=metric)
                    schedule, tokens = rep["schedule"], sum(rep["tokens_in"])
                macs, lr_macs = count_macs_lowrank(m, input_size) if energy else (
                    count_macs(m, input_size), 0)  # fmt: skip
                c = Candidate(ratio, r, macs, tokens, schedule, lowrank=energy,
                              global_prune=mode, lowrank_macs=lr_macs)  # fmt: skip
                candidates.append(c)
                models.keys.add(c.key)
    return candidates, models


def frontier(candidates: list[Candidate], target_ms: float) -> list[Candidate]:
    """For each width variant (prune ratio, low-rank), the candidate with the least merging
    predicted to meet the target."""
    best: dict[Width, Candidate] = {}
    for c in candidates:
        if c.predicted_ms is None or c.predicted_ms > target_ms:
            continue
        if c.width not in best or c.merge < best[c.width].merge:
            best[c.width] = c
    return [best[w] for w in sorted(best, key=lambda w: (w[0], w[1], -(w[2] or 1.0)))]


def choose(
    candidates: list[Candidate],
    table: LatencyTable,
    target_ms: float,
    score: Callable[[Candidate], float],
) -> tuple[Candidate, list[Candidate]]:
    """Predict every candidate's latency, score the frontier that meets `target_ms` with
    `score` (higher is better: agreement with the parent), and return the best and the
    frontier. No candidate meeting the target is a ConfigError naming the fastest."""
    for c in candidates:
        c.predicted_ms = round(table.predict(c.macs, c.tokens, c.merging_blocks,
                                             c.lowrank_macs), 4)  # fmt: skip
    front = frontier(candidates, target_ms)
    if not front:
        fastest = min(candidates, key=lambda c: c.predicted_ms or math.inf)
        raise ConfigError(
            f"no candidate is predicted to run in {target_ms:g} ms: the fastest (prune "
            f"{fastest.prune:g}{_width_words(fastest)}, merge {fastest.merge}) is predicted at "
            f"{fastest.predicted_ms:.3g} ms on {table.backend} with {table.threads} thread(s)",
            f"raise --target-latency to at least {fastest.predicted_ms:.3g}",
        )
    for c in front:
        c.agreement = round(float(score(c)), 4)
        log.info("latency search: prune %.2f%s + merge %d: predicted %.3f ms, agreement "
                 "%.1f%%", c.prune, _width_words(c), c.merge, c.predicted_ms,
                 c.agreement * 100)  # fmt: skip
    best = max(front, key=lambda c: (c.agreement, c.predicted_ms))
    return best, front


def _width_words(c: Candidate) -> str:
    ranked = " (global)" if c.global_prune else ""
    return ranked + (f" + low-rank {c.lowrank:g}" if c.lowrank is not None else "")


def schedule_candidate(
    base: Any,
    prune: float,
    schedule: list[int],
    input_size: tuple[int, int, int],
    metric: str = "keys",
    lowrank: float | None = None,
    global_prune: bool = False,
) -> tuple[Candidate, Any]:
    """A merged copy of the (pruned, unmerged) `base` with a per-block `schedule`."""
    from tvc.compress.merge import merge
    from tvc.compress.report import count_macs_lowrank

    m = copy.deepcopy(base).eval()
    rep = merge(m, schedule, input_size, metric=metric)
    sched = rep["schedule"]
    macs, lr_macs = count_macs_lowrank(m, input_size)
    c = Candidate(prune, round(sum(sched) / len(sched)), macs, sum(rep["tokens_in"]), sched,
                  per_block=True, lowrank=lowrank, global_prune=global_prune,
                  lowrank_macs=lr_macs)  # fmt: skip
    return c, m


def refine_schedule(
    best: Candidate,
    base: Any,
    input_size: tuple[int, int, int],
    table: LatencyTable,
    target_ms: float,
    agreement: Callable[[Any], float],
    metric: str = "keys",
) -> tuple[Candidate | None, list[dict[str, Any]]]:
    """Spread `best`'s merging over the blocks where it costs least (a sensitivity pass).

    Each block alone merges the uniform schedule's largest r on `base` (best's pruned,
    unmerged model): what that loses in agreement is the block's price for r tokens. Then a
    greedy fill, a quarter of r at a time (at most 2r per block), adds merging where the price
    per predicted millisecond saved is lowest, until the table predicts the target.
    `agreement(model)` scores a model (higher is better). Returns the refined candidate if it
    scores better than `best` (else None) and the sensitivity rows."""
    depth = len(best.schedule)
    probe = max(best.schedule)
    same = {"lowrank": best.lowrank, "global_prune": best.global_prune}  # best's widths
    if probe <= 0:
        return None, []
    unmerged = agreement(base)
    rows = []
    for i in range(depth):
        alone = [probe if j == i else 0 for j in range(depth)]
        _, m = schedule_candidate(base, best.prune, alone, input_size, metric, **same)
        rows.append(
            {"block": i, "merge": probe, "lost": round(max(0.0, unmerged - agreement(m)), 4)}
        )

    def predicted(c: Candidate) -> float:
        c.predicted_ms = round(table.predict(c.macs, c.tokens, c.merging_blocks, c.lowrank_macs), 4)
        return c.predicted_ms

    unit = max(1, probe // 4)
    cand, m = schedule_candidate(base, best.prune, [0] * depth, input_size, metric, **same)
    while predicted(cand) > target_ms:
        options = []
        for i in range(depth):
            trial = cand.schedule.copy()
            trial[i] += unit
            if trial[i] > 2 * probe:
                continue
            c, cm = schedule_candidate(base, best.prune, trial, input_size, metric, **same)
            # ranked without the fixed cost of one more merging block, which the first unit
            # in any block pays and no later one does
            gain = cand.predicted_ms - table.predict(
                c.macs, c.tokens, cand.merging_blocks, c.lowrank_macs
            )
            if c.schedule != trial or gain <= 0:  # clamped (no tokens left there) or useless
                continue
            options.append((rows[i]["lost"] * unit / probe / gain, -gain, i, c, cm))
        if not options:
            return None, rows
        *_, cand, m = min(options, key=lambda o: o[:3])
    cand.agreement = round(float(agreement(m)), 4)
    log.info("latency search: per-block merge %s: predicted %.3f ms, agreement %.1f%% "
             "(uniform %d: %.1f%%)", cand.schedule, cand.predicted_ms, cand.agreement * 100,
             best.merge, (best.agreement or 0) * 100)  # fmt: skip
    return (cand if cand.agreement > (best.agreement or 0) else None), rows


def calibration_points(
    prune_grid: tuple[float, ...],
    merge_values: list[int],
    lowrank_grid: tuple[float | None, ...] = (None,),
) -> list[Key]:
    """The few (ratio, global, energy, r) configurations timed for real to fit a table: the
    corners
    and middles of the grid, and for each low-rank energy two more (factorized layers run
    two smaller GEMMs, whose cost per MAC the table must see)."""
    top_p = max(prune_grid)
    mid_p = prune_grid[len(prune_grid) // 2]
    top_r, mid_r = max(merge_values), merge_values[len(merge_values) // 2]
    points = [(0.0, False, None, 0), (top_p, False, None, 0), (0.0, False, None, mid_r),
              (0.0, False, None, top_r), (mid_p, False, None, mid_r),
              (top_p, False, None, top_r)]  # fmt: skip
    for energy in (e for e in lowrank_grid if e is not None):
        points += [(0.0, False, energy, 0), (mid_p, False, energy, mid_r)]
    return list(dict.fromkeys(points))
