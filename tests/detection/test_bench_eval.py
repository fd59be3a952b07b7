"""`tvc bench` and `tvc eval` of detectors: model names, the trivial baseline, small splits."""

from __future__ import annotations

from click.testing import CliRunner

from tvc.cli import cli

FAST_BENCH = ["--min-time-s", "0", "--max-time-s", "0", "--rounds", "1", "--warmup-s", "0",
              "--min-runs", "2"]  # fmt: skip


def test_bench_of_a_detector_name_is_treated_like_a_classifier_name():
    """A detector config name is known (it used to be 'unknown model'): with the default ONNX
    Runtime backend it is refused as a classifier name is, with what to run instead."""
    for name in ("detr_micro", "vit_tiny"):
        result = CliRunner().invoke(cli, ["bench", name, "--data", "fashion-mnist-det"])
        assert result.exit_code == 2, result.output
        assert f"error: {name} is a model name; ONNX Runtime needs an exported model" in (
            result.output
        )
        assert "unknown model" not in result.output
    result = CliRunner().invoke(cli, ["bench", "detr_micrp"])
    assert result.exit_code != 0 and "unknown model 'detr_micrp'" in result.output


def test_bench_of_a_detector_name_on_torch_builds_it_and_says_so(caplog):
    result = CliRunner().invoke(
        cli,
        ["bench", "detr_pico", "--backend", "torch", "--data", "fashion-mnist-det",
         "--limit", "4", *FAST_BENCH],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "randomly initialised" in caplog.text + result.output
    assert "detr_pico fp32" in result.output and "mAP" in result.output


def _scenes(name, split, boxes, labels, size=(64, 80)):
    """A DetectionSet of blank size (h, w) images with the given [x, y, w, h] px boxes."""
    import numpy as np

    from tvc.data.detection import DetectionSet

    h, w = size
    return DetectionSet(
        name, split, ["a", "b"], [np.zeros((h, w, 3), np.uint8) for _ in boxes],
        [{"boxes": np.asarray(b, np.float32).reshape(-1, 4), "labels": np.asarray(lab, np.int64)}
         for b, lab in zip(boxes, labels, strict=True)],
    )  # fmt: skip


def test_grid_baseline_finds_objects_where_the_grid_puts_them():
    """One object per image, always centred, of the mean size, mostly class 1: the 1x1 grid
    of that box and class is a perfect detector; moved off centre it finds nothing."""
    from tvc.eval.detection_baseline import box_stats, grid_baseline

    centred = [30.0, 22.0, 20.0, 20.0]  # centre (40, 32) of an 80 x 64 image
    train = _scenes("d", "train", [[centred]] * 3, [[1], [1], [0]])
    stats = box_stats(train)
    assert stats["label"] == 1 and stats["class"] == "b" and stats["objects_per_image"] == 1
    assert abs(stats["box_w"] - 0.25) < 1e-6 and abs(stats["box_h"] - 20 / 64) < 1e-6
    test = _scenes("d", "test", [[centred]] * 2, [[1], [1]])
    best = grid_baseline(train, test)
    assert best["map"] == 100.0 and best["grid"] == 1 and best["n"] == 2
    assert best["stats_from"] == "d train split (3 images)"
    off = _scenes("d", "test", [[[0.0, 0.0, 20.0, 20.0]]] * 2, [[1], [1]])
    assert grid_baseline(train, off)["map"] == 0.0
    assert grid_baseline(_scenes("d", "train", [[]], [[]]), test) is None  # nothing to learn


def test_eval_prints_the_baseline_and_warns_on_a_small_split(tmp_path):
    out = tmp_path / "det"
    result = CliRunner().invoke(cli, ["export", "detr_pico", "-o", str(out), "--input-size",
                                      "64", "--no-simplify"])  # fmt: skip
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["eval", str(out), "--data", "fashion-mnist-det", "--limit", "5", "--json",
              str(tmp_path / "e.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "on 5 images of the test split of fashion-mnist-det" in result.output
    assert "test test" not in result.output
    assert "mAP on 5 image(s) of the test split of fashion-mnist-det says little" in (result.output)
    line = next(x for x in result.output.splitlines() if x.startswith("baseline"))
    assert "grid of mean-size" in line and "from the fashion-mnist-det train split" in line
    import json

    record = json.loads((tmp_path / "e.json").read_text())[0]
    assert record["baseline"]["n"] == 5 and 0 <= record["baseline"]["map"] <= 100
    assert record["warnings"] and "says little" in record["warnings"][0]


def test_eval_reads_every_readme_layout(tmp_path):
    """Each layout of the README's "Detection datasets" trees, written from built-in scenes,
    is evaluated with its own training split as the baseline's statistics."""
    from tvc.data.detection import load_detection
    from tvc.data.detection_layout import LAYOUTS, write_layout

    splits = {s: load_detection("fashion-mnist-det", s, limit=n)
              for s, n in (("train", 4), ("val", 2), ("test", 3))}  # fmt: skip
    out = tmp_path / "det"
    result = CliRunner().invoke(cli, ["export", "detr_pico", "-o", str(out), "--input-size",
                                      "64", "--no-simplify"])  # fmt: skip
    assert result.exit_code == 0, result.output
    for layout in LAYOUTS:
        root = write_layout(splits, tmp_path / layout, layout)
        result = CliRunner().invoke(cli, ["eval", str(out), "--data", str(root)])
        assert result.exit_code == 0, (layout, result.output)
        assert f"on 3 images of the test split of {layout}" in result.output
        assert f"from the {layout} train split (4 images)" in result.output
