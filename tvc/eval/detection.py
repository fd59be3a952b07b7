"""Detection quality: COCO mAP@[.5:.95] and AP50, and agreement with a teacher's detections.

The evaluation follows pycocotools' COCOeval for boxes (area 'all', maxDets 100): per image and
class, detections are matched greedily by score to the unmatched ground truth box of highest
IoU >= t; per class, precision is made monotone and read at 101 recall points; AP is the mean
over those points, and mAP the mean over the 10 IoU thresholds .50:.05:.95 and the classes that
have ground truth. Written in numpy (no pycocotools build needed, and no torch), so it also runs
on a board against ONNX Runtime or TensorRT outputs.

Model outputs are decoded first: DETR's softmax logits carry a last "no object" column and give
one detection per query; Deformable DETR's sigmoid logits give the top (query, class) pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet
    from tvc.models.info import LoadedModel

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def decode(
    logits: np.ndarray,
    boxes: np.ndarray,
    *,
    no_object_class: bool,
    max_dets: int = MAX_DETS,
    score_threshold: float = 0.0,
    num_classes: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Per image: {"boxes" (n, 4) normalised cxcywh, "scores" (n,), "labels" (n,)}, best first.

    `logits` (B, Q, K[+1]) and `boxes` (B, Q, 4) are a detector's raw outputs. With
    `num_classes` (the data's), labels the data does not have are never emitted.
    """
    logits = np.asarray(logits, np.float64)
    out = []
    for lg, bx in zip(logits, np.asarray(boxes, np.float32), strict=True):
        if no_object_class:
            prob = _softmax(lg)[:, :-1]  # drop "no object"
            prob = prob[:, :num_classes] if num_classes is not None else prob
            labels = prob.argmax(1)
            scores = prob[np.arange(len(prob)), labels]
            query = np.arange(len(prob))
        else:
            prob = 1.0 / (1.0 + np.exp(-lg[:, :num_classes]))
            flat = prob.reshape(-1)
            top = np.argsort(-flat, kind="stable")[:max_dets]
            query, labels, scores = top // prob.shape[1], top % prob.shape[1], flat[top]
        order = np.argsort(-scores, kind="stable")[:max_dets]
        order = order[scores[order] >= score_threshold]
        out.append(
            {
                "boxes": bx[query[order]],
                "scores": scores[order].astype(np.float32),
                "labels": labels[order].astype(np.int64),
            }
        )
    return out


def to_pixels(dets: dict[str, np.ndarray], width: int, height: int) -> dict[str, np.ndarray]:
    """Normalised cxcywh boxes -> COCO [x, y, w, h] in pixels of a width x height image."""
    b = np.asarray(dets["boxes"], np.float64).reshape(-1, 4)
    xywh = np.stack(
        [
            (b[:, 0] - b[:, 2] / 2) * width,
            (b[:, 1] - b[:, 3] / 2) * height,
            b[:, 2] * width,
            b[:, 3] * height,
        ],
        axis=1,
    )
    return {**dets, "boxes": xywh}


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of [x, y, w, h] boxes, continuous coordinates as COCO."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0]
    )
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1]
    )
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(ious: np.ndarray, threshold: float) -> np.ndarray:
    """COCO's greedy matching: detections (rows, best first) take the best free gt (cols)."""
    taken = np.zeros(ious.shape[1], bool)
    tp = np.zeros(ious.shape[0], bool)
    floor = min(threshold, 1 - 1e-10)
    for d in range(ious.shape[0]):
        cand = np.where(taken, -1.0, ious[d])
        if not cand.size or cand.max() < floor:
            continue
        g = len(cand) - 1 - int(np.argmax(cand[::-1]))  # COCO keeps the last of equal maxima
        taken[g] = True
        tp[d] = True
    return tp


def coco_map(
    ground_truth: list[dict[str, np.ndarray]],
    detections: list[dict[str, np.ndarray]],
    num_classes: int,
    *,
    max_dets: int = MAX_DETS,
) -> dict[str, Any]:
    """COCO box AP over images: ground truth {"boxes" xywh px, "labels"}, detections also
    {"scores"}, both in the same image order. Returns fractions in [0, 1]:
    {"map", "ap50", "ap75", "per_class": [AP or None without ground truth]}."""
    if len(ground_truth) != len(detections):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists"
        )
    n_t = len(IOU_THRESHOLDS)
    ap = np.full((n_t, num_classes), np.nan)
    for k in range(num_classes):
        scores, tps, n_gt = [], [], 0
        for gt, dt in zip(ground_truth, detections, strict=True):
            g = np.asarray(gt["boxes"]).reshape(-1, 4)[np.asarray(gt["labels"]) == k]
            sel = np.asarray(dt["labels"]) == k
            d_boxes = np.asarray(dt["boxes"]).reshape(-1, 4)[sel]
            d_scores = np.asarray(dt["scores"], np.float64)[sel]
            order = np.argsort(-d_scores, kind="mergesort")[:max_dets]
            d_boxes, d_scores = d_boxes[order], d_scores[order]
            n_gt += len(g)
            if not len(d_boxes):
                continue
            ious = iou_xywh(d_boxes, g)
            tps.append(np.stack([_match(ious, t) for t in IOU_THRESHOLDS]))
            scores.append(d_scores)
        if n_gt == 0:
            continue  # a class without ground truth does not count (COCO: precision -1)
        if not scores:
            ap[:, k] = 0.0
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        tp = np.concatenate(tps, axis=1)[:, order]
        for t in range(n_t):
            ap[t, k] = _average_precision(tp[t], n_gt)
    valid = ~np.isnan(ap)
    return {
        "map": _mean_valid(ap),
        "ap50": _mean_valid(ap[0]),
        "ap75": _mean_valid(ap[5]),
        "per_class": [
            float(np.mean(ap[:, k])) if valid[:, k].all() else None for k in range(num_classes)
        ],
    }


