"""A latency table: what a model's compressed variants cost on one machine and backend.

`tvc compress MODEL --target-latency MS` needs to predict the latency of many candidate
compressions (width pruning x token merging) without exporting and timing each. A few
configurations are measured for real (ONNX Runtime, batch 1, the given thread count) and latency
is fitted as a non-negative linear function of what shrinks:

    ms = ms_fixed + ms_per_gmac * GMACs + ms_per_ktoken * (tokens summed over blocks) / 1000
         + ms_per_merging_block * (blocks that merge tokens)
         + ms_per_lowrank_gmac * (GMACs inside factorized layers)

MACs carry the width (pruning) and sequence (merging) cost of the matrix products; the token sum
carries the per-token work that MACs miss (norms, softmax, copies); the last term is the fixed
cost of the matching itself (about 37 more ONNX nodes per merging block); the last, what a
factorized layer's two thin GEMMs cost beyond their MACs (tables written before it predict
factorized candidates as plain ones, so the search leaves low-rank out with them). The table is
a JSON file a
user can carry: measured on a board, then read with `--latency-table FILE` on a workstation.
This module is torch-free: reading, checking, fitting and predicting need numpy only.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tvc.errors import ConfigError, StorageError
from tvc.safe_io import write_text_atomic

KIND = "tvc-latency-table"
FEATURES = ("ms_fixed", "ms_per_gmac", "ms_per_ktoken", "ms_per_merging_block",
            "ms_per_lowrank_gmac")  # fmt: skip
LOWRANK_FEATURE = FEATURES[-1]
FIX = "measure a new one: tvc compress MODEL --target-latency MS --latency-table NEW.json"


class Measured(BaseModel):
    """One configuration timed for real."""

    model_config = ConfigDict(extra="forbid")
    prune: float = Field(ge=0, lt=1)
    merge: list[int]
    lowrank: float | None = Field(default=None, gt=0, le=1)  # spectral energy kept, if any
    macs: int = Field(gt=0)
    lowrank_macs: int = Field(default=0, ge=0)  # of `macs`, those inside factorized layers
    tokens: int = Field(gt=0)  # tokens entering each block, summed over blocks
    ms: float = Field(gt=0)


class LatencyTable(BaseModel):
    """Measurements and the fitted coefficients for one model on one backend."""

    model_config = ConfigDict(extra="forbid")
    kind: str = KIND
    version: int = 1
    arch: str
    input_size: list[int]
    backend: str
    threads: int = Field(ge=1)
    # cpu: CPU time of the calling thread per call (1 ORT thread: latency without preemption by
    # other work); wall: wall-clock p50
    clock: Literal["cpu", "wall"] = "wall"
    measured: list[Measured] = Field(min_length=2)
    coefficients: dict[str, float]
    fit_max_rel_error: float
    environment: dict[str, Any] = Field(default_factory=dict)

    def predict(
        self, macs: int, tokens: int, merging_blocks: int = 0, lowrank_macs: int = 0
    ) -> float:
        """Predicted latency in ms of a variant with these MACs, summed block tokens, number
        of blocks that merge tokens and MACs inside factorized layers."""
        x = _features(macs, tokens, merging_blocks, lowrank_macs)
        return float(
            sum(self.coefficients.get(k, 0.0) * v for k, v in zip(FEATURES, x, strict=True))
        )

    @property
    def knows_lowrank(self) -> bool:
        """Whether the table was fitted with factorized layers' own cost (newer tables)."""
        return LOWRANK_FEATURE in self.coefficients

    def check_fits(self, arch: str, input_size: list[int] | tuple[int, ...]) -> None:
        """A table describes one architecture at one input size: refuse another."""
        if self.arch != arch or list(self.input_size) != list(input_size):
            raise ConfigError(
                f"the latency table was measured for {self.arch} at {self.input_size}, not "
                f"{arch} at {list(input_size)}",
                "pass a table measured for this model, or leave --latency-table out to measure one",
            )


def _features(macs: int, tokens: int, merging_blocks: int, lowrank_macs: int = 0) -> list[float]:
    return [1.0, macs / 1e9, tokens / 1e3, float(merging_blocks), lowrank_macs / 1e9]


def fit(measured: list[Measured]) -> tuple[dict[str, float], float]:
    """Non-negative least squares over the features (exhaustive over which are used: five
    features, 31 subsets); returns the coefficients and the worst relative error."""
    if len(measured) < 2:
        raise ConfigError("a latency table needs at least two measured configurations", FIX)
    a = np.array([_features(m.macs, m.tokens, sum(1 for r in m.merge if r), m.lowrank_macs)
                  for m in measured])  # fmt: skip
    y = np.array([m.ms for m in measured])
    best: tuple[float, np.ndarray] | None = None
    n = len(FEATURES)
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            coef_sub, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if (coef_sub < 0).any():
                continue
            coef = np.zeros(n)
            coef[list(cols)] = coef_sub
            err = float(np.sum((a @ coef - y) ** 2))
            if best is None or err < best[0] - 1e-12:
                best = (err, coef)
    if best is None:  # cannot happen with positive latencies (a constant always fits)
        raise ConfigError("the latency measurements admit no non-negative fit", FIX)
    coef = best[1]
    worst = float(np.max(np.abs(a @ coef - y) / y))
    return {name: float(v) for name, v in zip(FEATURES, coef, strict=True)}, worst


def make_table(arch: str, input_size, backend: str, threads: int, measured: list[Measured],
               environment: dict[str, Any] | None = None,
               clock: str = "wall") -> LatencyTable:  # fmt: skip
    coefficients, worst = fit(measured)
    return LatencyTable(arch=arch, input_size=list(input_size), backend=backend, threads=threads,
                        clock=clock,
                        measured=measured, coefficients=coefficients,
                        fit_max_rel_error=round(worst, 4),
                        environment=environment or {})  # fmt: skip


def save_table(table: LatencyTable, path: str | Path, *, force: bool = False) -> Path:
    """Write the table atomically; an existing file is replaced only with force."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists", "pass --force to replace it, or another path")
    try:
        write_text_atomic(path, table.model_dump_json(indent=2) + "\n")
    except OSError as e:
        raise StorageError(f"cannot write the latency table {path}: {e.strerror or e}",
                           "choose a writable place") from None  # fmt: skip
    return path


def load_table(path: str | Path) -> LatencyTable:
    """Read and check a table file: anything else is a one-line ConfigError."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"latency table {path} does not exist", FIX) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"latency table {path} is not readable JSON ({e})", FIX) from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise ConfigError(f"{path} is not a tvc latency table (no kind '{KIND}')", FIX)
    try:
        table = LatencyTable.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"latency table {path}: {where}: {first['msg']}", FIX) from None
    older = set(FEATURES) - {LOWRANK_FEATURE}  # tables written before factorized layers' cost
    if set(table.coefficients) not in (set(FEATURES), older) or not all(
        np.isfinite(v) and v >= 0 for v in table.coefficients.values()
    ):
        raise ConfigError(
            f"latency table {path} has bad coefficients (need finite, non-negative "
            f"{', '.join(FEATURES)})",
            FIX,
        )
    return table
