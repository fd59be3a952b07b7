"""Hungarian matching of lane queries against brute force, and the loss it feeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tvc.train.lanes import LaneLossConfig, batch_cost, hungarian_match, lane_loss, pad_targets


def _targets(rng, n_lanes, rows=12):
    ys = np.linspace(0.35, 0.95, rows, dtype=np.float32)
    xs, valid = [], []
    for _ in range(n_lanes):
        x = rng.uniform(0.1, 0.9) + rng.uniform(-0.3, 0.3) * (ys - 0.35)
        v = np.ones(rows, bool)
        v[: rng.integers(0, 4)] = False
        xs.append(x.astype(np.float32))
        valid.append(v)
    xs, valid = np.array(xs).reshape(-1, rows), np.array(valid).reshape(-1, rows)
    ys2 = np.broadcast_to(ys, xs.shape).copy()
    lower = np.array([ys[v].min() for v in valid], np.float32)
    upper = np.array([ys[v].max() for v in valid], np.float32)
    return {"xs": xs, "ys": ys2, "valid": valid, "lower": lower, "upper": upper}


def _outputs(rng, b, q):
    logits = torch.tensor(rng.normal(size=(b, q, 2)), dtype=torch.float32)
    curves = np.zeros((b, q, 8), np.float32)
    curves[..., 0] = rng.uniform(0.3, 0.5, (b, q))
    curves[..., 1] = rng.uniform(0.8, 1.0, (b, q))
    curves[..., 2] = rng.uniform(-0.01, 0.01, (b, 1))
    curves[..., 3] = rng.uniform(-0.4, -0.2, (b, 1))
    curves[..., 4] = rng.uniform(-0.05, 0.05, (b, 1))
    curves[..., 5] = rng.uniform(0.3, 0.6, (b, 1))
    curves[..., 6] = rng.uniform(-0.4, 0.4, (b, q))
    curves[..., 7] = rng.uniform(-0.3, 0.3, (b, q))
    return logits, torch.from_numpy(curves)


def test_cost_is_the_papers_terms():
    rng = np.random.default_rng(0)
    logits, curves = _outputs(rng, 1, 3)
    tgt = _targets(rng, 2)
    cfg = LaneLossConfig()
    cost = batch_cost(logits, curves, pad_targets([tgt]), cfg)[0].numpy()
    q, t = 1, 0
    p = curves[0, q].double().numpy()
    y, x, v = tgt["ys"][t].astype(np.float64), tgt["xs"][t], tgt["valid"][t]
    d = y - p[3]
    px = p[2] / d**2 + p[4] / d + p[5] + p[6] * y - p[7]
    prob = torch.softmax(logits[0, q], -1)[1].item()
    want = (
        -3 * prob
        + 5 * np.abs(px - x)[v].mean()
        + 2 * abs(p[0] - tgt["lower"][t])
        + 2 * abs(p[1] - tgt["upper"][t])
    )
    assert cost[q, t] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    q = 5
    counts = [int(rng.integers(0, 5)) for _ in range(3)]
    targets = [_targets(rng, n) for n in counts]
    logits, curves = _outputs(rng, len(counts), q)
    tg = pad_targets(targets)
    cost = batch_cost(logits, curves, tg, LaneLossConfig()).numpy()
    matches = hungarian_match(logits, curves, tg)
    for i, (n, (rows, cols)) in enumerate(zip(counts, matches, strict=True)):
        assert len(rows) == len(cols) == n
        assert sorted(cols.tolist()) == list(range(n))
        got = cost[i, rows, cols].sum()
        best = min(
            (
                sum(cost[i, perm[t], t] for t in range(n))
                for perm in itertools.permutations(range(q), n)
            ),
            default=0.0,
        )
        assert got == pytest.approx(best, abs=1e-5)


def test_loss_is_zero_for_perfect_curves_and_confident_scores():
    rng = np.random.default_rng(3)
    logits, curves = _outputs(rng, 1, 4)
    # lanes that are exactly queries 0 and 2's curves
    ys = np.linspace(0.45, 0.75, 10, dtype=np.float32)
    lanes = []
    for qi in (0, 2):
        c = curves[0, qi].double().numpy()
        d = ys - c[3]
        lanes.append(c[2] / d**2 + c[4] / d + c[5] + c[6] * ys - c[7])
    curves[0, [0, 2], 0] = 0.45
    curves[0, [0, 2], 1] = 0.75
    tgt = {"xs": np.array(lanes, np.float32), "ys": np.stack([ys, ys]),
           "valid": np.ones((2, 10), bool), "lower": np.full(2, 0.45, np.float32),
           "upper": np.full(2, 0.75, np.float32)}  # fmt: skip
    logits = torch.tensor([[[-20.0, 20.0], [20.0, -20.0], [-20.0, 20.0], [20.0, -20.0]]])
    total, _parts, matches = lane_loss(logits, curves, pad_targets([tgt]))
    assert sorted(matches[0][0].tolist()) == [0, 2]
    assert float(total) == pytest.approx(0.0, abs=1e-5)
    # a lane score flipped costs cross-entropy; a shifted curve costs points
    worse = logits.clone()
    worse[0, 1] = torch.tensor([-20.0, 20.0])
    assert lane_loss(worse, curves, pad_targets([tgt]))[1]["class"] > 1
    shifted = curves.clone()
    shifted[0, :, 7] -= 0.1
    assert lane_loss(logits, shifted, pad_targets([tgt]))[1]["points"] == pytest.approx(
        0.1, rel=1e-3
    )


def test_images_without_lanes():
    rng = np.random.default_rng(0)
    logits, curves = _outputs(rng, 2, 3)
    empty = {"xs": np.zeros((0, 5), np.float32), "ys": np.zeros((0, 5), np.float32),
             "valid": np.zeros((0, 5), bool), "lower": np.zeros(0, np.float32),
             "upper": np.zeros(0, np.float32)}  # fmt: skip
    total, parts, matches = lane_loss(logits, curves, pad_targets([empty, empty]))
    assert [len(r) for r, _ in matches] == [0, 0]
    assert parts["points"] == 0.0 and torch.isfinite(total)
