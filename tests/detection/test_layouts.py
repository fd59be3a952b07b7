"""COCO layouts: each one written from the built-in scenes reads back split by split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvc.data.detection import is_detection_spec, load_detection
from tvc.data.detection_layout import LAYOUTS, write_layout
from tvc.errors import DataError

SIZES = {"train": 6, "val": 3, "test": 4}


@pytest.fixture(scope="module")
def splits():
    return {s: load_detection("fashion-mnist-det", s, limit=n) for s, n in SIZES.items()}


def _same(a, b) -> None:
    assert len(a) == len(b) and a.class_names == b.class_names
    for x, y in zip(a.images, b.images, strict=True):
        assert (x == y).all()
    for x, y in zip(a.targets, b.targets, strict=True):
        np.testing.assert_allclose(x["boxes"], y["boxes"])
        assert x["labels"].tolist() == y["labels"].tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_back_each_split(splits, tmp_path, layout):
    root = write_layout(splits, tmp_path / layout, layout)
    assert is_detection_spec(str(root))
    for split, want in splits.items():
        got = load_detection(str(root), split)
        _same(got, want)
        assert got.split == split and got.name == layout


def test_tree_of_each_layout(splits, tmp_path):
    """The trees the README shows."""
    files = {}
    for layout in LAYOUTS:
        root = write_layout(splits, tmp_path / layout, layout)
        files[layout] = sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))
    assert files["files"] == ["test.json", "train.json", "val.json"]
    assert files["folders"] == [
        "test/_annotations.coco.json",
        "train/_annotations.coco.json",
        "valid/_annotations.coco.json",
    ]
    assert files["coco"] == [
        f"annotations/instances_{s}2017.json" for s in ("test", "train", "val")
    ]
    assert files["single"] == ["annotations.json"]
    assert (tmp_path / "coco" / "train2017").is_dir()


def test_one_file_without_split_marks_is_divided_seeded_and_announced(splits, tmp_path, caplog):
    root = write_layout({"train": splits["train"], "val": splits["val"]}, tmp_path / "s", "single")
    coco = json.loads((root / "annotations.json").read_text())
    for e in coco["images"]:
        del e["split"]
    (root / "annotations.json").write_text(json.dumps(coco))
    with caplog.at_level("INFO", logger="tvc"):
        parts = {s: load_detection(str(root), s) for s in ("train", "val", "test")}
    assert "seeded 80/10/10 split (seed 0): train 7, val 1, test 1 images" in caplog.text
    ids = [set(p.image_ids) for p in parts.values()]
    assert sum(len(i) for i in ids) == 9 and len(set().union(*ids)) == 9  # disjoint, complete
    again = load_detection(str(root / "annotations.json"), "test")  # the file itself: same split
    assert again.image_ids == parts["test"].image_ids


def test_a_missing_test_split_is_stood_in_for_by_val_and_said(splits, tmp_path, caplog):
    root = write_layout({"train": splits["train"], "val": splits["val"]}, tmp_path / "c", "coco")
    with caplog.at_level("INFO", logger="tvc"):
        test = load_detection(str(root), "test")
    assert test.image_ids == splits["val"].image_ids
    assert "has no test split; its val split stands in" in caplog.text
    only_val = write_layout({"val": splits["val"]}, tmp_path / "v", "files")
    with pytest.raises(DataError, match=r"has no train split \(found val\)"):
        load_detection(str(only_val), "train")


def test_layout_errors(splits, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no COCO annotations in a layout tvc reads"):
        load_detection(str(tmp_path / "empty"), "test")
    root = write_layout({"test": splits["test"]}, tmp_path / "f", "folders")
    (root / "test" / "other.json").write_text("{}")
    with pytest.raises(DataError, match="holds 2 JSON files"):
        load_detection(str(root), "test")
    two = write_layout({"train": splits["train"].subset(2)}, tmp_path / "t", "single")
    coco = json.loads((two / "annotations.json").read_text())
    for e in coco["images"]:
        del e["split"]
    (two / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="too few to split"):
        load_detection(str(two), "train")
    coco["images"][0]["split"] = "holdout"
    (two / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="has the split 'holdout'"):
        load_detection(str(two), "train")
    # images that are not where the layout keeps them
    moved = write_layout({"test": splits["test"]}, tmp_path / "m", "coco")
    (moved / "test2017").rename(moved / "elsewhere")
    with pytest.raises(DataError, match="is in none of"):
        load_detection(str(moved), "test")
