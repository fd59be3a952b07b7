"""Training with the set loss and distillation from a teacher, on a few built-in scenes."""

from __future__ import annotations

import copy

import pytest
import torch

from tvc.data.detection import load_detection
from tvc.errors import ConfigError
from tvc.models.load import LoadedModel
from tvc.train.detection import (
    DetDistillConfig,
    DetTrainConfig,
    distill_detector,
    teacher_targets,
    train_detector,
)


@pytest.fixture(scope="module")
def scenes():
    return load_detection("fashion-mnist-det", "train", limit=8)


def _copy(loaded):
    return LoadedModel(copy.deepcopy(loaded.model), loaded.info)


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_training_lowers_the_set_loss(fixture, request, scenes):
    loaded = _copy(request.getfixturevalue(fixture))
    cfg = DetTrainConfig(epochs=30, batch_size=8, lr=1e-3, warmup_steps=1, grad_clip=1.0)
    metrics = train_detector(loaded, scenes, cfg)
    first, last = metrics["history"][0], metrics["history"][-1]
    assert metrics["steps"] == 30 and last["loss"] < 0.92 * first["loss"]
    assert last["bbox"] < first["bbox"]
    assert not loaded.model.training  # left in eval mode


def test_distillation_moves_the_student_towards_the_teacher(tiny_detr, scenes):
    teacher = _copy(tiny_detr)
    train_detector(
        teacher,
        scenes,
        DetTrainConfig(epochs=10, batch_size=8, lr=1e-3, warmup_steps=1, grad_clip=1.0),
    )
    student = _copy(teacher)
    with torch.no_grad():  # a perturbed copy, as after pruning
        for p in student.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = DetDistillConfig(
        epochs=8, batch_size=8, lr=5e-4, warmup_steps=1, grad_clip=1.0, score_threshold=0.2
    )
    metrics = distill_detector(student, teacher, scenes, cfg)
    hist = metrics["history"]
    assert metrics["stage"] == "distill-detection" and "kd" in hist[-1]
    assert hist[-1]["kd"] < hist[0]["kd"]


def test_label_weight_adds_the_set_loss_against_the_labels(tiny_detr, scenes):
    """label_weight=1 adds exactly the ground-truth set loss of every decoder layer."""
    teacher = _copy(tiny_detr)
    runs = {}
    for w in (0.0, 1.0):
        student = _copy(tiny_detr)
        cfg = DetDistillConfig(epochs=1, batch_size=8, lr=1e-9, warmup_steps=1, label_weight=w)
        runs[w] = distill_detector(student, teacher, scenes, cfg)["history"][0]
    assert "labels" not in runs[0.0] and runs[1.0]["labels"] > 0
    assert runs[1.0]["loss"] == pytest.approx(runs[0.0]["loss"] + runs[1.0]["labels"], rel=1e-4)
    with pytest.raises(ConfigError, match="label weight"):
        distill_detector(student, teacher, scenes, DetDistillConfig(epochs=1, label_weight=-1))


def test_random_detr_gets_xavier_transformer_init():
    """transformers' N(0, 0.02) leaves a scratch DETR's attention uniform; tvc re-draws it."""
    from tvc.models import load_model

    torch.manual_seed(0)
    detr = load_model("detr_pico", warn_random=False).model.inner
    q = detr.model.encoder.layers[0].self_attn.q_proj.weight
    assert q.std() > 0.1  # xavier-uniform for 64x64: std 0.125; transformers' init: 0.02
    deform = load_model("deformable_detr_pico", warn_random=False).model.inner
    offsets = deform.model.encoder.layers[0].self_attn.sampling_offsets.weight
    assert offsets.abs().max() == 0  # Deformable DETR keeps its own (grid) init


def test_teacher_targets_keep_confident_queries():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 4.0], [0.0, 3.0, 0.0]]])
    boxes = torch.rand(1, 3, 4)
    (t,) = teacher_targets(logits, boxes, no_object_class=True, threshold=0.5)
    assert t["query"].tolist() == [0, 2] and t["labels"].tolist() == [0, 1]
    torch.testing.assert_close(t["boxes"], boxes[0, [0, 2]])


def test_config_errors(tiny_detr, tiny_deformable, scenes):
    with pytest.raises(ConfigError, match="--epochs"):
        train_detector(tiny_detr, scenes, DetTrainConfig(epochs=0))
    with pytest.raises(ConfigError, match="different class sets"):
        distill_detector(tiny_detr, tiny_deformable, scenes, DetDistillConfig(epochs=1))


@pytest.mark.parametrize("no_object_class", [True, False])
def test_kd_is_zero_for_an_identical_student_and_matches_shuffled_queries(no_object_class):
    from tvc.train.detection import kd_loss, match_queries

    torch.manual_seed(0)
    logits, boxes = torch.randn(2, 5, 4) * 3, torch.rand(2, 5, 4) * 0.5 + 0.2
    kd = kd_loss(logits, boxes, logits, boxes, no_object_class=no_object_class, temperature=2.0)
    if no_object_class:
        assert kd.item() == pytest.approx(0.0, abs=1e-5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    pairs = match_queries(
        logits[:, perm], boxes[:, perm], logits, boxes, no_object_class=no_object_class
    )
    for rows, cols in pairs:
        assert perm[rows].tolist() == cols.tolist()
