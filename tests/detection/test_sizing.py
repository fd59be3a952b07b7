"""Detectors sized for their data: queries and classes from it, letterboxing, the warm-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli
from tvc.data.detection import (
    DetectionSet,
    canvas_extent,
    letterbox_size,
    normalised_target,
    preprocess_letterbox,
    write_coco,
)
from tvc.eval.detection import decode, evaluate_detector, to_pixels
from tvc.models import load_model
from tvc.models.detection_data import default_queries
from tvc.train.detection import warmup_steps_for

MEAN, STD = (0.5,) * 3, (0.5,) * 3


def dense_set(split: str, n: int, seed: int = 0) -> DetectionSet:
    """`n` non-square 48x80 images, each with 12 bright rectangles of one class "thing" whose
    COCO category id is 7."""
    rng = np.random.default_rng([seed, len(split)])
    images, targets = [], []
    for _ in range(n):
        img = np.zeros((48, 80, 3), np.uint8)
        boxes = []
        for row in range(3):
            for col in range(4):
                w, h = int(rng.integers(8, 14)), int(rng.integers(6, 11))
                x, y = (
                    col * 20 + int(rng.integers(0, 20 - w)),
                    row * 16 + int(rng.integers(0, 16 - h)),
                )
                img[y : y + h, x : x + w] = 200
                boxes.append([x, y, w, h])
        images.append(img)
        targets.append({"boxes": np.asarray(boxes, np.float32), "labels": np.zeros(12, np.int64)})
    return DetectionSet("dense", split, ["thing"], images, targets, category_ids=[7])


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    for split, n in (("train", 8), ("val", 2), ("test", 4)):
        write_coco(dense_set(split, n), root)
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_default_queries_and_warmup_follow_the_data():
    assert default_queries(4) == 10  # the built-in scenes keep DETR's 10
    assert default_queries(12) == 18 and default_queries(40) == 60
    assert warmup_steps_for(1250) == 50  # a long run: DETR's 50 steps
    assert warmup_steps_for(20) == 2 and warmup_steps_for(3) == 1  # 34 images: not 25 epochs


def test_letterbox_keeps_the_aspect_and_masks_the_padding():
    img = np.full((50, 100, 3), 255, np.uint8)
    assert letterbox_size((50, 100), (64, 64)) == (32, 64)
    x, mask = preprocess_letterbox(img, (3, 64, 64), MEAN, STD)
    assert mask[:32].all() and not mask[32:].any()
    assert np.allclose(x[:, :32], 1.0) and np.allclose(x[:, 32:], 0.0)
    assert canvas_extent((50, 100), (64, 64)) == (1.0, 2.0)
    # a box normalised through the letterbox maps back to the image's own pixels
    target = {"boxes": np.array([[10, 5, 30, 20]], np.float32), "labels": np.array([0])}
    norm = normalised_target(img, target, canvas_extent((50, 100), (64, 64)))
    assert norm["boxes"][0, 1] == pytest.approx(15 / 100)  # cy over a 100-pixel-tall canvas
    back = to_pixels({"boxes": norm["boxes"]}, 100 * 1.0, 50 * 2.0)["boxes"]
    np.testing.assert_allclose(back, target["boxes"], atol=1e-4)
    # square into square: the letterbox is the plain resize, the mask all ones
    sq = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    a, m = preprocess_letterbox(sq, (3, 64, 64), MEAN, STD)
    b, _ = preprocess_letterbox(sq, (3, 64, 64), MEAN, STD, "stretch")
    assert m.all() and np.array_equal(a, b)


def test_evaluation_maps_boxes_back_through_the_letterbox():
    """An oracle that predicts the letterboxed targets scores mAP 100 on non-square images."""
    data = dense_set("test", 3)
    view = {"input_size": (3, 64, 64), "mean": MEAN, "std": STD}
    truth = [t for _x, _m, ts, _p in data.batches(3, masks=True, **view) for t in ts]
    seen = []

    def oracle(x, mask):
        seen.append(mask)
        boxes = np.stack([t["boxes"] for t in truth])
        logits = np.full((len(x), 12, 2), -10.0)
        logits[..., 0] = 10.0  # class 0 ("thing"), not "no object"
        return logits, boxes

    result = evaluate_detector(oracle, data, no_object_class=True, pixel_mask=True, **view)
    assert result["map"] == 100.0
    assert seen[0] is not None and seen[0].shape == (3, 64, 64) and not seen[0].all()
    stretched = evaluate_detector(
        oracle, data, no_object_class=True, pixel_mask=True, resize="stretch", **view
    )
    assert stretched["map"] < 50  # the same boxes read without the letterbox land elsewhere


def test_sigmoid_heads_never_emit_labels_the_data_lacks():
    logits = np.full((1, 5, 10), -5.0)
    logits[..., 7] = 5.0  # a confident label 7 in a 10-class head
    dets = decode(logits, np.full((1, 5, 4), 0.5), no_object_class=False, num_classes=1)
    assert set(dets[0]["labels"].tolist()) == {0}


def test_train_sizes_the_detector_for_the_data_and_compress_keeps_it(dense_dir, tmp_path):
    out = tmp_path / "trained"
    res = run("train", "deformable_detr_pico", "--data", dense_dir, "-o", out, "--input-size",
              64, "--epochs", 1, "--batch-size", 4, "--device", "cpu", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "object queries: 18 (max(10, ceil(1.5 x 12))" in res.output
    assert "classes: 1 from the data's categories (thing)" in res.output
    assert "linear warm-up 1 step(s)" in res.output
    art = load_artifact(out)
    extra = art.meta["model"]["extra"]
    assert extra["num_queries"] == 18 and extra["class_names"] == ["thing"]
    assert extra["resize"] == "letterbox" and art.meta["model"]["num_classes"] == 1
    assert art.meta["model"]["kwargs"]["tvc_category_ids"] == [7]
    loaded = load_model(str(out))
    with torch.no_grad():
        logits, boxes = loaded.model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 18, 1) and boxes.shape == (1, 18, 4)
    # compress keeps the artifact's queries; another count for an artifact is refused
    pruned = tmp_path / "pruned"
    res = run("compress", out, "-o", pruned, "--prune", 0.5, "--data", dense_dir)
    assert res.exit_code == 0, res.output
    assert load_artifact(pruned).meta["model"]["extra"]["num_queries"] == 18
    res = run("train", out, "--data", dense_dir, "-o", tmp_path / "again", "--num-queries", 5)
    assert res.exit_code == 2
    assert "error: --num-queries 5 differs from the 18 queries" in res.output


def test_hugging_face_detr_keeps_working_with_queries_and_classes(tiny_detr, dense_dir, tmp_path):
    hf = tmp_path / "hf"
    tiny_detr.model.inner.save_pretrained(hf)  # 10 classes, 10 queries
    out = tmp_path / "tuned"
    res = run("train", hf, "--data", dense_dir, "-o", out, "--input-size", 64, "--epochs", 1,
              "--batch-size", 4, "--device", "cpu", "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "object queries: 18" in res.output
    assert "classes 10 -> 1, queries 10 -> 18; the class head and the query embeddings " in (
        res.output
    )
    loaded = load_model(str(out))
    assert loaded.info.input_size == (3, 64, 64) and loaded.info.extra["resize"] == "letterbox"
    with torch.no_grad():
        logits, _ = loaded.model(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 18, 2)  # one class + "no object"
    # the checkpoint's own queries stay when they cover the data
    res = run("train", hf, "--data", "fashion-mnist-det", "--limit", 4, "--eval-limit", 2,
              "-o", tmp_path / "builtin", "--input-size", 64, "--epochs", 1, "--device", "cpu",
              "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "object queries: 10 (the checkpoint's own" in res.output


def test_num_queries_is_refused_for_classifiers(tmp_path):
    res = run("train", "vit_fmnist", "--data", "fashion-mnist", "-o", tmp_path / "c",
              "--num-queries", 20)  # fmt: skip
    assert res.exit_code == 2 and "--num-queries does not apply to the classifier" in res.output
