"""The report's table columns, in two tables that each fit a 1280-px page or a sheet of paper:
timing (latency, its interval, speed-up, noise) and model (size, compute, quality, resources).

Every cell is filled or says why not: an empty value becomes a dash whose reason shows as a
tooltip in HTML and in the table notes on paper and in Markdown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tvc.report.analysis import Row, backend_label, set_text
from tvc.report.fmt import fmt_count, fmt_ms

DASH = "–"


@dataclass
class Cell:
    text: str
    why: str = ""  # tooltip: why the cell is empty, or what stands behind the value
    mark: str = ""  # a footnote mark shown after the text ("*" for a noisy row)


Value = Callable[[Row], "str | Cell"]


@dataclass
class Column:
    title: str
    cell: Value
    numeric: bool = True
    why: str | Callable[[Row], str] = "not recorded"  # why an empty cell is empty

    def make(self, row: Row) -> Cell:
        value = self.cell(row)
        cell = value if isinstance(value, Cell) else Cell(value)
        if not cell.text:
            why = self.why(row) if callable(self.why) else self.why
            return Cell(DASH, cell.why or why)
        return cell


def _ips(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _variant(r: Row) -> str:
    return r.rec.variant + (" (baseline)" if r.is_baseline else "")


def _speedup(r: Row) -> Cell:
    if r.is_baseline:
        return Cell("1.00x", "the baseline")
    if r.speedup is None:
        return Cell("")
    if r.overlaps:
        return Cell("≈1x", f"no measurable difference from #{r.base_n}: the intervals overlap "
                    f"(point estimate {r.speedup:.2f}x)")  # fmt: skip
    return Cell(f"{r.speedup:.2f}x", f"baseline #{r.base_n} p50 / this p50")


def _speedup_ci(r: Row) -> Cell:
    if r.is_baseline:
        return Cell("", "the baseline")
    if r.speedup_ci is None:
        why = "no baseline to compare with" if r.speedup is None else "no interval recorded"
        return Cell("", why)
    lo, hi = r.speedup_ci
    return Cell(f"{lo:.2f}-{hi:.2f}x", f"from the 95% intervals of this median and #{r.base_n}'s")


def _noise(r: Row) -> Cell:
    c = r.rec.conditions
    if c is None:
        return Cell("", "not recorded: the record predates noise checks")
    if r.noisy:
        return Cell("noisy", "; ".join(r.noisy), mark="*")
    load = f"load {c.load_during:.1f} on {c.cpu_count} CPUs" if c.load_during is not None else ""
    return Cell("ok", ", ".join(x for x in (load, f"{c.rounds} rounds") if x))


def _metric(name: str) -> Value:
    """Cells of one quality metric ("top-1" or "mAP"): empty where a row has another or none."""

    def cell(row: Row) -> Cell:
        q = row.rec.quality
        if q is None:
            return Cell("", "benched without --data")
        if q.name != name:
            return Cell("", f"measured in {q.name}")
        return Cell(f"{q.value:.2f}", f"{q.data[0]} {q.data[1]}, n={q.data[2]:,}")

    return cell


def _metric_change(name: str) -> Value:
    def cell(row: Row) -> Cell:
        q = row.rec.quality
        if q is None or q.name != name:
            return Cell("", "no such metric for this row")
        if row.d_quality is None:
            return Cell("", f"the baseline has no {name} on the same evaluation set")
        return Cell(f"{row.d_quality:+.2f}")

    return cell


def _agreement(r: Row) -> str:
    agree = r.rec.accuracy.agreement if r.rec.accuracy else None
    return "" if agree is None else f"{agree:.1f}"


_NO_DECODER = "no decoder graph beside this model (generation is timed for exported Image GPTs)"


def _generation(fmt: str) -> Value:
    """Image completion with the KV-cache decoder: a cell of records.Generation."""

    def cell(r: Row) -> Cell:
        g = r.rec.generation
        if g is None:
            return Cell("")
        why = (f"{g.tokens} tokens per image at batch 1 with {g.decoder}; {g.speedup:.1f}x "
               f"faster than re-running the full graph per token")  # fmt: skip
        return Cell(fmt.format(g), why)

    return cell


def _millijoules(r: Row) -> str:
    return f"{r.rec.energy.joules_per_inference * 1e3:.2f}" if r.rec.energy else ""


def _macs(r: Row) -> Cell:
    if r.rec.model.macs:
        return Cell(fmt_count(r.rec.model.macs))
    return Cell("", "not counted: only compressed artifacts record MACs")


def _p50(r: Row) -> Cell:
    return Cell(fmt_ms(r.rec.latency_ms.p50), mark="*" if r.noisy else "")


def _ci(r: Row) -> Cell:
    lat = r.rec.latency_ms
    return Cell(lat.ci_text(), "" if lat.has_ci else "not recorded: the record predates intervals")


NUMBER = Column("#", lambda r: str(r.n))
VARIANT = Column("Variant", _variant, False)

TIMING = [
    NUMBER,
    VARIANT,
    Column("Precision", lambda r: r.rec.precision, False),
    Column("Backend", lambda r: backend_label(r.rec), False),
    Column("Batch", lambda r: str(r.rec.batch)),
    Column("p50 ms", _p50),
    Column("95% CI ms", _ci),
    Column("p90 ms", lambda r: fmt_ms(r.rec.latency_ms.p90)),
    Column("p99 ms", lambda r: fmt_ms(r.rec.latency_ms.p99)),
    Column("img/s", lambda r: _ips(r.rec.throughput_ips)),
    Column("Speed-up", _speedup, why="no baseline on this board at this batch"),
    Column("Speed-up 95% CI", _speedup_ci),
    Column("Noise", _noise, False),
]

MODEL = [
    NUMBER,
    VARIANT,
    Column("Size MB", lambda r: f"{r.rec.size_bytes / 1e6:.2f}" if r.rec.size_bytes else ""),
    Column(
        "Smaller",
        lambda r: f"{r.size_ratio:.2f}x" if r.size_ratio else "",
        why="no size for this row or the baseline",
    ),
    Column("Params", lambda r: fmt_count(r.rec.model.params)),
    Column("MACs", _macs),
    Column("Top-1 %", _metric("top-1")),
    Column("Δ top-1", _metric_change("top-1")),
    Column("Agree %", _agreement, why="no reference model to agree with"),
    Column("mAP", _metric("mAP")),
    Column("AP50", lambda r: f"{r.rec.detection.ap50:.2f}" if r.rec.detection else ""),
    Column("Δ mAP", _metric_change("mAP")),
    Column("TuSimple %", _metric("TuSimple acc")),
    Column("F1 %", lambda r: f"{r.rec.lanes.f1:.2f}" if r.rec.lanes else ""),
    Column("Δ TuSimple", _metric_change("TuSimple acc")),
    Column("Bits/dim", lambda r: f"{r.rec.pixels.bpd:.3f}" if r.rec.pixels else ""),
    Column("Probe %", _metric("probe")),
    Column("Fine-tuned %", _metric("fine-tuned top-1")),
    Column("Gen tok/s", _generation("{0.tokens_per_s:,.0f}"), why=_NO_DECODER),
    Column("ms/image", _generation("{0.ms_per_image:.1f}"), why=_NO_DECODER),
    Column("Peak RSS MB", lambda r: f"{r.rec.peak_rss_mb:.0f}" if r.rec.peak_rss_mb else ""),
    Column(
        "Power W",
        lambda r: f"{r.rec.energy.avg_power_w:.2f}" if r.rec.energy else "",
        why="no power sensor on this board",
    ),
    Column("mJ/img", _millijoules, why="no power sensor on this board"),
]

TABLES = [("Timing", TIMING), ("Model, quality and resources", MODEL)]


def table(
    rows: list[Row], columns: list[Column] | None = None
) -> tuple[list[Column], list[list[Cell]]]:
    """The columns that have a value in some row, and their cells (filled, or a dash and why)."""
    columns = TIMING + MODEL[2:] if columns is None else columns
    cells = [[c.make(r) for c in columns] for r in rows]
    keep = [i for i, _ in enumerate(columns) if any(row[i].text != DASH for row in cells)]
    return [columns[i] for i in keep], [[row[i] for i in keep] for row in cells]


def footnotes(rows: list[Row]) -> list[str]:
    """The reasons behind marked cells, for paper and Markdown where tooltips do not show."""
    return [f"* #{r.n} is noisy: {'; '.join(r.noisy)}" for r in rows if r.noisy]


QUALITY_TITLES = {"top-1": "Top-1 %", "mAP": "mAP"}


def set_notes(rows: list[Row]) -> list[str]:
    """The evaluation set beside the quality columns: 'Top-1 % on fashion-mnist test, n=2,000'."""
    out = []
    for metric, title in QUALITY_TITLES.items():
        sets = list(dict.fromkeys(r.rec.quality.data for r in rows
                                  if r.rec.quality and r.rec.quality.name == metric))  # fmt: skip
        if len(sets) == 1:
            out.append(f"{title} on {set_text(sets[0])}")
        elif sets:
            each = "; ".join(
                f"#{r.n}: {set_text(r.rec.quality.data)}"
                for r in rows
                if r.rec.quality and r.rec.quality.name == metric
            )
            out.append(f"{title} on different evaluation sets, compared only within one: {each}")
    return out
