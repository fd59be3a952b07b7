"""The built-in Fashion-MNIST detection set and COCO-format reading and writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvc.data.detection import (
    CANVAS,
    is_detection_spec,
    load_coco,
    load_detection,
    normalised_target,
    write_coco,
)
from tvc.errors import DataError


@pytest.fixture(scope="module")
def scenes():
    return load_detection("fashion-mnist-det", "train", limit=30)


def test_builtin_set_is_deterministic_and_seeded(scenes):
    again = load_detection("fmnist-det", "train", limit=30)
    assert all((a == b).all() for a, b in zip(scenes.images, again.images, strict=True))
    other = load_detection("fashion-mnist-det", "train", limit=30, seed=1)
    assert any((a != b).any() for a, b in zip(scenes.images, other.images, strict=True))
    test = load_detection("fashion-mnist-det", "test", limit=30)
    assert any((a != b).any() for a, b in zip(scenes.images, test.images, strict=True))
    assert len(scenes.class_names) == 10 and scenes.class_names[9] == "Ankle boot"


def test_boxes_are_exact_bounds_of_the_pasted_objects(scenes):
    for img, tgt in zip(scenes.images, scenes.targets, strict=True):
        assert img.shape == (CANVAS, CANVAS, 3) and img.dtype == np.uint8
        assert 1 <= len(tgt["labels"]) <= 4
        covered = np.zeros(img.shape[:2], bool)
        for x, y, w, h in tgt["boxes"].astype(int):
            region = img[y : y + h, x : x + w, 0] >= 16
            # every edge of the box touches the object
            assert region[0].any() and region[-1].any()
            assert region[:, 0].any() and region[:, -1].any()
            covered[y : y + h, x : x + w] = True
        assert not (img[..., 0][~covered] > 0).any()  # nothing lies outside the boxes


def test_batches_normalise_boxes_for_detr(scenes):
    x, targets, pos = next(
        scenes.batches(4, input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    assert x.shape == (4, 3, 64, 64) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert pos == [0, 1, 2, 3]
    x0, y0, w, h = scenes.targets[0]["boxes"][0]
    assert targets[0]["boxes"][0] == pytest.approx(
        [(x0 + w / 2) / CANVAS, (y0 + h / 2) / CANVAS, w / CANVAS, h / CANVAS]
    )


def test_coco_round_trip(scenes, tmp_path):
    small = scenes.subset(5)
    path = write_coco(small, tmp_path / "coco")
    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 5 and len(coco["categories"]) == 10
    assert coco["annotations"][0]["category_id"] == int(small.targets[0]["labels"][0]) + 1
    back = load_detection(str(tmp_path / "coco"), "train")
    assert back.class_names == small.class_names
    for a, b in zip(back.targets, small.targets, strict=True):
        np.testing.assert_allclose(a["boxes"], b["boxes"])
        assert a["labels"].tolist() == b["labels"].tolist()
    assert all((a == b).all() for a, b in zip(back.images, small.images, strict=True))
    assert is_detection_spec(str(path)) and is_detection_spec("fashion-mnist-det")
    assert not is_detection_spec("fashion-mnist")


def test_coco_loader_maps_sparse_category_ids_and_skips_crowds(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "a.png")
    coco = {
        "images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 20}],
        "categories": [{"id": 90, "name": "late"}, {"id": 3, "name": "early"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 1},
        ],
    }
    (tmp_path / "val.json").write_text(json.dumps(coco))
    data = load_coco(tmp_path / "val.json")
    assert data.class_names == ["early", "late"] and data.image_ids == [7]
    assert data.targets[0]["labels"].tolist() == [1]
    norm = normalised_target(data.images[0], data.targets[0])
    assert norm["boxes"][0].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_detection(str(tmp_path / "missing.json"))
    with pytest.raises(DataError, match="no COCO annotations in a layout"):
        load_detection(str(tmp_path))
    with pytest.raises(DataError, match="unknown split"):
        load_detection("fashion-mnist-det", "holdout")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="no 'images'"):
        load_detection(str(tmp_path / "bad.json"))
