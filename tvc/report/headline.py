"""The one headline of a run, computed once: the report, `tvc report` and `tvc demo` print it.

The headline compares the variant that would ship (by default the most derived one: the last in
lineage order, e.g. the INT8 student) with the baseline, on the baseline's first board at its
smallest batch and on the baseline's backend. The speed-up comes with its 95% interval; a
speed-up whose interval contains 1 (the two medians' intervals overlap) is not claimed. Quality
is compared only on the same evaluation set, whose name and size are given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tvc.records import BenchRecord
from tvc.report.analysis import Analysis, Row, analyse, backend_label, set_text
from tvc.report.fmt import fmt_ms, times

NO_DIFFERENCE = "no measurable difference"


@dataclass(frozen=True)
class Headline:
    """One comparison in numbers and the sentence that says it."""

    variant: str
    baseline: str
    board: str
    backend: str
    batch: int
    speedup: float  # baseline p50 / variant p50
    speedup_ci: tuple[float, float] | None
    verdict: str  # "faster" | "slower" | NO_DIFFERENCE
    text: str
    caveats: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


def _speed(row: Row, base: BenchRecord) -> tuple[str, str]:
    """(verdict, words) for the speed-up of `row` over `base`."""
    v, b = row.rec.latency_ms, base.latency_ms
    p50s = f"p50 {fmt_ms(v.p50)} ms vs {fmt_ms(b.p50)} ms"
    if row.overlaps:
        return NO_DIFFERENCE, (
            f"{NO_DIFFERENCE} in latency (intervals overlap: {p50s}, 95% intervals "
            f"{v.ci_text()} vs {b.ci_text()} ms)"
        )
    verdict = "faster" if row.speedup >= 1 else "slower"
    if row.speedup_ci is None:
        return verdict, f"{times(row.speedup, 'faster', 'slower')} ({p50s}; no interval recorded)"
    lo, hi = row.speedup_ci if row.speedup >= 1 else (1 / row.speedup_ci[1], 1 / row.speedup_ci[0])
    return verdict, (
        f"{times(row.speedup, 'faster', 'slower')} (95% interval {lo:.2f}-{hi:.2f}x; {p50s})"
    )


def _quality(row: Row, base_rows: list[Row]) -> str | None:
    q = row.rec.quality
    if q is None:
        return None
    bases = [r.rec.quality for r in base_rows if r.rec.quality and r.rec.quality.name == q.name]
    same = [b for b in bases if b.data == q.data]
    if row.d_quality is not None and same:
        return (
            f"{q.name} {row.d_quality:+.2f} pts ({q.text()} vs {same[0].text()} on "
            f"{set_text(q.data)})"
        )
    if bases:
        return (
            f"{q.name} not compared: evaluated on different sets ({set_text(q.data)} vs the "
            f"baseline's {set_text(bases[0].data)})"
        )
    return None


def _caveats(row: Row, base: Row) -> list[str]:
    out = []
    for who, r in (("the variant", row), ("the baseline", base)):
        if r.noisy:
            out.append(f"{who}'s timing (#{r.n}) is noisy: {'; '.join(r.noisy)}")
    if row.together is False:
        out.append("the two were timed in separate runs, not interleaved")
    return out


def headline(analysis: Analysis, variant: str | None = None) -> Headline | None:
    """The run's headline: `variant` (default: the most derived one) against the baseline."""
    first = next(r for r in analysis.rows if r.is_baseline)
    board = first.rec.board
    batch = min(r.rec.batch for r in analysis.rows if r.is_baseline and r.rec.board == board)
    rows = [
        r
        for r in analysis.rows
        if r.rec.board == board
        and r.rec.batch == batch
        and r.rec.variant != analysis.baseline
        and r.speedup
        and r.rec.backend == first.rec.backend
        and variant in (None, r.rec.variant)
    ]
    if not rows:
        return None
    last = max(analysis.variants.index(r.rec.variant) for r in rows)
    row = next(r for r in rows if analysis.variants.index(r.rec.variant) == last)
    base = analysis.row(row.base_n)
    verdict, speed = _speed(row, base.rec)
    parts = [
        f"{row.rec.variant} vs {analysis.baseline} on {board} "
        f"({backend_label(row.rec)}, batch {batch}): {speed}"
    ]
    if row.size_ratio:
        parts.append(times(row.size_ratio, "smaller", "larger"))
    quality = _quality(row, [r for r in analysis.rows if r.is_baseline])
    if quality:
        parts.append(quality)
    caveats = _caveats(row, base)
    text = "; ".join([", ".join(parts), *(f"caution: {c}" for c in caveats)])
    return Headline(
        variant=row.rec.variant,
        baseline=analysis.baseline,
        board=board,
        backend=backend_label(row.rec),
        batch=batch,
        speedup=row.speedup,
        speedup_ci=row.speedup_ci,
        verdict=verdict,
        text=text,
        caveats=caveats,
    )


def headline_text(analysis: Analysis, variant: str | None = None) -> str | None:
    h = headline(analysis, variant)
    return h.text if h else None


def run_headline(records: list[BenchRecord], baseline: str | None = None) -> Headline | None:
    """The headline of a run's records, as its report states it (for `tvc demo`)."""
    return headline(analyse(records, baseline))
