"""`tvc eval` and `tvc bench --data`: accuracy of PyTorch models and ONNX artifacts."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.data import load_images
from tvc.data.synthetic import write_fake_fashion_mnist
from tvc.eval import evaluate
from tvc.stages import get_stage


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    return f"fashion-mnist:{write_fake_fashion_mnist(tmp_path_factory.mktemp('fm'), 20, 24)}"


def _by_hand(pico, fm):
    import torch

    data = load_images(fm, "test", input_size=pico.info.input_size, mean=pico.info.mean,
                       std=pico.info.std)  # fmt: skip
    x, y = data.take(range(len(data)))
    with torch.no_grad():
        pred = pico.model(torch.from_numpy(x)).argmax(1).numpy()
    return 100.0 * float(np.mean(pred == y))


def test_onnx_artifact_and_torch_model_give_the_same_accuracy(pico, pico_onnx, fm, tmp_path):
    want = _by_hand(pico, fm)
    stage = get_stage("eval")
    cfg = stage.config.parse({"target": str(pico_onnx.path), "data": fm,
                              "reference": str(pico_onnx.path), "threads": 1})  # fmt: skip
    [onnx] = stage.run(cfg)
    assert onnx["backend"] == "ort" and onnx["precision"] == "fp32"
    assert onnx["top1"] == pytest.approx(want) and onnx["agreement"] == 100.0 and onnx["n"] == 24
    r = CliRunner().invoke(cli, ["eval", str(pico_onnx.path), "--data", fm, "--limit", "10",
                                 "--threads", "1", "--json", str(tmp_path / "e.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "[ort]: top-1" in r.output and "on 10 fashion-mnist test images" in r.output
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved[0]["n"] == 10


def test_eval_errors_are_one_line(pico_onnx, fm, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", str(pico_onnx.path), "--data", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "error: dataset" in r.output
    r = runner.invoke(cli, ["eval", str(pico_onnx.path), "--data", fm, "--variant", "x.onnx"])
    assert r.exit_code == 2 and "no variant 'x.onnx'" in r.output


def test_a_reference_that_crops_otherwise_is_refused(pico_onnx, fm, tmp_path):
    """Agreement needs both models to see the same pixels: a checkpoint's centre crop counts
    as much as its input size and normalisation."""
    import shutil

    cropped = tmp_path / "cropped"
    shutil.copytree(pico_onnx.path, cropped)
    meta = json.loads((cropped / "artifact.json").read_text())
    meta["model"]["extra"]["preprocess"] = {"crop_pct": 0.875, "interpolation": "bicubic"}
    (cropped / "artifact.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(cli, ["eval", str(cropped), "--data", fm, "--limit", "4",
                                 "--reference", str(pico_onnx.path), "--threads", "1"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "reads images otherwise" in r.output and "crop_pct None vs 0.875" in r.output
    assert "Traceback" not in r.output


def test_labels_of_other_classes_are_refused_not_scored(pico_onnx, tmp_path):
    """Two class folders cannot score a 10-class head: no top-1 is printed or recorded."""
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "two" / "test" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16), (40, 90, 200)).save(tmp_path / "two" / "test" / c / "0.png")
    for cmd in (["eval"], ["bench", "--min-runs", "1", "--min-time-s", "0", "--warmup-s", "0"]):
        out = tmp_path / f"{cmd[0]}.json"
        r = CliRunner().invoke(cli, [*cmd, str(pico_onnx.path), "--data", str(tmp_path / "two"),
                                     "--threads", "1", "--json", str(out)])  # fmt: skip
        assert r.exit_code == 2, r.output
        assert "has 2 classes but the model's head has 10" in r.output
        assert "top-1" not in r.output and not out.exists()


def test_bench_records_accuracy(pico_onnx, fm, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(cli, ["bench", str(pico_onnx.path), "--data", fm, "--limit", "12",
                                 "--threads", "1", "--min-runs", "2", "--min-time-s", "0",
                                 "--warmup-s", "0", "--json", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    [rec] = json.loads(out.read_text())
    acc = rec["accuracy"]
    assert acc["n"] == 12 and acc["dataset"] == "fashion-mnist" and acc["split"] == "test"
    assert 0.0 <= acc["top1"] <= 100.0


def test_evaluate_matches_by_hand_on_real_runner(pico, fm):
    from tvc.runtime.predict import runner_predict
    from tvc.stages.torch_backend import TorchRunner

    data = load_images(fm, "test", input_size=(3, 32, 32), mean=pico.info.mean,
                       std=pico.info.std)  # fmt: skip
    r = evaluate(runner_predict(TorchRunner(pico)), data, batch_size=7)
    assert r["top1"] == pytest.approx(_by_hand(pico, fm))


def test_a_reference_with_other_classes_is_refused(pico_onnx, fm, tmp_path):
    """Agreement compares output positions, so both models' outputs must mean the same classes."""
    import shutil

    named = {}
    for name, classes in (("ab", ["a", "b"]), ("ba", ["b", "a"])):
        named[name] = tmp_path / name
        shutil.copytree(pico_onnx.path, named[name])
        meta = json.loads((named[name] / "artifact.json").read_text())
        meta["model"]["extra"]["class_names"] = [*classes, *map(str, range(8))]
        (named[name] / "artifact.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(cli, ["eval", str(named["ab"]), "--data", fm, "--limit", "4",
                                 "--reference", str(named["ba"]), "--threads", "1"])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "outputs mean other classes" in r.output and "(b, a, 0, 1, 2, ..." in r.output
    assert "Traceback" not in r.output
