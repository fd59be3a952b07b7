"""Report plots as PNG bytes: latency vs accuracy (top-1, or COCO mAP for detectors; Pareto
front), size per variant, latency per board. matplotlib (the `report` extra) is optional: without
it the report says so and has tables only. Figures are drawn on matplotlib's Agg canvas directly,
so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvc.deps import require
from tvc.errors import MissingDependencyError
from tvc.report.fmt import times

if TYPE_CHECKING:
    from tvc.report.render import Analysis, Row

DPI = 110
WIDTH_IN = 7.2
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Plot:
    name: str  # file stem for Markdown reports
    title: str
    caption: str
    png: bytes
    width: int  # pixels
    height: int


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher),
    ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def make_plots(analysis: Analysis) -> tuple[list[Plot], list[str]]:
    """The plots that the records support, and notes on the ones left out."""
    try:
        require("matplotlib", "report plots")
    except MissingDependencyError as exc:
        return [], [f"Plots left out: {exc.message}."]
    plots, notes = [], []
    for make in (_latency_vs_accuracy, _size_per_variant, _latency_per_board):
        plot, note = make(analysis)
        if plot:
            plots.append(plot)
        if note:
            notes.append(note)
    return plots, notes


def _figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, name: str, title: str, caption: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    png = buf.getvalue()
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # PNG header
    return Plot(name, title, caption, png, w, h)


def _smallest_batch_rows(analysis: Analysis, board: str) -> list[Row]:
    rows = [r for r in analysis.rows if r.rec.board == board]
    batch = min(r.rec.batch for r in rows)
    return [r for r in rows if r.rec.batch == batch]


def _point_label(row: Row, analysis: Analysis) -> str:
    backends = {r.rec.backend for r in analysis.rows}
    return row.rec.variant + (f" ({row.rec.backend})" if len(backends) > 1 else "")


def _latency_vs_accuracy(analysis: Analysis) -> tuple[Plot | None, str | None]:
    rated = [r for r in analysis.rows if r.rec.quality]
    if not rated:
        return None, (
            "Latency vs accuracy left out: no record has accuracy or mAP (bench with --data)."
        )
    # one metric per axis: the baseline's (top-1 or mAP), else the first one measured
    metric = next((r for r in rated if r.is_baseline), rated[0]).rec.quality
    others = sum(r.rec.quality.name != metric.name for r in rated)
    note = (
        f"Latency vs accuracy shows {metric.name} only: {others} record(s) with another metric "
        "are in the tables."
        if others
        else None
    )
    fig = _figure(4.6)
    ax = fig.add_subplot()
    all_x = []
    for k, board in enumerate(analysis.boards):
        rows = [
            r
            for r in _smallest_batch_rows(analysis, board)
            if r.rec.quality and r.rec.quality.name == metric.name
        ]
        if not rows:
            continue
        color = COLORS[k % len(COLORS)]
        pts = [(r.rec.latency_ms.p50, r.rec.quality.value) for r in rows]
        all_x += [p[0] for p in pts]
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        batch = rows[0].rec.batch
        ax.plot(fx, fy, "-", drawstyle="steps-post", color=color, alpha=0.5, linewidth=1.5)
        for i, (r, (x, y)) in enumerate(zip(rows, pts, strict=True)):
            ax.scatter(
                [x],
                [y],
                color=color,
                s=70 if i in front else 30,
                marker="*" if r.is_baseline else "o",
                edgecolors="black" if i in front else "none",
                linewidths=0.7,
                zorder=3,
                label=f"{board} (batch {batch})" if i == 0 else None,
            )
            ax.annotate(
                _point_label(r, analysis),
                (x, y),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
    if all_x and max(all_x) / max(min(all_x), 1e-9) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.set_ylabel(metric.axis)
    ax.set_title("Latency vs accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    caption = (
        "Each point is a variant; outlined points form the Pareto front (no other variant is "
        "both faster and more accurate); the star is the baseline."
    )
    return _png(fig, "latency_vs_accuracy", "Latency vs accuracy", caption), note


def _size_per_variant(analysis: Analysis) -> tuple[Plot | None, str | None]:
    sizes: dict[str, float] = {}
    for r in analysis.rows:
        if r.rec.size_bytes and r.rec.variant not in sizes:
            sizes[r.rec.variant] = r.rec.size_bytes / 1e6
    if not sizes:
        return None, "Size per variant left out: no record has a size."
    base = sizes.get(analysis.baseline)
    names = list(sizes)
    fig = _figure(1.0 + 0.38 * len(names))
    ax = fig.add_subplot()
    ax.barh(
        range(len(names)),
        [sizes[n] for n in names],
        color=["#c9a227" if n == analysis.baseline else COLORS[0] for n in names],
    )
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    for i, n in enumerate(names):
        ratio = (
            f"  ({times(base / sizes[n], 'smaller', 'larger')})"
            if base and n != analysis.baseline
            else ""
        )
        ax.annotate(f" {sizes[n]:.2f} MB{ratio}", (sizes[n], i), va="center", fontsize=7)
    ax.set_xlim(0, max(sizes.values()) * 1.45)
    ax.set_xlabel("size on disk (MB)")
    ax.set_title("Size per variant")
    ax.grid(True, axis="x", alpha=0.3)
    caption = f"Model file size; the baseline ({analysis.baseline}) is drawn in gold."
    return _png(fig, "size_per_variant", "Size per variant", caption), None


def _latency_per_board(analysis: Analysis) -> tuple[Plot | None, str | None]:
    # one bar group per variant, one bar per board: the fastest backend there
    best: dict[tuple[str, str], Row] = {}
    legends = {}
    for board in analysis.boards:
        rows = _smallest_batch_rows(analysis, board)
        legends[board] = f"{board} (batch {rows[0].rec.batch})"
        for r in rows:
            key = (r.rec.variant, board)
            if key not in best or r.rec.latency_ms.p50 < best[key].rec.latency_ms.p50:
                best[key] = r
    several_backends = len({r.rec.backend for r in analysis.rows}) > 1
    variants = analysis.variants
    nb = len(analysis.boards)
    bar = 0.8 / nb
    fig = _figure(1.0 + len(variants) * max(0.38, 0.22 * nb) + (0.2 * nb if nb > 1 else 0))
    ax = fig.add_subplot()
    for k, board in enumerate(analysis.boards):
        ys = [i + (k - (nb - 1) / 2) * bar for i in range(len(variants))]
        rows = [best.get((v, board)) for v in variants]
        xs = [r.rec.latency_ms.p50 if r else 0.0 for r in rows]
        ax.barh(ys, xs, height=bar * 0.9, color=COLORS[k % len(COLORS)], label=legends[board])
        for y, x, r in zip(ys, xs, rows, strict=True):
            if r:
                note = f" ({r.rec.backend})" if several_backends else ""
                ax.annotate(f" {x:.3g} ms{note}", (x, y), va="center", fontsize=7)
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(r.rec.latency_ms.p50 for r in best.values()) * 1.3)
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.grid(True, axis="x", alpha=0.3)
    if nb > 1:
        ax.set_title("Latency per board")
        fig.legend(fontsize=7, loc="outside lower center")
    else:
        ax.set_title(f"Latency on {legends[analysis.boards[0]]}")
    caption = (
        "Median latency of one inference call at each board's smallest batch size "
        "(the fastest backend measured there)."
    )
    return _png(fig, "latency_per_board", "Latency per board", caption), None