def _mean_valid(ap: np.ndarray) -> float:
    """The mean over classes with ground truth (NaN marks the others); 0 when there are none."""
    keep = ~np.isnan(ap)
    return float(ap[keep].mean()) if keep.any() else 0.0


def _average_precision(tp: np.ndarray, n_gt: int) -> float:
    """Area under the 101-point interpolated precision/recall curve of one class."""
    tp_sum = np.cumsum(tp, dtype=np.float64)
    fp_sum = np.cumsum(~tp, dtype=np.float64)
    recall = tp_sum / n_gt
    precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone, as COCO does
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(q.mean())


# -------------------------------------------------------------------------- model evaluation


Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def predict_detections(
    predict: Predict,
    data,
    *,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    no_object_class: bool,
    batch_size: int = 16,
    score_threshold: float = 0.0,
    resize: str = "letterbox",
    pixel_mask: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Detections in pixels of each image of `data` (a DetectionSet), from predict(x) ->
    (logits, boxes), or predict(x, pixel_mask) with `pixel_mask` (the mask is None when no
    image of the batch is padded). Boxes map back through the letterbox to each image's own
    pixels; labels are limited to the data's classes."""
    from tvc.data.detection import canvas_extent

    out: list[dict[str, np.ndarray]] = []
    view = {"input_size": input_size, "mean": mean, "std": std, "resize": resize}
    for x, mask, _targets, pos in data.batches(batch_size, masks=True, **view):
        logits, boxes = predict(x, mask) if pixel_mask else predict(x)
        decoded = decode(
            logits,
            boxes,
            no_object_class=no_object_class,
            score_threshold=score_threshold,
            num_classes=len(data.class_names),
        )
        for i, dets in zip(pos, decoded, strict=True):
            h, w = data.images[i].shape[:2]
            ex, ey = canvas_extent((h, w), input_size[1:], resize)
            out.append(to_pixels(dets, w * ex, h * ey))
    return out


def evaluate_detector(
    predict: Predict,
    data,
    *,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    no_object_class: bool,
    batch_size: int = 16,
    reference: Predict | None = None,
    reference_no_object_class: bool | None = None,
    reference_preprocess: dict[str, Any] | None = None,
    reference_threshold: float = 0.5,
    resize: str = "letterbox",
    pixel_mask: bool = False,
) -> dict[str, Any]:
    """mAP and AP50 (percent) of a detector on `data`; with `reference` (a teacher), also the
    agreement: the mAP of this detector's detections measured against the teacher's detections
    that score >= `reference_threshold`, as if they were the ground truth. The reference sees
    the images prepared its own way when `reference_preprocess` (input_size, mean, std, resize)
    says so. `resize` and `pixel_mask` are as predict_detections takes them."""
    kw = {
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "batch_size": batch_size,
        "resize": resize,
        "pixel_mask": pixel_mask,
    }
    dets = predict_detections(predict, data, no_object_class=no_object_class, **kw)
    scores = coco_map(data.targets, dets, len(data.class_names))
    result: dict[str, Any] = {
        "map": round(100 * scores["map"], 2),
        "ap50": round(100 * scores["ap50"], 2),
        "ap75": round(100 * scores["ap75"], 2),
        "n": len(data),
        "objects": data.num_objects,
        "dataset": data.name,
        "split": data.split,
        "agreement": None,
    }
    if reference is not None:
        ref_no_obj = (
            no_object_class if reference_no_object_class is None else reference_no_object_class
        )
        ref_kw = {**kw, **(reference_preprocess or {})}
        teacher = predict_detections(
            reference,
            data,
            no_object_class=ref_no_obj,
            score_threshold=reference_threshold,
            **ref_kw,
        )
        if any(len(t["labels"]) for t in teacher):  # else there is nothing to agree with
            agree = coco_map(teacher, dets, len(data.class_names))
            result["agreement"] = round(100 * agree["map"], 2)
            result["agreement_ap50"] = round(100 * agree["ap50"], 2)
    return result


def evaluate_model(
    loaded: LoadedModel,
    data: DetectionSet,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    reference: LoadedModel | None = None,
) -> dict[str, Any]:
    """evaluate_detector() of a PyTorch detector (a LoadedModel) with its own preprocessing;
    `reference` (another detector LoadedModel, e.g. the teacher) adds the agreement."""
    from tvc.models.detection import torch_predictor
    from tvc.progress import Progress, counted, size_of

    info = loaded.info
    ref_kw: dict[str, Any] = {}
    if reference is not None:
        r = reference.info
        ref_kw = {
            "reference": torch_predictor(reference.model.to(device).eval(), device),
            "reference_no_object_class": bool(reference.model.no_object_class),
            "reference_preprocess": {
                "input_size": r.input_size,
                "mean": r.mean,
                "std": r.std,
                "resize": resize_of(r),
            },
        }
    with Progress() as bar:  # a bar on a terminal, plain lines in a log
        bar.task(f"evaluating {info.name}", size_of(data), unit="images")
        return evaluate_detector(
            counted(torch_predictor(loaded.model.to(device).eval(), device), bar),
            data,
            input_size=info.input_size,
            mean=info.mean,
            std=info.std,
            no_object_class=bool(loaded.model.no_object_class),
            batch_size=batch_size,
            resize=resize_of(info),
            pixel_mask=True,
            **ref_kw,
        )


def resize_of(info) -> str:
    """How a detector's images are resized: "letterbox" unless its record says otherwise
    (artifacts made before letterboxing stretched every image to the square input)."""
    return str(info.extra.get("resize", "stretch"))
