"""The TuSimple metric on hand-made cases (values worked out by hand from LaneEval.bench)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tvc.eval.lanes import f1_score, tusimple_image, tusimple_metrics

YS = np.arange(10) * 10.0 + 100  # 10 rows
W = 1280.0  # threshold 20 px


def lane(x, valid=slice(None)):
    out = np.full(len(YS), -2.0)
    out[valid] = np.broadcast_to(np.asarray(x, np.float64), len(YS))[valid]
    return out


def test_perfect_prediction():
    gt = np.stack([lane(100), lane(300)])
    assert tusimple_image(gt, gt, YS, W) == (1.0, 0.0, 0.0, 2)


def test_threshold_is_20px_at_1280():
    gt = lane(100)[None]
    assert tusimple_image(lane(119)[None], gt, YS, W)[0] == 1.0  # 19 px: hit
    acc, fp, fn, matched = tusimple_image(lane(121)[None], gt, YS, W)  # 21 px: miss
    assert (acc, fp, fn, matched) == (0.0, 1.0, 1.0, 0)


def test_threshold_scales_with_image_width():
    gt = lane(50)[None]  # 128 px wide: 20 * 128 / 1280 = 2 px
    assert tusimple_image(lane(51.9)[None], gt, YS, 128)[0] == 1.0
    assert tusimple_image(lane(52.1)[None], gt, YS, 128)[0] == 0.0


def test_slanted_lane_widens_the_threshold():
    # x = y: a 45 degree lane, threshold 20 / cos(45) = 28.28 px
    gt = YS.copy()[None]
    assert tusimple_image((YS + 28)[None], gt, YS, W)[0] == 1.0
    assert tusimple_image((YS + 29)[None], gt, YS, W)[0] == 0.0
    assert 20 / math.cos(math.pi / 4) == pytest.approx(28.28, abs=0.01)


def test_partial_lanes_and_absent_rows():
    gt = lane(100)[None]
    nine = lane(100, slice(0, 9))[None]  # one row missing: 0.9 >= 0.85, matched
    assert tusimple_image(nine, gt, YS, W) == pytest.approx((0.9, 0.0, 0.0, 1))
    eight = lane(100, slice(0, 8))[None]  # 0.8 < 0.85: FN and FP
    assert tusimple_image(eight, gt, YS, W) == pytest.approx((0.8, 1.0, 1.0, 0))
    # rows where both are absent count as hits; a prediction covering them does not
    half = lane(100, slice(0, 5))[None]
    assert tusimple_image(half, half, YS, W)[0] == 1.0
    assert tusimple_image(lane(100)[None], half, YS, W)[0] == 0.5


def test_best_prediction_per_lane_and_false_positives():
    gt = np.stack([lane(100), lane(400)])
    pred = np.stack([lane(105), lane(700), lane(405)])
    acc, fp, fn, matched = tusimple_image(pred, gt, YS, W)
    assert (acc, fp, fn, matched) == (1.0, pytest.approx(1 / 3), 0.0, 2)


def test_more_than_two_extra_predictions_score_zero():
    gt = lane(100)[None]
    pred = np.stack([lane(100), lane(300), lane(500), lane(700)])
    assert tusimple_image(pred, gt, YS, W) == (0.0, 0.0, 1.0, 0)


def test_more_than_four_lanes_drop_the_worst():
    gt = np.stack([lane(100 + 200 * i) for i in range(5)])
    pred = gt[:4]  # the fifth is missed
    acc, fp, fn, matched = tusimple_image(pred, gt, YS, W)
    # (1 + 1 + 1 + 1 + 0 - min) / 4 = 1; one FN forgiven
    assert (acc, fp, fn, matched) == (1.0, 0.0, 0.0, 4)


def test_no_prediction():
    gt = np.stack([lane(100), lane(300)])
    assert tusimple_image(np.zeros((0, len(YS))), gt, YS, W) == (0.0, 0.0, 1.0, 0)


def test_dataset_means_and_f1():
    gt = [np.stack([lane(100), lane(400)]), lane(100)[None]]
    pred = [np.stack([lane(100), lane(400)]), lane(200)[None]]
    m = tusimple_metrics(pred, gt, [YS, YS], [W, W])
    assert m["accuracy"] == pytest.approx(50.0)  # (1 + 0) / 2
    assert m["fp"] == pytest.approx(50.0) and m["fn"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(50.0)
    assert f1_score(0.1, 0.2) == pytest.approx(2 * 0.9 * 0.8 / 1.7)
