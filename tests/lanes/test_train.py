"""Training and distillation loops on a handful of scenes (lstr_pico)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tvc.errors import ConfigError
from tvc.models import load_model
from tvc.tasks.lanes import LanesTask
from tvc.train.lanes import (
    LaneDistillConfig,
    LaneTrainConfig,
    distill_lanes,
    kd_loss,
    teacher_targets,
    train_lanes,
)


def test_training_fits_a_few_scenes(scenes):
    torch.manual_seed(0)
    loaded = load_model("lstr_pico", warn_random=False)
    data = scenes.subset(8)
    report = train_lanes(loaded, data, LaneTrainConfig(epochs=15, batch_size=8, lr=3e-3,
                                                       warmup_steps=3, augment=False))  # fmt: skip
    h = report["history"]
    assert report["epochs"] == 15 and report["steps"] == 15
    assert h[-1]["loss"] < 0.75 * h[0]["loss"]
    assert h[-1]["points"] < h[0]["points"]
    assert not loaded.model.training


def test_time_budget_stops_training(scenes):
    loaded = load_model("lstr_pico", warn_random=False)
    report = train_lanes(loaded, scenes.subset(4), LaneTrainConfig(
        epochs=1000, batch_size=4, minutes=1e-4, warmup_steps=1))  # fmt: skip
    assert report["epochs"] < 1000


def test_teacher_targets_and_kd():
    torch.manual_seed(0)
    model = load_model("lstr_pico", warn_random=False).model
    x = torch.randn(2, 3, 36, 64)
    logits, curves = model(x)
    logits = logits.detach().clone()
    logits[0, :2] = torch.tensor([-5.0, 5.0])  # two confident lanes in image 0
    logits[0, 2:] = torch.tensor([5.0, -5.0])
    logits[1] = torch.tensor([5.0, -5.0])  # none in image 1
    tg = teacher_targets(logits, curves.detach(), threshold=0.5, rows=16)
    assert tg["present"].sum(1).tolist() == [2, 0]
    # a student identical to its teacher has no KD loss; a shifted one does
    same = kd_loss(logits, curves, logits, curves.detach(), temperature=2.0, rows=16).detach()
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    moved = curves.detach().clone()
    moved[..., 7] += 0.05
    assert float(kd_loss(logits, moved, logits, curves.detach(), temperature=2.0)) > 0.05


def test_distillation_moves_the_student_towards_the_teacher(scenes):
    torch.manual_seed(0)
    teacher = load_model("lstr_pico", warn_random=False)
    train_lanes(teacher, scenes.subset(8), LaneTrainConfig(epochs=10, batch_size=8, lr=3e-3,
                                                           warmup_steps=2))  # fmt: skip
    student = copy.deepcopy(teacher)
    LanesTask().prune(student.model, {"prune": 0.5}, example=None)
    x = torch.from_numpy(next(scenes.batches(8, input_size=(3, 36, 64), mean=teacher.info.mean,
                                             std=teacher.info.std))[0])  # fmt: skip

    def gap():
        with torch.no_grad():
            tl, tc = teacher.model(x)
            sl, sc = student.model(x)
        return float(kd_loss(sl, sc, tl, tc, temperature=2.0))

    before = gap()
    # a barely trained teacher has no confident lanes: imitation alone (set_weight 0)
    report = distill_lanes(student, teacher, scenes.subset(8), LaneDistillConfig(
        epochs=15, batch_size=8, lr=1e-3, warmup_steps=1, set_weight=0.0))  # fmt: skip
    assert "kd" in report["history"][0] and "labels" not in report["history"][0]
    assert gap() < 0.7 * before
    report = distill_lanes(student, teacher, scenes.subset(8), LaneDistillConfig(
        epochs=1, batch_size=8, lr=1e-4, label_weight=0.5))  # fmt: skip
    assert report["history"][0]["labels"] > 0
    with pytest.raises(ConfigError, match="label weight"):
        distill_lanes(student, teacher, scenes, LaneDistillConfig(label_weight=-1))


def test_config_errors():
    with pytest.raises(ConfigError, match="--epochs"):
        LaneTrainConfig(epochs=0).validate()
    with pytest.raises(ConfigError, match="--lr"):
        LaneTrainConfig(lr=0).validate()


def test_task_train_returns_artifact_metrics(monkeypatch, scenes):
    import tvc.data.lanes_synth as lanes_mod

    monkeypatch.setattr(lanes_mod, "make_synthetic",
                        lambda split, n, seed=0: scenes.subset(min(n, 4)))  # fmt: skip
    loaded = load_model("lstr_pico", warn_random=False)
    metrics = LanesTask().train(loaded, "lanes-synth", {"epochs": 1, "batch_size": 4,
                                                         "limit": 4, "eval_limit": 4})  # fmt: skip
    assert set(metrics) >= {"tusimple_accuracy", "f1", "lanes", "training"}
    assert metrics["training"]["config"]["lr"] == 1e-3  # from random weights
    assert np.isfinite(metrics["tusimple_accuracy"])


def test_labels_without_a_test_split_are_refused_before_training(tmp_path, scenes):
    from dataclasses import replace

    from tvc.data.lanes import write_tusimple
    from tvc.errors import DataError

    write_tusimple(replace(scenes.subset(4), split="train"), tmp_path)  # train.json only
    loaded = load_model("lstr_pico", warn_random=False)
    before = copy.deepcopy(loaded.model.state_dict())
    with pytest.raises(DataError, match=r"no test\.json"):
        LanesTask().train(loaded, str(tmp_path), {"epochs": 1, "batch_size": 4})
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not one step was taken


def test_a_diverging_run_is_a_non_finite_error_not_a_model(scenes):
    import torch

    from tvc.errors import NonFiniteError

    loaded = load_model("lstr_pico", warn_random=False)
    with torch.no_grad():  # a weight already broken: the first loss is NaN
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="outputs hold NaN/Inf") as info:
        train_lanes(loaded, scenes.subset(4), LaneTrainConfig(epochs=1, batch_size=4,
                                                             device="cpu"))  # fmt: skip
    assert info.value.exit_code == 6
