"""How closely one detector's outputs follow another's on the same inputs, in units a user reads:
box coordinates in input pixels, IoU, and class scores as the model itself scores them.

Queries keep their place between a model and its export (FP16, INT8 change the arithmetic, not
the order of the queries), so query i of the candidate is matched to query i of the reference.
Box errors are measured on the reference's confident queries (best object score >= a threshold),
the ones a user sees as detections; when a reference has none (an untrained model), each image's
top-scoring query stands in, and the record says so.

Scores are what the model's decoder reads: a softmax over every class column, "no object"
included, for DETR; an independent sigmoid per class for Deformable DETR (where a softmax over a
one-class head would always be 1, and its difference always 0).

numpy only: this also runs on a board, against ONNX Runtime or TensorRT outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFIDENT = 0.5  # a reference query with this best object score counts as a detection

# The most a variant may differ from FP32 before the export warns (and records the miss):
# mean box-coordinate error as a fraction of the input side (at least MIN_PX pixels), the mean
# IoU of matched boxes, and the mean difference of the detections' scores (the reference class
# of each confident query). The largest difference over every query and class is recorded, not
# held: one query of a trained DETR flipping between two classes moves it by 0.5 under INT8
# while mAP holds.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp16": {"box_fraction": 0.002, "iou_mean": 0.98, "detection_score_mean_abs_diff": 0.01},
    "int8": {"box_fraction": 0.01, "iou_mean": 0.9, "detection_score_mean_abs_diff": 0.05},
}
MIN_PX = {"fp16": 0.25, "int8": 1.0}


def class_scores(logits: np.ndarray, *, sigmoid: bool) -> np.ndarray:
    """Per-query class scores: sigmoid per class, or softmax over every column."""
    x = np.asarray(logits, np.float64)
    if sigmoid:
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _xyxy_px(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised cxcywh -> x0, y0, x1, y1 in pixels of the model's input."""
    b = np.asarray(boxes, np.float64)
    scale = np.array([width, height, width, height], np.float64)
    return (
        np.stack(
            [
                b[..., 0] - b[..., 2] / 2,
                b[..., 1] - b[..., 3] / 2,
                b[..., 0] + b[..., 2] / 2,
                b[..., 1] + b[..., 3] / 2,
            ],
            axis=-1,
        )
        * scale
    )


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each row of `a` with the same row of `b` (xyxy)."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 1.0)


def box_parity(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    *,
    sigmoid: bool,
    width: int,
    height: int,
    confident: float = CONFIDENT,
) -> dict[str, Any]:
    """Score and box differences of `candidate` against `reference` ({"logits", "boxes"}):
    scores over all queries, boxes (pixels of a width x height input) and IoU over the
    reference's confident queries. See the module docstring."""
    ref_s = class_scores(reference["logits"], sigmoid=sigmoid)
    got_s = class_scores(candidate["logits"], sigmoid=sigmoid)
    score_diff = np.abs(got_s - ref_s)
    objects = ref_s if sigmoid else ref_s[..., :-1]  # DETR's last column is "no object"
    best = objects.max(-1) if objects.shape[-1] else np.zeros(objects.shape[:-1])  # (B, Q)
    picked = best >= confident
    basis = f"reference queries scoring >= {confident:g}"
    if not picked.any():
        picked = np.zeros_like(picked)
        picked[np.arange(len(best)), best.argmax(-1)] = True
        basis = f"each image's top reference query (no query scores >= {confident:g})"
    # the score of each picked query's reference class, as the decoder reads it
    cls = objects.argmax(-1)[..., None]
    picked_diff = np.abs(
        np.take_along_axis(got_s, cls, -1)[..., 0] - np.take_along_axis(ref_s, cls, -1)[..., 0]
    )[picked]
    ref_b = _xyxy_px(reference["boxes"], width, height)[picked]
    got_b = _xyxy_px(candidate["boxes"], width, height)[picked]
    err = np.abs(got_b - ref_b)
    iou = _pair_iou(ref_b, got_b)
    return {
        "score": "sigmoid per class" if sigmoid else "softmax over all classes",
        "scores_max_abs_diff": float(score_diff.max()) if score_diff.size else 0.0,
        "scores_mean_abs_diff": float(score_diff.mean()) if score_diff.size else 0.0,
        "detection_score_mean_abs_diff": float(picked_diff.mean()) if picked_diff.size else 0.0,
        "detection_score_max_abs_diff": float(picked_diff.max()) if picked_diff.size else 0.0,
        "boxes_compared": int(picked.sum()),
        "boxes_basis": basis,
        "input_px": [int(width), int(height)],
        "boxes_px_max_abs_diff": float(err.max()) if err.size else 0.0,
        "boxes_px_mean_abs_diff": float(err.mean()) if err.size else 0.0,
        "iou_mean": float(iou.mean()) if iou.size else 1.0,
        "iou_min": float(iou.min()) if iou.size else 1.0,
    }


def tolerance(precision: str, width: int, height: int) -> dict[str, float] | None:
    """The limits a `precision` ("fp16", "int8") variant is held to, for this input size."""
    limits = TOLERANCES.get(precision)
    if limits is None:
        return None
    side = max(width, height)
    return {
        "boxes_px_mean_abs_diff": round(max(MIN_PX[precision], limits["box_fraction"] * side), 3),
        "iou_mean": limits["iou_mean"],
        "detection_score_mean_abs_diff": limits["detection_score_mean_abs_diff"],
    }


def exceeded(record: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """What in a box_parity record is outside `limits` (tolerance()), in words."""
    out = []
    px = record["boxes_px_mean_abs_diff"]
    if px > limits["boxes_px_mean_abs_diff"]:
        out.append(
            f"mean box error {px:.2f} px > {limits['boxes_px_mean_abs_diff']:g} px "
            f"(max {record['boxes_px_max_abs_diff']:.2f} px)"
        )
    if record["iou_mean"] < limits["iou_mean"]:
        out.append(f"mean IoU {record['iou_mean']:.3f} < {limits['iou_mean']:g}")
    score = record["detection_score_mean_abs_diff"]
    if score > limits["detection_score_mean_abs_diff"]:
        out.append(
            f"mean detection score difference {score:.3f} > "
            f"{limits['detection_score_mean_abs_diff']:g} ({record['score']})"
        )
    return out
