"""DETR's set loss on hand-made examples whose values are worked out in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from tvc.train.set_loss import SetLossConfig, set_loss

TARGET = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]


def _two_queries(first_box):
    # 2 classes + "no object". Query 0: uniform logits (p = 1/3 each). Query 1: logits
    # [0, 0, ln 2], so p(no object) = 2 / (1 + 1 + 2) = 1/2; its box is far from the target.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)]]])
    boxes = torch.tensor([[first_box, [0.2, 0.2, 0.1, 0.1]]])
    return logits, boxes


def test_set_loss_perfect_box():
    logits, boxes = _two_queries([0.5, 0.5, 0.2, 0.2])
    loss, parts, matches = set_loss(logits, boxes, TARGET, no_object_class=True)
    assert matches[0][0].tolist() == [0] and matches[0][1].tolist() == [0]
    # Query 0 is matched to class 1: CE = -ln(1/3) = ln 3, weight 1. Query 1 is "no object":
    # CE = -ln(1/2) = ln 2, weight eos_coef 0.1. Weighted mean: (ln 3 + 0.1 ln 2) / 1.1.
    expected_class = (math.log(3) + 0.1 * math.log(2)) / 1.1
    assert parts["class"] == pytest.approx(expected_class, abs=1e-6)
    assert parts["bbox"] == pytest.approx(0.0, abs=1e-7)
    assert parts["giou"] == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(expected_class, abs=1e-6)


def test_set_loss_shifted_box():
    logits, boxes = _two_queries([0.55, 0.5, 0.2, 0.2])
    loss, parts, _ = set_loss(logits, boxes, TARGET, no_object_class=True)
    # L1 = |0.55 - 0.5| = 0.05 over 1 target. GIoU: intersection 0.15 x 0.2 = 0.03, union
    # 0.04 + 0.04 - 0.03 = 0.05, IoU 0.6, the enclosing box (0.25 x 0.2) equals the union:
    # GIoU 0.6, loss 1 - 0.6 = 0.4. Total = class + 5 * 0.05 + 2 * 0.4.
    expected_class = (math.log(3) + 0.1 * math.log(2)) / 1.1
    assert parts["bbox"] == pytest.approx(0.05, abs=1e-6)
    assert parts["giou"] == pytest.approx(0.4, abs=1e-5)
    assert loss.item() == pytest.approx(expected_class + 0.25 + 0.8, abs=1e-5)


def test_set_loss_without_objects_only_pushes_no_object():
    logits, boxes = _two_queries([0.5, 0.5, 0.2, 0.2])
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    loss, parts, _ = set_loss(logits, boxes, empty, no_object_class=True)
    # Both queries are "no object" (equal weights cancel): mean of ln 3 and ln 2.
    assert parts["class"] == pytest.approx((math.log(3) + math.log(2)) / 2, abs=1e-6)
    assert parts["bbox"] == 0.0 and parts["giou"] == 0.0
    assert loss.item() == pytest.approx(parts["class"], abs=1e-6)


def test_focal_set_loss_for_sigmoid_heads():
    # Deformable DETR style: 2 classes, no "no object" column, all logits 0 (p = 1/2).
    logits = torch.zeros(1, 2, 2)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    cfg = SetLossConfig()
    _, parts, _ = set_loss(logits, boxes, TARGET, no_object_class=False, cfg=cfg)
    # Focal term per logit at p = 1/2: alpha_t * ln 2 * (1/2)^2. One positive (alpha 0.25),
    # three negatives (0.75 each); summed and divided by the 1 target.
    per = math.log(2) * 0.25
    assert parts["class"] == pytest.approx(0.25 * per + 3 * 0.75 * per, abs=1e-6)
    assert parts["bbox"] == pytest.approx(0.0, abs=1e-7)


def test_set_loss_gradients_reach_the_matched_query_only_for_boxes():
    logits, boxes = _two_queries([0.55, 0.5, 0.2, 0.2])
    boxes.requires_grad_(True)
    loss, _, _ = set_loss(logits, boxes, TARGET, no_object_class=True)
    loss.backward()
    assert boxes.grad[0, 0].abs().sum() > 0
    assert boxes.grad[0, 1].abs().sum() == 0  # unmatched: only its class is trained
