"""`tvc train`, `tvc compress` and `tvc bench` with DETR-style detectors on built-in scenes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli
from tvc.compress.detection import DetPruneConfig, compress_detector
from tvc.models import load_model
from tvc.models.detection import is_detector
from tvc.records import read_records
from tvc.stages.torch_backend import TorchRunner

DATA = "fashion-mnist-det"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """detr_pico at 64x64 trained by the CLI for one epoch on 16 scenes."""
    out = tmp_path_factory.mktemp("det") / "trained"
    res = run("train", "detr_pico", "--data", DATA, "-o", out, "--input-size", 64,
              "--epochs", 1, "--limit", 16, "--eval-limit", 4, "--batch-size", 8,
              "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, res.output


def test_train_writes_a_detector_artifact_with_its_map(trained):
    out, output = trained
    assert f"wrote {out}: test mAP " in output and "on 4 images" in output
    art = load_artifact(out)
    metrics = art.meta["metrics"]
    assert metrics["detection"]["n"] == 4 and metrics["map"] == metrics["detection"]["map"]
    assert metrics["training"]["epochs"] == 1 and len(metrics["training"]["history"]) == 1
    assert metrics["training"]["images"] == 16 and metrics["training"]["seconds"] >= 0
    # from random weights: the from-scratch defaults
    assert (
        art.meta["spec"]["config"]["lr"] == 1e-3 and art.meta["spec"]["config"]["grad_clip"] == 0.1
    )
    assert art.meta["spec"]["command"].startswith("tvc train detr_pico --data")
    loaded = load_model(str(out))
    assert is_detector(loaded) and loaded.info.input_size == (3, 64, 64)
    assert metrics["params"] == sum(p.numel() for p in loaded.model.parameters())


def test_compress_prune_reloads_as_the_in_memory_model(trained, tmp_path):
    src, _ = trained
    out = tmp_path / "pruned"
    res = run("compress", src, "-o", out, "--prune", 0.5, "--data", DATA, "--eval-limit", 4)
    assert res.exit_code == 0, res.output
    assert "pruned 50%: attention heads 24 -> 12, FFN channels 512 -> 256" in res.output
    assert "mAP: source" in res.output and f"wrote {out}" in res.output
    art = load_artifact(out)
    report = art.meta["metrics"]["compression"]
    assert report["after"]["params"] < report["before"]["params"]
    assert art.meta["metrics"]["params"] == report["after"]["params"]
    assert set(report["quality"]) == {"source", "compressed"}
    assert art.meta["metrics"]["map"] == report["quality"]["compressed"]["map"]
    assert art.meta["parent"]["id"] == load_artifact(src).id
    # The artifact rebuilds the very model that pruning makes in memory.
    in_memory, _ = compress_detector(load_model(str(src)), prune=DetPruneConfig(ratio=0.5))
    again = load_model(str(out))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = in_memory.model.eval()(x), again.model(x)
    assert got[0].shape == (2, 10, 11) and got[1].shape == (2, 10, 4)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_compress_distils_from_the_source(trained, tmp_path):
    src, _ = trained
    out = tmp_path / "student"
    res = run("compress", src, "-o", out, "--prune", 0.3, "--lowrank-rank", 8, "--distill", src,
              "--data", DATA, "--limit", 8, "--eval-limit", 4, "--batch-size", 8,
              "--device", "cpu")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "distillation: 1 epoch(s), 1 steps" in res.output
    art = load_artifact(out)
    report = art.meta["metrics"]["compression"]
    assert report["teacher"] == "source"  # --distill naming MODEL itself reuses the source
    assert report["lowrank"]["factorized"] > 0 and report["distill"]["images"] == 8
    assert set(report["quality"]) == {"source", "compressed", "distilled"}
    assert "agreement" in report["quality"]["distilled"]
    assert 0 <= report["agreement"]["class_agreement"] <= 1
    assert load_model(str(out)).model(torch.zeros(1, 3, 64, 64))[1].shape == (1, 10, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "detr_pico", "--data", DATA, "--label-smoothing", "0.2"],
         "--label-smoothing does not apply to the detector detr_pico"),
        (["train", "detr_pico", "--data", DATA, "--resume"], "--resume does not apply to the det"),
        (["train", "detr_pico", "--data", "fashion-mnist"],
         "detr_pico is a detector but --data fashion-mnist is classification data"),
        (["train", "vit_pico", "--data", DATA], "vit_pico is a classifier but --data"),
        (["compress", "detr_pico", "--prune", "0.3", "--global"], "--global does not apply to the"),
        (["compress", "detr_pico", "--prune", "0.3", "--importance", "taylor"],
         "--importance does not apply to the detector"),
        (["compress", "detr_pico", "--distill", "--data", DATA, "--kd", "hard"], "--kd does not"),
        (["compress", "detr_pico", "--distill"], "--distill needs --data"),
        (["compress", "vit_pico", "--prune", "0.3", "--data", DATA], "is detection data"),
    ],
)  # fmt: skip
def test_options_that_do_not_fit_are_one_error_line(tmp_path, args, message):
    res = run(*args, "-o", tmp_path / "never")
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert message in res.output
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_torch_runner_serves_detectors(fixture, request):
    loaded = request.getfixturevalue(fixture)
    runner = TorchRunner(loaded)
    classes = 11 if loaded.model.no_object_class else 10
    assert [(o.name, o.shape) for o in runner.outputs] == [
        ("logits", (None, 10, classes)),
        ("boxes", (None, 10, 4)),
    ]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = runner.infer(x)
    with torch.no_grad():
        logits, boxes = loaded.model(torch.from_numpy(x))
    np.testing.assert_allclose(got["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], boxes.numpy(), rtol=1e-5, atol=1e-6)


def test_bench_measures_latency_and_map_of_a_detector(trained, tmp_path):
    src, _ = trained
    onnx = tmp_path / "onnx"
    assert run("export", src, "-o", onnx, "--no-simplify").exit_code == 0
    records = tmp_path / "bench.json"
    res = run("bench", onnx, "--backend", "ort,torch", "--min-runs", 2, "--min-time-s", 0,
              "--warmup-s", 0, "--threads", 1, "--data", DATA, "--limit", 4,
              "--json", records)  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = read_records(records)
    assert [r.backend for r in recs] == ["ort", "torch"]
    assert all(r.detection is not None and r.detection.n == 4 for r in recs)
    assert all(r.accuracy is None for r in recs)
    # the same model on both backends: the same mAP
    assert recs[0].detection.map == pytest.approx(recs[1].detection.map, abs=0.01)
    assert recs[1].model.params == load_artifact(src).meta["metrics"]["params"]
    # classification data for a detector: one line that names the fix
    res = run("bench", src, "--backend", "torch", "--min-runs", 1, "--min-time-s", 0,
              "--data", "fashion-mnist", "--limit", 4)  # fmt: skip
    assert res.exit_code == 2 and "--data fashion-mnist-det" in res.output, res.output
