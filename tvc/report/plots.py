"""Report plots: latency vs accuracy (top-1, or COCO mAP for detectors; Pareto front), size per
variant, latency per board. PNG for Markdown, SVG (text kept as text) inline in HTML, so the
page prints sharply and a browser can check that no label is clipped.

Plots are built to read well: points are named in a legend below the axes, never by labels that
could clip or overlap; bar labels get room computed from their rendered size; the quality axis
spans at least MIN_SPAN points, so noise of a few hundredths does not fill the height; latency
axes start at zero; medians carry their 95% interval as error bars; and the baseline is marked
the same way everywhere (gold, labelled "(baseline)"). matplotlib (the `report` extra) is
optional: without it the report says so and has tables only. Figures are drawn on matplotlib's
Agg canvas directly, so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvc.deps import require
from tvc.errors import MissingDependencyError
from tvc.report.fmt import times

if TYPE_CHECKING:
    from tvc.report.analysis import Analysis, Row

DPI = 110
WIDTH_IN = 7.2
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
BASELINE = "#c9a227"  # the baseline's colour in every plot
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]
MIN_SPAN = 2.0  # points of top-1 / mAP: the quality axis never spans less


@dataclass
class Plot:
    name: str  # file stem for Markdown reports
    title: str
    caption: str
    data: bytes  # PNG or SVG
    width: int  # pixels (PNG) or points (SVG)
    height: int
    fmt: str = "png"

    @property
    def png(self) -> bytes:
        return self.data


@dataclass
class Drawn:
    """A figure before it is encoded: tests check where its texts landed."""

    name: str
    title: str
    caption: str
    fig: object


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


def draw_plots(analysis: Analysis) -> tuple[list[Drawn], list[str]]:
    """The figures that the records support, and notes on the ones left out."""
    drawn, notes = [], []
    for make in (_latency_vs_accuracy, _size_per_variant, _latency_per_board):
        plot, note = make(analysis)
        if plot:
            drawn.append(plot)
        if note:
            notes.append(note)
    return drawn, notes


def make_plots(analysis: Analysis, fmt: str = "png") -> tuple[list[Plot], list[str]]:
    """The plots that the records support as PNG or SVG, and notes on the ones left out."""
    try:
        require("matplotlib", "report plots")
    except MissingDependencyError as exc:
        return [], [f"Plots left out: {exc.message}."]
    drawn, notes = draw_plots(analysis)
    return [_encode(d, fmt) for d in drawn], notes


def _figure(height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _encode(d: Drawn, fmt: str) -> Plot:
    import matplotlib

    buf = io.BytesIO()
    if fmt == "svg":
        # text stays text (selectable, sharp on paper, checkable in a browser); ids unique per plot
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": d.name}):
            d.fig.savefig(buf, format="svg", metadata={"Date": None})
        w, h = (round(v * 72) for v in d.fig.get_size_inches())
        return Plot(d.name, d.title, d.caption, buf.getvalue(), w, h, "svg")
    d.fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    png = buf.getvalue()
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # PNG header
    return Plot(d.name, d.title, d.caption, png, w, h)


def _smallest_batch_rows(analysis: Analysis, board: str) -> list[Row]:
    rows = [r for r in analysis.rows if r.rec.board == board]
    batch = min(r.rec.batch for r in rows)
    return [r for r in rows if r.rec.batch == batch]


def _name(variant: str, analysis: Analysis) -> str:
    return variant + (" (baseline)" if variant == analysis.baseline else "")


def _colors(analysis: Analysis) -> dict[str, str]:
    """One colour per variant, the baseline gold."""
    others = [v for v in analysis.variants if v != analysis.baseline]
    out = {v: COLORS[i % len(COLORS)] for i, v in enumerate(others)}
    out[analysis.baseline] = BASELINE
    return out


def _mark_baseline_ticks(ax, analysis: Analysis) -> None:
    for label in ax.get_yticklabels():
        if label.get_text() == _name(analysis.baseline, analysis):
            label.set_color("#8a6d00")
            label.set_fontweight("bold")


def _xerr(rows: list[Row]) -> list[list[float]] | None:
    """Error bars of the medians' 95% intervals, where the records have them."""
    if not any(r.rec.latency_ms.has_ci for r in rows):
        return None
    lo = [r.rec.latency_ms.p50 - (r.rec.latency_ms.ci_low or r.rec.latency_ms.p50) for r in rows]
    hi = [(r.rec.latency_ms.ci_high or r.rec.latency_ms.p50) - r.rec.latency_ms.p50 for r in rows]
    return [[max(v, 0.0) for v in lo], [max(v, 0.0) for v in hi]]


