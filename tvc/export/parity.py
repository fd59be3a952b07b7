"""Numerical proof that an exported model reproduces its source on the same inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tvc.errors import ParityError


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
