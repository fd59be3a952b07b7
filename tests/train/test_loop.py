"""The training loop: schedule, augmentation, resume after an interruption, and `tvc train`."""

import itertools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tvc.cli import cli
from tvc.data import load_images
from tvc.data.synthetic import write_fake_fashion_mnist
from tvc.errors import ConfigError
from tvc.models import load_model
from tvc.train.loop import TrainConfig, augment, epoch_crops, fit, lr_factor

VIEW = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=120, n_test=40)


def _pico(seed=0):
    torch.manual_seed(seed)
    return load_model("vit_pico", warn_random=False)


def _cfg(**kw):
    base = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "warmup_epochs": 0.5, "progress": False,
            "device": "cpu"}  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10, 0.01) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[9:]))
    assert f[-1] == pytest.approx(0.01, abs=1e-3)


def test_augment_is_a_fixed_crop_and_flip_per_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    idx = np.array([5, 9])
    a = augment(x, *epoch_crops(0, 1, idx, 8, "cpu"))
    assert torch.equal(a, augment(x, *epoch_crops(0, 1, idx, 8, "cpu"))) and a.shape == x.shape
    assert not torch.equal(augment(x, *epoch_crops(0, 2, idx, 8, "cpu")), a)  # other epoch
    # offsets (pad, pad) without a flip give the image back; a flip mirrors it
    same = augment(x, torch.tensor([1, 1]), torch.tensor([1, 1]), torch.tensor([False, True]))
    assert torch.equal(same[0], x[0]) and torch.equal(same[1], x[1].flip(-1))
    # each output is a shifted (and maybe mirrored) window of its own image
    for i in range(2):
        img = a[i, 0]
        src = x[i, 0]
        assert set(img.flatten().tolist()) <= set(src.flatten().tolist())


def test_training_learns_and_resume_continues_exactly(fm, tmp_path):
    spec = f"fashion-mnist:{fm}"
    train = load_images(spec, "train", **VIEW)
    val = load_images(spec, "val", **VIEW)

    straight = _pico()
    res = fit(straight.model, train, _cfg(augment=False), val_set=val)
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    assert "val_top1" in res["history"][-1]

    class Interrupt(Exception):
        pass

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise Interrupt

    ckpt = tmp_path / "run.ckpt" / "last.pt"
    interrupted = _pico()
    with pytest.raises(Interrupt):
        fit(interrupted.model, train, _cfg(augment=False), checkpoint=ckpt,
            on_epoch_end=stop_after_first)  # fmt: skip
    assert ckpt.is_file()
    resumed = _pico(seed=123)  # other fresh weights: everything must come from the checkpoint
    res2 = fit(resumed.model, train, _cfg(augment=False), checkpoint=ckpt, resume=True)
    assert res2["resumed_from_epoch"] == 1 and len(res2["history"]) == 2
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(),
                         strict=True):  # fmt: skip
        assert torch.allclose(a, b, atol=1e-6), k
    with pytest.raises(ConfigError, match="lr differ"):
        fit(_pico().model, train, _cfg(augment=False, lr=1e-2), checkpoint=ckpt, resume=True)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="--epochs"):
        _cfg(epochs=0).validate()


def test_train_command_writes_artifact_and_resumes(fm, tmp_path):
    runner = CliRunner()
    out = tmp_path / "teacher"
    args = ["train", "vit_pico", "--data", f"fashion-mnist:{fm}", "-o", str(out), "--epochs", "2",
            "--batch-size", "16", "--lr", "3e-3", "--no-progress", "--device", "cpu"]  # fmt: skip
    r = runner.invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "test top-1" in r.output
    meta = json.loads((out / "artifact.json").read_text())
    acc = meta["metrics"]["accuracy"]
    assert acc["n"] == 40 and acc["dataset"] == "fashion-mnist" and acc["split"] == "test"
    assert len(meta["metrics"]["training"]["history"]) == 2
    assert meta["model"]["num_classes"] == 10
    weights = load_file(str(out / "weights.safetensors"))
    # --resume of a finished run trains no further and writes the same weights (its artifact
    # exists, so replacing it takes --force)
    r = runner.invoke(cli, [*args, "--resume"], catch_exceptions=False)
    assert r.exit_code == 2 and "pass --force" in r.output
    r = runner.invoke(cli, [*args, "--resume", "--force"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    again = load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    # the trained artifact evaluates to the accuracy recorded in it
    r = runner.invoke(cli, ["eval", str(out), "--data", f"fashion-mnist:{fm}"])
    assert r.exit_code == 0, r.output
    assert f"top-1 {acc['top1']:.2f}%" in r.output
    # a changed option cannot resume that checkpoint
    r = runner.invoke(cli, [*args[:-2], "--lr", "1e-2", "--resume", "--force"])
    assert r.exit_code == 2 and "other settings" in r.output


def test_train_command_bad_data(tmp_path):
    r = CliRunner().invoke(cli, ["train", "vit_pico", "--data", str(tmp_path / "none"), "-o",
                                 str(tmp_path / "o"), "--no-progress"])  # fmt: skip
    assert r.exit_code == 2 and "error: dataset" in r.output and "Traceback" not in r.output


def test_trained_classes_travel_with_the_artifact_and_match_eval_folders_by_name(tmp_path):
    from PIL import Image

    def folder(root, classes):
        for k, c in enumerate(classes):
            for i in range(3):
                (root / c).mkdir(parents=True, exist_ok=True)
                Image.new("L", (16, 16), 40 * k + i).save(root / c / f"{i}.png")

    folder(tmp_path / "data" / "train", ["ant", "bee", "cow"])
    folder(tmp_path / "data" / "val", ["ant", "bee", "cow"])  # no test/: scored on val/
    out = tmp_path / "m"
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "vit_pico", "--data", str(tmp_path / "data"), "-o", str(out),
                            "--epochs", "1", "--no-progress", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["model"]["extra"]["class_names"] == ["ant", "bee", "cow"]
    folder(tmp_path / "subset", ["bee", "cow"])  # labels 0, 1 here are outputs 1, 2
    r = runner.invoke(cli, ["eval", str(out), "--data", str(tmp_path / "subset")])
    assert r.exit_code == 0 and "2 classes matched to the model's 3 by name" in r.output
    folder(tmp_path / "other", ["cow", "dog"])  # cow is label 0 here, output 2 of the model
    r = runner.invoke(cli, ["eval", str(out), "--data", str(tmp_path / "other")])
    assert r.exit_code == 2 and "'cow' is label 0 there but output 2" in r.output
