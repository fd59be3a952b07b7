"""COCO mAP on a fixed tiny prediction set whose value is worked out by hand, and decoding."""

from __future__ import annotations

import numpy as np
import pytest

from tvc.eval.detection import coco_map, decode, evaluate_detector, iou_xywh, to_pixels

# Two images, 3 classes. Boxes are COCO [x, y, w, h] in pixels.
GROUND_TRUTH = [
    {"boxes": np.array([[0, 0, 10, 10], [30, 30, 10, 10]], float), "labels": np.array([0, 1])},
    {"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([0])},
]
DETECTIONS = [
    {
        "boxes": np.array([[0, 0, 10, 10]], float),
        "labels": np.array([0]),
        "scores": np.array([0.9]),
    },
    {
        "boxes": np.array([[20, 20, 10, 10], [0, 0, 10, 6.2], [50, 50, 5, 5]], float),
        "labels": np.array([0, 0, 2]),
        "scores": np.array([0.8, 0.7, 0.95]),
    },
]


def test_map_of_a_hand_computed_case():
    """Class 0 (2 objects): detections by score are a (IoU 1), b (IoU 0), c (IoU 0.62).

    At IoU thresholds .50, .55, .60 (c matches): TP, FP, TP -> recall .5, .5, 1 and precision
    1, .5, .667 -> made monotone 1, .667, .667. Of the 101 recall points, the 51 up to 0.50 read
    1 and the 50 above read 2/3: AP = (51 + 100/3) / 101 = 253/303.
    At the 7 thresholds .65-.95 (c misses): TP, FP, FP -> recall stays .5: AP = 51/101.
    Class 0 mAP = (3 * 253/303 + 7 * 51/101) / 10 = 61/101.
    Class 1 has an object but no detection: AP 0. Class 2 has no ground truth: left out.
    mAP = (61/101 + 0) / 2 = 61/202; AP50 = (253/303 + 0) / 2 = 253/606.
    """
    result = coco_map(GROUND_TRUTH, DETECTIONS, num_classes=3)
    assert result["map"] == pytest.approx(61 / 202, abs=1e-12)
    assert result["ap50"] == pytest.approx(253 / 606, abs=1e-12)
    assert result["per_class"][0] == pytest.approx(61 / 101, abs=1e-12)
    assert result["per_class"][1] == 0.0
    assert result["per_class"][2] is None


def test_perfect_detections_score_one_and_wrong_class_scores_zero():
    perfect = [
        {"boxes": g["boxes"], "labels": g["labels"], "scores": np.ones(len(g["labels"]))}
        for g in GROUND_TRUTH
    ]
    assert coco_map(GROUND_TRUTH, perfect, 3)["map"] == pytest.approx(1.0)
    wrong = [{**d, "labels": (d["labels"] + 1) % 2} for d in perfect]
    assert coco_map(GROUND_TRUTH, wrong, 3)["map"] == 0.0


def test_iou_xywh():
    ious = iou_xywh(np.array([[0, 0, 10, 6.2]]), np.array([[0, 0, 10, 10], [20, 20, 5, 5]]))
    assert ious[0, 0] == pytest.approx(0.62)
    assert ious[0, 1] == 0.0


def test_decode_softmax_drops_no_object_and_sigmoid_takes_top_pairs():
    # DETR: 2 queries, 2 classes + no object.
    logits = np.array([[[0.0, 3.0, 0.0], [0.0, 0.0, 5.0]]])
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]]], np.float32)
    dets = decode(logits, boxes, no_object_class=True)[0]
    assert dets["labels"].tolist() == [1, 0]  # query 0 (class 1) first: higher score
    p = np.exp(3) / (np.exp(3) + 2)
    assert dets["scores"][0] == pytest.approx(p, rel=1e-6)
    px = to_pixels({"boxes": dets["boxes"][:1]}, width=100, height=50)["boxes"][0]
    assert px.tolist() == pytest.approx([40.0, 15.0, 20.0, 20.0])
    # Deformable DETR: sigmoid per class; the best (query, class) pairs across queries.
    sig = np.array([[[2.0, -1.0], [-3.0, 1.0]]])
    dets = decode(sig, boxes, no_object_class=False, max_dets=3)[0]
    assert dets["labels"].tolist() == [0, 1, 1]
    assert dets["scores"][0] == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-6)


def _oracle(data):
    """A predictor that outputs each image's ground truth; evaluation visits images in order,
    so a running counter (wrapping around for a second pass) says which image comes next."""
    seen = [0]

    def predict(x):
        n = x.shape[0]
        logits = np.full((n, 10, 11), -10.0, np.float32)
        logits[..., -1] = 10.0  # "no object" unless a ground truth object is put there
        boxes = np.full((n, 10, 4), 0.05, np.float32)
        for b in range(n):
            i = (seen[0] + b) % len(data)
            h, w = data.images[i].shape[:2]
            for q, ((x0, y0, bw, bh), lab) in enumerate(
                zip(data.targets[i]["boxes"], data.targets[i]["labels"], strict=True)
            ):
                boxes[b, q] = [(x0 + bw / 2) / w, (y0 + bh / 2) / h, bw / w, bh / h]
                logits[b, q, lab], logits[b, q, -1] = 10.0, -10.0
        seen[0] += n
        return logits, boxes

    return predict


def test_evaluate_detector_with_an_oracle_and_a_teacher(tiny_data):
    kw = {
        "input_size": (3, 96, 96),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "no_object_class": True,
        "batch_size": 4,
    }
    result = evaluate_detector(_oracle(tiny_data), tiny_data, reference=_oracle(tiny_data), **kw)
    assert result["map"] == pytest.approx(100.0, abs=0.01)
    assert result["agreement"] == pytest.approx(100.0, abs=0.01)
    assert result["n"] == len(tiny_data) and result["objects"] == tiny_data.num_objects

    def blind(x):  # finds nothing
        logits = np.zeros((x.shape[0], 10, 11), np.float32)
        logits[..., -1] = 10.0
        return logits, np.full((x.shape[0], 10, 4), 0.5, np.float32)

    result = evaluate_detector(blind, tiny_data, reference=_oracle(tiny_data), **kw)
    assert result["map"] < 1.0 and result["agreement"] < 1.0


@pytest.fixture(scope="module")
def tiny_data():
    from tvc.data.detection import load_detection

    return load_detection("fashion-mnist-det", "test", limit=12)
