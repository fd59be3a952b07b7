"""Plots that read well: labels inside the figure and apart, a quality axis that does not
magnify noise, and one baseline marking (gold, labelled) in every plot."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.text import Text

from tvc.report.analysis import analyse
from tvc.report.plots import BASELINE, MIN_SPAN, draw_plots, quality_limits

from .conftest import CPU, record


def _drawn_texts(fig) -> list[Text]:
    """The texts matplotlib draws: titles, axis labels, annotations, legends, and the labels of
    the ticks inside the view (it keeps labels of ticks outside the view but does not draw them)."""
    out = []
    for ax in fig.axes:
        out += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            span = hi - lo
            for loc, tick in zip(axis.get_majorticklocs(), axis.get_major_ticks(), strict=False):
                if lo - 1e-9 * span <= loc <= hi + 1e-9 * span:
                    out.append(tick.label1)
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out += legend.texts
    return out


def _texts(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for t in _drawn_texts(fig)
        if t.get_visible() and t.get_text().strip()
    ]


@pytest.fixture
def wide_interval(noisy_records):
    """The teacher timed under heavy load: its median's interval reaches far right."""
    teacher = noisy_records[2]
    lat = teacher.latency_ms.model_copy(update={"ci_low": 2.6, "ci_high": 4.5})
    return [*noisy_records[:2], teacher.model_copy(update={"latency_ms": lat})]


@pytest.mark.parametrize("which", ["records", "noisy_records", "detections", "wide_interval"])
def test_labels_stay_inside_their_figure_and_apart(which, request):
    drawn, _ = draw_plots(analyse(request.getfixturevalue(which)))
    assert len(drawn) == 3
    for d in drawn:
        box = d.fig.bbox
        texts = _texts(d.fig)
        assert len(texts) > 5
        for text, r in texts:
            assert box.x0 - 0.5 <= r.x0 and r.x1 <= box.x1 + 0.5, f"{d.name}: {text} clipped"
            assert box.y0 - 0.5 <= r.y0 and r.y1 <= box.y1 + 0.5, f"{d.name}: {text} clipped"
        for ax in d.fig.axes:  # bar labels are drawn and end inside the axes, not over its frame
            for line in ax.get_lines():  # error bars and points stay inside the view too
                x = [v for v in line.get_xdata() if v == v]
                assert not x or max(x) <= ax.get_xlim()[1], f"{d.name}: a point leaves the axes"
            for t in ax.texts:
                assert t.xy[0] <= ax.get_xlim()[1], f"{d.name}: {t.get_text()} is not drawn"
                r = t.get_window_extent(d.fig.canvas.get_renderer())
                assert r.x1 <= ax.bbox.x1 + 0.5, f"{d.name}: {t.get_text()} leaves the axes"
        for (ta, a), (tb, b) in itertools.combinations(texts, 2):
            w = min(a.x1, b.x1) - max(a.x0, b.x0)
            h = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert w <= 1 or h <= 1, f"{d.name}: '{ta}' overlaps '{tb}'"


def test_quality_axis_spans_at_least_the_minimum():
    lo, hi = quality_limits([90.0, 90.04])  # a 0.04-point difference must not fill the plot
    assert hi - lo == pytest.approx(MIN_SPAN) and lo < 90.0 and hi > 90.04
    assert quality_limits([99.5, 99.9]) == pytest.approx((98.0, 100.0))  # never above 100
    assert quality_limits([0.2, 0.3])[0] == 0.0
    lo, hi = quality_limits([60.0, 90.0])  # a wide range keeps a margin around the points
    assert lo == pytest.approx(55.5) and hi == pytest.approx(94.5)
    recs = [
        record("teacher fp32", CPU, 2.0, top1=90.0),
        record("student fp32", CPU, 1.0, top1=90.04),
    ]
    drawn, _ = draw_plots(analyse(recs))
    ax = drawn[0].fig.axes[0]
    assert ax.get_ylim()[1] - ax.get_ylim()[0] >= MIN_SPAN - 1e-9
    assert ax.get_xlim()[0] == 0  # latency from zero: ratios read true


def test_the_baseline_is_gold_and_labelled_in_every_plot(records, noisy_records):
    drawn, _ = draw_plots(analyse(noisy_records))
    scatter, size, latency = (d.fig.axes[0] for d in drawn)
    stars = [ln for ln in scatter.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and to_hex(stars[0].get_color()) == BASELINE
    legend = drawn[0].fig.legends[0]
    assert "teacher-onnx fp32 (baseline) (ort, batch 1)" in [t.get_text() for t in legend.texts]
    for ax in (size, latency):
        assert ax.get_yticklabels()[0].get_text() == "teacher-onnx fp32 (baseline)"
        colors = [to_hex(p.get_facecolor()) for p in ax.patches]
        assert colors[0] == BASELINE and BASELINE not in colors[1:]
    # several boards: bars are coloured by board, so the baseline's are hatched in gold
    drawn, _ = draw_plots(analyse(records))
    latency = drawn[2].fig.axes[0]
    hatched = [p for p in latency.patches if p.get_hatch()]
    assert hatched and all(to_hex(p.get_edgecolor()) == BASELINE for p in hatched)
    assert len(hatched) == 3  # the teacher on each of the three boards
    assert not any(isinstance(h, Line2D) and h.get_marker() == "*" for h in latency.get_lines())
