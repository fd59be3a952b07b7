"""Issue 16: object queries sized from the data, on a dense one-class set.

    .venv/bin/python benchmarks/bench_det_queries.py make DIR          # write the set (COCO)
    .venv/bin/python benchmarks/bench_det_queries.py recall ART [ART ...] --data DIR

`make` writes a one-class COCO set ("files" layout) made from tvc's built-in scene generator's
ingredients: real Fashion-MNIST garments, cropped to their pixels, scaled small (0.35-0.5) and
pasted without much overlap, up to 36 (about 30) per 144x96 canvas, not square, so letterboxing
matters too. Every object is class "object".

`recall` prints, for each detector artifact, recall@100 (the share of ground-truth objects that
one of the image's best 100 detections finds, at IoU 0.5 and averaged over IoU .50:.95, as
COCO's AR@100) and mAP on the test split, each artifact evaluated with its own preprocessing,
and the ceiling its query count puts on recall (a query yields one object).
Train the artifacts with `tvc train detr_micro --data DIR ...` before and after the change.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

CANVAS_HW = (96, 144)
OBJECTS = (24, 36)
SCALE = (0.35, 0.5)
SIZES = {"train": 400, "val": 20, "test": 60}


def dense_split(split: str, n: int, seed: int = 0):
    """`n` canvases of many small garments, all of the one class "object"."""
    from tvc.data import detection as det
    from tvc.data import fashion_mnist

    objects, _labels = fashion_mnist.load_split(fashion_mnist.DEFAULT_DIR, split)
    h_max, w_max = CANVAS_HW
    images, targets = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, det._SPLIT_CODE[split], i])
        canvas = np.zeros(CANVAS_HW, np.uint8)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
            obj = det._tight_crop(objects[int(rng.integers(len(objects)))])
            s = rng.uniform(*SCALE)
            obj = det._tight_crop(
                det.resize_bilinear(
                    obj, max(4, round(obj.shape[0] * s)), max(4, round(obj.shape[1] * s))
                )
            )
            h, w = obj.shape
            for _attempt in range(30):
                y, x = int(rng.integers(0, h_max - h + 1)), int(rng.integers(0, w_max - w + 1))
                box = [float(x), float(y), float(w), float(h)]
                if all(det._iou_xywh(box, b) <= 0.05 for b in boxes):
                    region = canvas[y : y + h, x : x + w]
                    np.maximum(region, obj, out=region)
                    boxes.append(box)
                    break
        images.append(np.repeat(canvas[:, :, None], 3, axis=2))
        targets.append(
            {
                "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.zeros(len(boxes), np.int64),
            }
        )
    return det.DetectionSet("dense-1class", split, ["object"], images, targets)


def recall_at(gt: list[dict], dets: list[dict], iou: float, max_dets: int = 100) -> float:
    """The share of ground-truth boxes matched (COCO's greedy matching) by the best
    `max_dets` detections of their image, at IoU >= `iou`."""
    from tvc.eval.detection import _match, iou_xywh

    found = total = 0
    for g, d in zip(gt, dets, strict=True):
        order = np.argsort(-np.asarray(d["scores"]), kind="mergesort")[:max_dets]
        total += len(g["boxes"])
        if len(order) and len(g["boxes"]):
            matched = _match(iou_xywh(np.asarray(d["boxes"])[order], g["boxes"]), iou)
            found += int(matched.sum())
    return found / max(1, total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    make = sub.add_parser("make")
    make.add_argument("out")
    rec = sub.add_parser("recall")
    rec.add_argument("artifacts", nargs="+")
    rec.add_argument("--data", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "make":
        from tvc.data.detection import write_coco

        for split, n in SIZES.items():
            data = dense_split(split, n)
            path = write_coco(data, args.out)
            counts = [len(t["labels"]) for t in data.targets]
            print(f"{path}: {n} images, {min(counts)}-{max(counts)} objects per image")
        return 0
    from tvc.data.detection import load_detection
    from tvc.eval.detection import (
        IOU_THRESHOLDS,
        coco_map,
        predict_detections,
        resize_of,
    )
    from tvc.models import load_model
    from tvc.models.detection import torch_predictor

    test = load_detection(args.data, "test")
    for art in args.artifacts:
        loaded = load_model(art)
        info = loaded.info
        dets = predict_detections(
            torch_predictor(loaded.model.eval()),
            test,
            input_size=info.input_size,
            mean=info.mean,
            std=info.std,
            no_object_class=bool(loaded.model.no_object_class),
            resize=resize_of(info),
            pixel_mask=True,
        )
        r50 = recall_at(test.targets, dets, 0.5)
        ar = float(np.mean([recall_at(test.targets, dets, t) for t in IOU_THRESHOLDS]))
        m = coco_map(test.targets, dets, len(test.class_names))
        q = int(loaded.model.num_queries)
        # one object per query: no detector with q queries can find more than this share
        ceiling = sum(min(q, len(t["labels"])) for t in test.targets) / max(1, test.num_objects)
        print(
            f"{art}: queries {loaded.model.num_queries}, classes {loaded.model.num_classes}, "
            f"resize {resize_of(info)}: recall@100 IoU.5 {100 * r50:.1f}%, "
            f"AR@100 {100 * ar:.1f}%, mAP {100 * m['map']:.2f}, AP50 {100 * m['ap50']:.2f} "
            f"on {len(test)} images ({test.num_objects} objects); recall ceiling of "
            f"{q} queries {100 * ceiling:.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
