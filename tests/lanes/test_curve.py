"""The paper's curve model: parameters -> points -> fit, and the model's shared parameters."""

from __future__ import annotations

import numpy as np
import pytest

from tvc.data.lanes import curve_points, curve_x, fit_curves

W, H = 128, 72
ROWS = np.arange(16, 72, dtype=np.float64)


def _params(k, f, m, n, lanes):
    return np.array([[lo, up, k, f, m, n, b2, b3] for lo, up, b2, b3 in lanes])


def test_curve_x_is_the_papers_formula():
    p = _params(0.01, -0.1, 0.05, 0.3, [(0.2, 1.0, 0.4, 0.1)])
    y = np.array([0.5, 0.75])
    want = 0.01 / (y + 0.1) ** 2 + 0.05 / (y + 0.1) + 0.3 + 0.4 * y - 0.1
    np.testing.assert_allclose(curve_x(p, y[None])[0], want)


def test_curve_points_marks_rows_outside_the_lane_and_the_image():
    p = _params(0.0, -0.5, 0.0, 0.0, [(0.5, 0.8, 1.0, 0.0)])  # x = y, from y 0.5 to 0.8
    pts = curve_points(p, ROWS, W, H)[0]
    yn = ROWS / H
    inside = (yn >= 0.5) & (yn <= 0.8)
    np.testing.assert_allclose(pts[inside], yn[inside] * W)
    assert (pts[~inside] == -2).all()
    off = _params(0.0, -0.5, 0.0, 2.0, [(0.0, 1.0, 0.0, 0.0)])  # x = 2: right of the image
    assert (curve_points(off, ROWS, W, H) == -2).all()


@pytest.mark.parametrize(
    ("k", "f", "m", "identifiable"),
    [
        (0.004, -0.25, -0.02, True),
        (-0.003, -0.1, 0.01, True),
        (0.0, -0.3, 0.0, False),  # straight lanes: f does not matter
        (-0.002, -0.6, 0.05, False),  # a horizon far above the rows: nearly straight again
    ],
)
def test_round_trip_parameters_points_fit(k, f, m, identifiable):
    """Points drawn from known parameters are fitted back to the same points (to a thousandth
    of a pixel); where the curvature pins them down, to the same shared k, f, m, per-lane
    offsets (n - b3) and slopes b2."""
    lanes = [(0.3, 1.0, -0.5, -0.3), (0.35, 0.95, 0.0, -0.3), (0.3, 0.9, 0.5, 0.0)]
    truth = _params(k, f, m, 0.2, lanes)
    pts = curve_points(truth, ROWS, W, H)
    ys = [ROWS[p >= 0] / H for p in pts]
    xs = [p[p >= 0] / W for p in pts]
    assert all(len(y) >= 20 for y in ys)
    fit, rms = fit_curves(ys, xs)
    assert rms < 1e-6
    if identifiable:
        np.testing.assert_allclose(fit[:, 2], k, atol=1e-6)
        np.testing.assert_allclose(fit[:, 3], f, atol=1e-4)
        np.testing.assert_allclose(fit[:, 4], m, atol=1e-5)
        np.testing.assert_allclose(fit[:, 5] - fit[:, 7], truth[:, 5] - truth[:, 7], atol=1e-5)
        np.testing.assert_allclose(fit[:, 6], truth[:, 6], atol=1e-5)
    again = curve_points(fit, ROWS, W, H)
    np.testing.assert_array_equal(again >= 0, pts >= 0)
    np.testing.assert_allclose(again[pts >= 0], pts[pts >= 0], atol=1e-3)


def test_rendered_lanes_follow_the_curve_model(scenes):
    """The renderer's lanes (a cubic on the ground through a pitched camera) are explained by
    the paper's image-plane model to well under the 2-px TuSimple threshold at 128 px."""
    worst = 0.0
    for lanes, hs in zip(scenes.lanes, scenes.h_samples, strict=True):
        ys = [hs[lane >= 0] / H for lane in lanes]
        xs = [lane[lane >= 0] / W for lane in lanes]
        _, rms = fit_curves(ys, xs)
        worst = max(worst, rms * W)
    assert worst < 1.0


def test_fit_needs_points():
    with pytest.raises(ValueError, match="at least 3"):
        fit_curves([np.array([0.5, 0.6])], [np.array([0.1, 0.2])])


def test_model_shares_shape_parameters_across_queries(pico_lstr):
    import torch

    torch.manual_seed(1)
    logits, curves = pico_lstr.model(torch.randn(2, 3, 36, 64))
    assert logits.shape == (2, 6, 2) and curves.shape == (2, 6, 8)
    shared = curves[..., 2:6]
    assert torch.allclose(shared, shared[:, :1].expand_as(shared))
    assert not torch.allclose(curves[:, 0, 6:], curves[:, 1, 6:])  # b2, b3 are per lane
    assert not torch.allclose(shared[0], shared[1])  # but differ between images
