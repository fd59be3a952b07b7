"""The trivial detector a trained one must beat: a fixed grid of mean-size boxes, all labelled
with the most common class, the same for every image.

Its statistics (mean box size relative to the image, mean object count, most common class) come
from a training split; its COCO mAP is measured on the evaluation images like any model's. A
detector whose mAP is not clearly above it has learned little beyond "objects of this size are
somewhere". numpy only.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.eval.detection import MAX_DETS, coco_map

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet

SMALL_SPLIT = 50  # evaluation images below which mAP says little


def box_stats(data: DetectionSet) -> dict[str, Any] | None:
    """Mean box width/height as fractions of their image, mean objects per image and the most
    common class of `data`; None when it holds no objects."""
    rel, labels = [], []
    for img, t in zip(data.images, data.targets, strict=True):
        h, w = img.shape[:2]
        b = np.asarray(t["boxes"], np.float64).reshape(-1, 4)
        rel.append(b[:, 2:] / np.array([w, h], np.float64))
        labels.extend(int(x) for x in np.asarray(t["labels"]).reshape(-1))
    if not labels:
        return None
    size = np.concatenate(rel).mean(0)
    label, _ = Counter(labels).most_common(1)[0]
    return {
        "box_w": float(size[0]),
        "box_h": float(size[1]),
        "objects_per_image": len(labels) / max(1, len(data)),
        "label": label,
        "class": data.class_names[label] if label < len(data.class_names) else str(label),
    }


def grid_detections(stats: dict[str, Any], width: int, height: int) -> dict[str, np.ndarray]:
    """The baseline's detections on one width x height image: a g x g grid of mean-size boxes
    centred in its cells, g = ceil(sqrt(mean objects per image)) (at most MAX_DETS boxes)."""
    g = max(1, min(math.isqrt(MAX_DETS), math.ceil(math.sqrt(stats["objects_per_image"]))))
    centres = (np.arange(g) + 0.5) / g
    cx, cy = np.meshgrid(centres * width, centres * height)
    bw, bh = stats["box_w"] * width, stats["box_h"] * height
    boxes = np.stack(
        [cx.ravel() - bw / 2, cy.ravel() - bh / 2, np.full(g * g, bw), np.full(g * g, bh)], axis=1
    )
    return {
        "boxes": boxes,
        "scores": np.ones(g * g, np.float32),
        "labels": np.full(g * g, stats["label"], np.int64),
    }


def grid_baseline(stats_set: DetectionSet, eval_set: DetectionSet) -> dict[str, Any] | None:
    """COCO mAP / AP50 (percent) of the grid baseline built from `stats_set`'s statistics, on
    `eval_set`; None when `stats_set` has no objects to learn a box size from."""
    stats = box_stats(stats_set)
    if stats is None:
        return None
    dets = [grid_detections(stats, img.shape[1], img.shape[0]) for img in eval_set.images]
    scores = coco_map(eval_set.targets, dets, len(eval_set.class_names))
    g = math.isqrt(len(dets[0]["labels"])) if dets else 0
    return {
        "map": round(100 * scores["map"], 2),
        "ap50": round(100 * scores["ap50"], 2),
        "grid": g,
        "box_size": [round(stats["box_w"], 4), round(stats["box_h"], 4)],
        "class": stats["class"],
        "stats_from": f"{stats_set.name} {stats_set.split} split ({len(stats_set)} images)",
        "n": len(eval_set),
    }