def quality_limits(values: list[float], top: float = 100.0) -> tuple[float, float]:
    """y limits of a quality axis: the values with a margin, at least MIN_SPAN points tall,
    inside 0..top."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.15, (MIN_SPAN - (hi - lo)) / 2, 0.0)
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > top:
        lo, hi = max(lo - (hi - top), 0.0), top
    return lo, hi


def _fit_texts(ax, texts: list, left: float = 0.0) -> None:
    """Widen the x axis until every text drawn right of its bar ends inside the axes."""
    fig = ax.figure
    for _ in range(3):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        inv = ax.transData.inverted()
        right = max(inv.transform(t.get_window_extent(renderer))[1][0] for t in texts)
        lo, hi = ax.get_xlim()
        if right <= hi:
            return
        ax.set_xlim(left, lo + (right - lo) * 1.04)


def _latency_vs_accuracy(analysis: Analysis) -> tuple[Drawn | None, str | None]:
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
    colors = _colors(analysis)
    fig = _figure(4.8)
    ax = fig.add_subplot()
    all_x, all_y, all_hi, seen = [], [], [], {}
    for k, board in enumerate(analysis.boards):
        rows = [
            r
            for r in _smallest_batch_rows(analysis, board)
            if r.rec.quality and r.rec.quality.name == metric.name
        ]
        if not rows:
            continue
        pts = [(r.rec.latency_ms.p50, r.rec.quality.value) for r in rows]
        all_x += [p[0] for p in pts]
        all_hi += [r.rec.latency_ms.ci_high or r.rec.latency_ms.p50 for r in rows]
        all_y += [p[1] for p in pts]
        front = pareto_front(pts)
        fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
        ax.plot(fx, fy, "-", drawstyle="steps-post", color="#888888", alpha=0.6, linewidth=1.2)
        xerr = _xerr(rows)
        for i, (r, (x, y)) in enumerate(zip(rows, pts, strict=True)):
            v = r.rec.variant
            seen.setdefault(v, r)
            ax.errorbar(
                [x], [y],
                xerr=[[xerr[0][i]], [xerr[1][i]]] if xerr else None,
                fmt="*" if v == analysis.baseline else MARKERS[k % len(MARKERS)],
                color=colors[v],
                markersize=12 if v == analysis.baseline else 7,
                markeredgecolor="black" if i in front else colors[v],
                markeredgewidth=0.8,
                elinewidth=1,
                capsize=2,
                zorder=3,
            )  # fmt: skip
    ax.set_ylim(*quality_limits(all_y))
    if all_x and max(all_x) / max(min(all_x), 1e-9) > 10:
        ax.set_xscale("log")
    else:
        ax.set_xlim(0, max(all_x + all_hi) * 1.1)  # room for the widest interval
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.set_ylabel(metric.axis)
    ax.set_title("Latency vs accuracy")
    ax.grid(True, alpha=0.3)
    _legend(fig, analysis, seen, colors)
    caption = (
        "Each point is a variant (named in the legend), with its median's 95% interval where "
        "recorded; outlined points form the Pareto front (no other variant is both faster and "
        f"more accurate); the gold star is the baseline. The {metric.name} axis spans at least "
        f"{MIN_SPAN:g} points."
    )
    return Drawn("latency_vs_accuracy", "Latency vs accuracy", caption, fig), note


def _legend(fig, analysis: Analysis, seen: dict[str, Row], colors: dict[str, str]) -> None:
    """Below the axes: one entry per variant (its colour; the baseline a gold star) and, with
    several boards, one per board (its marker). Long names go one to a line."""
    from matplotlib.lines import Line2D

    def handle(marker: str, color: str, size: float = 7) -> Line2D:
        return Line2D([], [], linestyle="", marker=marker, color=color, markersize=size)

    several = len(analysis.boards) > 1
    entries = [
        (
            handle("*", BASELINE, 11) if v == analysis.baseline else handle("o", colors[v]),
            _name(v, analysis) + ("" if several else f" ({r.rec.backend}, batch {r.rec.batch})"),
        )
        for v, r in seen.items()
    ]
    if several:
        entries += [
            (handle(MARKERS[k % len(MARKERS)], "#666666"), board)
            for k, board in enumerate(analysis.boards)
        ]
    longest = max(len(label) for _, label in entries)
    fig.legend(
        [h for h, _ in entries],
        [label for _, label in entries],
        fontsize=8,
        loc="outside lower center",
        ncols=1 if longest > 36 else 2 if longest > 24 else 3,
        frameon=False,
    )


def _size_per_variant(analysis: Analysis) -> tuple[Drawn | None, str | None]:
    sizes: dict[str, float] = {}
    for v in analysis.variants:
        found = [r.rec.size_bytes for r in analysis.rows if r.rec.variant == v and r.rec.size_bytes]
        if found:
            sizes[v] = found[0] / 1e6
    if not sizes:
        return None, "Size per variant left out: no record has a size."
    base = sizes.get(analysis.baseline)
    names = list(sizes)
    colors = _colors(analysis)
    fig = _figure(1.0 + 0.38 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [sizes[n] for n in names], color=[colors[n] for n in names])
    ax.set_yticks(range(len(names)), [_name(n, analysis) for n in names], fontsize=8)
    _mark_baseline_ticks(ax, analysis)
    ax.invert_yaxis()
    texts = []
    for i, n in enumerate(names):
        ratio = (
            f"  ({times(base / sizes[n], 'smaller', 'larger')})"
            if base and n != analysis.baseline
            else ""
        )
        texts.append(
            ax.annotate(
                f" {sizes[n]:.2f} MB{ratio}",
                (sizes[n], i),
                va="center",
                fontsize=8,
                annotation_clip=False,
            )
        )
    ax.set_xlim(0, max(sizes.values()) * 1.1)
    ax.set_xlabel("size on disk (MB)")
    ax.set_title("Size per variant")
    ax.grid(True, axis="x", alpha=0.3)
    _fit_texts(ax, texts)
    caption = f"Model file size; the baseline ({analysis.baseline}) is drawn in gold."
    return Drawn("size_per_variant", "Size per variant", caption, fig), None


def _latency_per_board(analysis: Analysis) -> tuple[Drawn | None, str | None]:
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
    colors = _colors(analysis)
    nb = len(analysis.boards)
    bar = 0.8 / nb
    fig = _figure(1.0 + len(variants) * max(0.38, 0.22 * nb) + (0.2 * nb if nb > 1 else 0))
    ax = fig.add_subplot()
    texts = []
    for k, board in enumerate(analysis.boards):
        ys = [i + (k - (nb - 1) / 2) * bar for i in range(len(variants))]
        rows = [best.get((v, board)) for v in variants]
        xs = [r.rec.latency_ms.p50 if r else 0.0 for r in rows]
        # one board: colour by variant (the baseline gold); several: by board, baseline hatched
        color = [colors[v] for v in variants] if nb == 1 else COLORS[k % len(COLORS)]
        bars = ax.barh(ys, xs, height=bar * 0.9, color=color, label=legends[board],
                       xerr=_xerr([r for r in rows if r]) if all(rows) else None,
                       error_kw={"elinewidth": 1, "capsize": 2})  # fmt: skip
        if nb > 1:
            for b, v in zip(bars, variants, strict=True):
                if v == analysis.baseline:
                    b.set_edgecolor(BASELINE)
                    b.set_hatch("///")
        for y, x, r in zip(ys, xs, rows, strict=True):
            if r:
                note = f" ({r.rec.backend})" if several_backends else ""
                hi = r.rec.latency_ms.ci_high or x
                texts.append(ax.annotate(f" {x:.3g} ms{note}", (max(x, hi), y), va="center",
                                         fontsize=8, annotation_clip=False))  # fmt: skip
    ax.set_yticks(range(len(variants)), [_name(v, analysis) for v in variants], fontsize=8)
    _mark_baseline_ticks(ax, analysis)
    ax.invert_yaxis()
    ends = [max(r.rec.latency_ms.p50, r.rec.latency_ms.ci_high or 0) for r in best.values()]
    ax.set_xlim(0, max(ends) * 1.1)  # the bars and their intervals; labels get room below
    ax.set_xlabel("p50 latency (ms), lower is better")
    ax.grid(True, axis="x", alpha=0.3)
    if nb > 1:
        ax.set_title("Latency per board")
        from matplotlib.patches import Patch

        # plain swatches: the baseline's hatch does not belong to a board
        swatches = [Patch(color=COLORS[k % len(COLORS)]) for k in range(nb)]
        fig.legend(swatches, [legends[b] for b in analysis.boards], fontsize=8,
                   loc="outside lower center", frameon=False)  # fmt: skip
    else:
        ax.set_title(f"Latency on {legends[analysis.boards[0]]}")
    if texts:
        _fit_texts(ax, texts)
    caption = (
        "Median latency of one inference call at each board's smallest batch size "
        "(the fastest backend measured there), with its 95% interval where recorded; "
        "the baseline is gold" + (" (hatched)." if nb > 1 else ".")
    )
    return Drawn("latency_per_board", "Latency per board", caption, fig), None
