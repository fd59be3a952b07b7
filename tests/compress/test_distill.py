"""Distillation: the student moves toward the teacher; cached and live teachers agree."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tvc.compress.distill import DistillConfig, distill
from tvc.data import load_images
from tvc.data.synthetic import write_fake_fashion_mnist
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models import load_model
from tvc.models.load import LoadedModel
from tvc.stages.train import save_trained
from tvc.tasks.classification import ClassificationTask
from tvc.train.loop import TrainConfig
from tvc.train.train import train_model


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return f"fashion-mnist:{write_fake_fashion_mnist(tmp_path_factory.mktemp('fm'), 100, 30)}"


@pytest.fixture(scope="module")
def teacher(fm, tmp_path_factory):
    """A vit_pico trained for a few epochs on the synthetic set, as a model artifact."""
    torch.manual_seed(0)
    loaded = load_model("vit_pico", warn_random=False)
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    cfg = TrainConfig(epochs=4, lr=3e-3, batch_size=15, warmup_epochs=0.5, augment=False,
                      progress=False, device="cpu")  # fmt: skip
    return save_trained(ClassificationTask(), loaded, fm, train_model(loaded, fm, out, cfg), out)


def _student(name="vit_pico", seed=1) -> LoadedModel:
    torch.manual_seed(seed)
    return load_model(name, warn_random=False)


def _cfg(teacher, fm, tmp_path, **kw):
    base = {"epochs": 3, "lr": 3e-3, "batch_size": 15, "cache_dir": str(tmp_path / "cache"),
            "progress": False, "device": "cpu"}  # fmt: skip
    return DistillConfig(str(teacher.path), fm, **{**base, **kw})


def _kl_to_teacher(student, teacher_art, fm):
    """Mean KL(teacher || student) on the training images."""
    t = load_model(str(teacher_art.path)).model
    data = load_images(fm, "train", input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    x = torch.from_numpy(data.take(range(len(data)))[0])
    with torch.no_grad():
        s_log = F.log_softmax(student.model.eval()(x), 1)
        t_log = F.log_softmax(t(x), 1)
    return float(F.kl_div(s_log, t_log, reduction="batchmean", log_target=True))


def test_soft_kd_lowers_kd_loss_and_moves_student_to_teacher(teacher, fm, tmp_path):
    student = _student()
    before = _kl_to_teacher(student, teacher, fm)
    start = copy.deepcopy(student.model.state_dict())
    m = distill(student, _cfg(teacher, fm, tmp_path))
    kd = [h["kd"] for h in m["training"]["history"]]
    assert kd[-1] < kd[0]
    assert _kl_to_teacher(student, teacher, fm) < 0.5 * before
    assert any(not torch.equal(start[k], v) for k, v in student.model.state_dict().items())
    assert m["accuracy"]["n"] == 30 and m["accuracy"]["agreement"] is not None
    assert m["teacher_accuracy"]["top1"] == teacher.meta["metrics"]["accuracy"]["top1"]
    assert m["cache"]["hit"] is False and m["cache"]["file"].endswith(".npy")
    assert next(student.model.parameters()).device.type == "cpu"


def test_cached_logits_skip_the_teacher_and_match_a_live_teacher(teacher, fm, tmp_path):
    runs = {}
    for name, cache in (("first", True), ("cached", True), ("live", False)):
        student = _student()
        m = distill(student, _cfg(teacher, fm, tmp_path, epochs=2, cache_logits=cache))
        runs[name] = (student.model.state_dict(), m["cache"])
    assert runs["first"][1]["hit"] is False and "teacher_pass_s" in runs["first"][1]
    assert runs["cached"][1]["hit"] is True and "teacher_pass_s" not in runs["cached"][1]
    assert runs["live"][1] == {"enabled": False}
    for k, v in runs["first"][0].items():
        assert torch.equal(v, runs["cached"][0][k]), k
        assert torch.allclose(v, runs["live"][0][k], atol=1e-6), k


def test_hard_and_token_distillation(teacher, fm, tmp_path):
    student = _student()
    m = distill(student, _cfg(teacher, fm, tmp_path, kd="hard", alpha=1.0))
    assert m["training"]["history"][-1]["kd"] < m["training"]["history"][0]["kd"]

    deit = _student("deit_pico_distilled")
    head_dist = deit.model.head_dist.weight.detach().clone()
    m = distill(deit, _cfg(teacher, fm, tmp_path, kd="token"))
    assert not torch.equal(head_dist, deit.model.head_dist.weight)
    assert m["training"]["history"][-1]["kd"] < m["training"]["history"][0]["kd"]
    # back in inference mode: one averaged output, not the training pair
    out = deit.model(torch.zeros(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_user_errors(teacher, fm, tmp_path):
    with pytest.raises(UnsupportedModelError, match="distillation token"):
        distill(_student(), _cfg(teacher, fm, tmp_path, kd="token"))
    with pytest.raises(ConfigError, match="cached teacher logits"):
        distill(_student(), _cfg(teacher, fm, tmp_path, augment=True))
    with pytest.raises(ConfigError, match="--kd"):
        distill(_student(), _cfg(teacher, fm, tmp_path, kd="fancy"))
    with pytest.raises(ConfigError, match="random weights"):
        distill(_student(), DistillConfig("vit_pico", fm, progress=False, device="cpu"))
    wide = _student()
    wide.model.reset_classifier(5)
    wide.info.num_classes = 5
    with pytest.raises(ConfigError, match="5 classes"):
        distill(wide, _cfg(teacher, fm, tmp_path))


def test_the_student_learns_the_teachers_classes_in_its_order(teacher, fm, tmp_path):
    names = load_model(str(teacher.path)).info.extra["class_names"]
    assert len(names) == 10  # tvc train recorded Fashion-MNIST's classes
    student = _student()
    distill(student, _cfg(teacher, fm, tmp_path, epochs=1, eval_split=None))
    assert student.info.extra["class_names"] == names  # so its artifact says what it predicts
    reordered = _student()
    reordered.info.extra["class_names"] = names[::-1]
    with pytest.raises(ConfigError, match=f"output 0 of the student is '{names[-1]}'"):
        distill(reordered, _cfg(teacher, fm, tmp_path))
