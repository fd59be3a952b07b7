"""Hungarian matching against brute force, and the box maths it relies on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tvc.train.set_loss import (
    SetLossConfig,
    cxcywh_to_xyxy,
    generalized_box_iou,
    hungarian_match,
    match_cost,
)


def _random_case(rng: np.random.Generator, queries: int, n_targets: int, n_logits: int):
    logits = torch.tensor(rng.normal(size=(1, queries, n_logits)), dtype=torch.float32)
    boxes = torch.tensor(rng.uniform(0.2, 0.8, size=(1, queries, 4)), dtype=torch.float32)
    boxes[..., 2:] *= 0.4  # widths/heights 0.08-0.32
    target = {
        "labels": torch.tensor(rng.integers(0, 3, n_targets), dtype=torch.long),
        "boxes": torch.tensor(rng.uniform(0.2, 0.8, size=(n_targets, 4)), dtype=torch.float32)
        * torch.tensor([1, 1, 0.4, 0.4]),
    }
    return logits, boxes, target


@pytest.mark.parametrize("no_object_class", [True, False])
def test_hungarian_equals_brute_force(no_object_class):
    rng = np.random.default_rng(0)
    cfg = SetLossConfig()
    for _ in range(40):
        queries = int(rng.integers(1, 6))
        n_targets = int(rng.integers(0, queries + 1))
        logits, boxes, target = _random_case(rng, queries, n_targets, 4 if no_object_class else 3)
        ((rows, cols),) = hungarian_match(logits, boxes, [target], no_object_class=no_object_class)
        assert len(rows) == len(cols) == n_targets
        assert len(set(rows.tolist())) == n_targets  # one query per target
        assert sorted(cols.tolist()) == list(range(n_targets))
        if n_targets == 0:
            continue
        cost = match_cost(logits[0], boxes[0], target, no_object_class=no_object_class, cfg=cfg)
        cost = cost.numpy().astype(np.float64)
        got = cost[rows, cols].sum()
        # Every injective target -> query assignment.
        best = min(
            sum(cost[q, t] for t, q in enumerate(perm))
            for perm in itertools.permutations(range(queries), n_targets)
        )
        assert got == pytest.approx(best, abs=1e-5)


def test_matching_prefers_the_right_query_not_the_diagonal():
    # Query 0 sits on target 1 and query 1 on target 0, both confident in the right class.
    logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])
    target = {
        "labels": torch.tensor([0, 1]),
        "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]),
    }
    ((rows, cols),) = hungarian_match(logits, boxes, [target], no_object_class=True)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 1, 1: 0}


def test_generalized_iou_known_values():
    a = cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    same = generalized_box_iou(a, a)
    assert same.item() == pytest.approx(1.0)
    # Shifted by 0.05 in x: intersection 0.15*0.2, union 0.05, enclosing 0.25*0.2 -> IoU 0.6
    b = cxcywh_to_xyxy(torch.tensor([[0.55, 0.5, 0.2, 0.2]]))
    assert generalized_box_iou(a, b).item() == pytest.approx(0.6, abs=1e-6)
    # Disjoint boxes [0,0,1,1] and [2,0,3,1]: IoU 0, enclosing area 3, union 2 -> -1/3
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    d = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert generalized_box_iou(c, d).item() == pytest.approx(-1 / 3, abs=1e-6)


def test_non_finite_costs_are_a_non_finite_error_not_a_scipy_failure():
    from tvc.errors import NonFiniteError
    from tvc.train.set_loss import assign

    rows, cols = assign(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "test")
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    with pytest.raises(NonFiniteError, match="NaN/Inf") as info:
        assign(np.array([[np.nan, 1.0], [0.0, 1.0]]), "test")
    assert info.value.exit_code == 6
