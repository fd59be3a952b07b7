"""Speed-ups with their interval, and the lines `tvc bench` prints about each measurement.

A ratio of two medians is only as sure as the medians: from their 95% intervals the speed-up of
B over A lies between A.ci_low / B.ci_high and A.ci_high / B.ci_low. When the two intervals
overlap (the ratio's interval holds 1), the measurement cannot tell the two apart, and tvc says
"no measurable difference" instead of printing a ratio that only reflects noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tvc.records import BenchRecord, Latency


@dataclass(frozen=True)
class Speedup:
    """How many times faster `other` is than `base` (p50 / p50), with its interval."""

    ratio: float
    low: float | None  # None when a record has no interval of its median
    high: float | None

    @property
    def measurable(self) -> bool:
        """The intervals do not overlap (without intervals: never claimed)."""
        return self.low is not None and self.high is not None and (self.low > 1 or self.high < 1)

    def text(self) -> str:
        """'3.06x faster (2.95-3.18x)', '1.97x slower (...)' or 'no measurable difference'."""
        span = f" (95% interval {self.low:.2f}-{self.high:.2f}x)" if self.low is not None else ""
        if not self.measurable:
            return f"no measurable difference: {self.ratio:.2f}x{span}"
        if self.ratio >= 1:
            return f"{self.ratio:.2f}x faster{span}"
        slow = f" (95% interval {1 / self.high:.2f}-{1 / self.low:.2f}x)" if span else ""
        return f"{1 / self.ratio:.2f}x slower{slow}"


def speedup(base: Latency, other: Latency) -> Speedup:
    """Speed-up of `other` over `base` from their medians and the medians' 95% intervals."""
    ratio = base.p50 / other.p50 if other.p50 > 0 else float("inf")
    if not (base.has_ci and other.has_ci) or other.ci_low <= 0 or other.ci_high <= 0:
        return Speedup(ratio, None, None)
    return Speedup(ratio, base.ci_low / other.ci_high, base.ci_high / other.ci_low)


def _where(r: BenchRecord) -> str:
    backend = r.provider if r.backend == "ort" else r.backend
    return f"{backend}, {r.threads or 'all'} thread(s), batch {r.batch}"


def latency_line(r: BenchRecord) -> str:
    """'student int8-qdq (ort, batch 1): p50 0.97 ms (95% CI 0.95-0.99), p90 1.02, p99 1.30 ms'"""
    lat = r.latency_ms
    ci = f" (95% CI {lat.ci_low:.3g}-{lat.ci_high:.3g})" if lat.has_ci else ""
    flag = "  [noisy]" if r.conditions is not None and r.conditions.noisy else ""
    return (
        f"{r.variant} ({_where(r)}): p50 {lat.p50:.3g} ms{ci}, p90 {lat.p90:.3g}, "
        f"p99 {lat.p99:.3g} ms{flag}"
    )


def speedup_lines(records: Sequence[BenchRecord]) -> list[str]:
    """Every variant against the first one benched on the same backend, threads and batch:
    ratio with its interval, or 'no measurable difference' where the intervals overlap."""
    groups: dict[tuple, list[BenchRecord]] = {}
    for r in records:
        groups.setdefault((r.backend, r.provider, r.threads, r.batch), []).append(r)
    lines = []
    for group in groups.values():
        base = group[0]
        for r in group[1:]:
            s = speedup(base.latency_ms, r.latency_ms)
            lines.append(f"{r.variant} vs {base.variant} ({_where(r)}): {s.text()}")
    return lines


def quality_sets(records: Sequence[BenchRecord]) -> list[str]:
    """'top-1 on fashion-mnist test, 10000 images' once per evaluation set the records used."""
    seen: dict[str, None] = {}
    for r in records:
        for name, q in (("top-1", r.accuracy), ("mAP", r.detection), ("TuSimple", r.lanes)):
            if q is not None:
                seen[f"{name} on {q.dataset} {q.split}, {q.n} samples"] = None
    return list(seen)


def summary_lines(records: Sequence[BenchRecord]) -> list[str]:
    """What `tvc bench` prints below its table: each record's p50 with its interval and its
    tail, the evaluation set(s), and with several variants the speed-ups."""
    lines = [latency_line(r) for r in records]
    lines += [f"quality measured on the same set for every variant: {q}" for q in
              quality_sets(records)]  # fmt: skip
    if len(records) > 1:
        lines += speedup_lines(records)
    return lines
