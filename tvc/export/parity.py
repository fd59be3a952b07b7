"""Numerical proof that an exported model reproduces its source on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import ParityError

if TYPE_CHECKING:
    from tvc.models.info import ModelInfo
    from tvc.tasks import Task
    from tvc.tasks.base import Outputs


@dataclass
class Parity:
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float  # fraction of samples whose argmax matches
    n: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare(reference: np.ndarray, candidate: np.ndarray, *, atol: float, rtol: float) -> Parity:
    """Compare two logit arrays of shape (N, ...); tolerance = atol + rtol * max|reference|."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ParityError(
            f"output shapes differ: reference {ref.shape} vs exported {cand.shape}",
            "the export changed the model's output; report this as a bug",
        )
    diff = np.abs(ref - cand)
    flat_ref = ref.reshape(ref.shape[0], -1)
    flat_cand = cand.reshape(cand.shape[0], -1)
    agree = float(np.mean(flat_ref.argmax(1) == flat_cand.argmax(1))) if ref.size else 1.0
    tol = atol + rtol * float(np.abs(ref).max() if ref.size else 0.0)
    return Parity(
        max_abs_diff=float(diff.max() if diff.size else 0.0),
        mean_abs_diff=float(diff.mean() if diff.size else 0.0),
        top1_agreement=agree,
        n=int(ref.shape[0]),
        tolerance=tol,
    )


def require_parity(p: Parity, what: str) -> None:
    if not p.ok:
        raise ParityError(
            f"{what} does not match its source: max abs diff {p.max_abs_diff:.3g} > tolerance "
            f"{p.tolerance:.3g} (top-1 agreement {p.top1_agreement:.1%})",
            "try another --opset or --no-simplify; if it persists, report the model",
        )


def outputs_parity(
    task: Task,
    reference: list[Outputs],
    got: list[Outputs],
    *,
    atol: float,
    rtol: float,
    info: ModelInfo | None = None,
) -> dict[str, Any]:
    """Parity of every named output over several batches: the task's agreement (top-1, class
    agreement, ...) plus each output's worst difference against its tolerance. `ok` only when
    every output is within its tolerance."""
    ref = {k: np.concatenate([r[k] for r in reference]) for k in reference[0]}
    out = {k: np.concatenate([g[k] for g in got]) for k in ref}
    per = {k: compare(ref[k], out[k], atol=atol, rtol=rtol) for k in ref}
    record = dict(task.agreement(ref, out, info=info))
    if len(per) > 1:
        record.update({f"{k}_max_abs_diff": p.max_abs_diff for k, p in per.items()})
    record["max_abs_diff"] = max(p.max_abs_diff for p in per.values())
    if len(per) == 1:
        record["tolerance"] = next(iter(per.values())).tolerance
    else:
        record["tolerance"] = {k: p.tolerance for k, p in per.items()}
    record["ok"] = all(p.ok for p in per.values())
    return record


def require_outputs_parity(record: dict[str, Any], what: str, fix: str) -> None:
    """A parity record (outputs_parity) that is not ok is a ParityError naming the worst gap."""
    if record["ok"]:
        return
    tol = record["tolerance"]
    shown = (
        f"{tol:.3g}"
        if isinstance(tol, float)
        else ", ".join(f"{k} {v:.3g}" for k, v in tol.items())
    )
    raise ParityError(
        f"{what} does not match PyTorch: max abs diff {record['max_abs_diff']:.3g} > tolerance "
        f"{shown} (agreement {record['agreement']:.1%})",
        fix,
    )
