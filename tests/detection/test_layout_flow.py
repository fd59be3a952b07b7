"""train -> compress -> export on a tiny set written in each supported COCO layout."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli
from tvc.data.detection import load_detection
from tvc.data.detection_layout import LAYOUTS, write_layout

SIZES = {"train": 6, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def splits():
    return {s: load_detection("fashion-mnist-det", s, limit=n) for s, n in SIZES.items()}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_compress_export_in_each_layout(splits, tmp_path, layout):
    data = write_layout(splits, tmp_path / layout, layout)
    trained, pruned, exported = (tmp_path / n for n in ("trained", "pruned", "exported"))
    res = run("train", "detr_pico", "--data", data, "-o", trained, "--input-size", 64,
              "--epochs", 1, "--batch-size", 3, "--device", "cpu", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"training detr_pico on 6 {layout} scenes" in res.output
    assert "on 3 images" in res.output  # the test split of that layout
    res = run("compress", trained, "-o", pruned, "--prune", 0.5, "--data", data)
    assert res.exit_code == 0, res.output
    res = run("export", pruned, "-o", exported, "--no-simplify")
    assert res.exit_code == 0, res.output
    art = load_artifact(exported)
    assert art.meta["task"] == "detection"
    assert art.meta["io"]["inputs"][0]["shape"] == [1, 3, 64, 64]
    assert art.meta["model"]["extra"]["num_queries"] == 10  # the built-in scenes: at most 4
    assert art.meta["model"]["extra"]["class_names"] == splits["train"].class_names
