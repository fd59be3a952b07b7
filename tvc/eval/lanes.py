"""Lane quality: the TuSimple benchmark (accuracy, FP, FN, F1) and lane-shape errors.

`tusimple_image` follows TuSimple's official `LaneEval.bench` for one image:

- each ground-truth lane gets a threshold of `20 px * width / 1280` (TuSimple's 20 px scaled to
  the image width) divided by cos(angle), the angle of a straight line fitted to its points;
- a predicted lane's accuracy against it is the share of the h_samples rows where
  |x_pred - x_gt| < threshold, rows where both are absent (-2) counting as hits;
- each ground-truth lane takes its best prediction; it is matched when that reaches 0.85;
  FN = unmatched ground truth, FP = predictions - matched;
- image accuracy = the sum of best accuracies / max(min(4, #gt), 1); with more than 4 lanes the
  worst is dropped (and one FN forgiven); more than #gt + 2 predictions scores 0 with FN 1.

Dataset accuracy, FP and FN are means over images (FP over predictions, FN over ground truth
lanes, per image, as TuSimple does); F1 = 2 (1 - FP)(1 - FN) / ((1 - FP) + (1 - FN)), as LSTR
reports it. Values are in percent. numpy only, so it runs on a board against ONNX Runtime output.

Model outputs (`logits` (B, Q, 2), `curves` (B, Q, 8), see tvc.models.lstr) are decoded by
`decode`: queries whose lane probability (softmax column 1) passes `threshold` become lanes,
evaluated at the image's h_samples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.data.lanes import curve_points, curve_x

if TYPE_CHECKING:
    from tvc.data.lanes import LaneSet

PIXEL_THRESH = 20.0  # at TuSimple's 1280 px width
REFERENCE_WIDTH = 1280.0
PT_THRESH = 0.85
SCORE_THRESHOLD = 0.5


def _angle(xs: np.ndarray, ys: np.ndarray) -> float:
    ok = xs >= 0
    if ok.sum() > 1:
        slope = np.polyfit(ys[ok], xs[ok], 1)[0]  # x = slope * y + c, as TuSimple's regression
        return float(np.arctan(slope))
    return 0.0


def line_accuracy(pred: np.ndarray, gt: np.ndarray, thresh: float) -> float:
    pred = np.where(np.asarray(pred, np.float64) >= 0, pred, -100.0)
    gt = np.where(np.asarray(gt, np.float64) >= 0, gt, -100.0)
    return float(np.sum(np.abs(pred - gt) < thresh) / len(gt))


def tusimple_image(pred: np.ndarray, gt: np.ndarray, ys: np.ndarray, width: float
                   ) -> tuple[float, float, float, int]:  # fmt: skip
    """(accuracy, FP rate, FN rate, matched) of one image in [0, 1]; pred (P, S), gt (G, S)."""
    pred = np.asarray(pred, np.float64).reshape(-1, len(ys))
    gt = np.asarray(gt, np.float64).reshape(-1, len(ys))
    ys = np.asarray(ys, np.float64)
    if len(gt) + 2 < len(pred):
        return 0.0, 0.0, 1.0, 0
    pixel = PIXEL_THRESH * width / REFERENCE_WIDTH
    threshs = [pixel / np.cos(_angle(g, ys)) for g in gt]
    accs, fn, matched = [], 0.0, 0
    for g, t in zip(gt, threshs, strict=True):
        best = max((line_accuracy(p, g, t) for p in pred), default=0.0)
        if best < PT_THRESH:
            fn += 1
        else:
            matched += 1
        accs.append(best)
    fp = len(pred) - matched
    if len(gt) > 4 and fn > 0:
        fn -= 1
    s = sum(accs)
    if len(gt) > 4:
        s -= min(accs)
    acc = s / max(min(4.0, len(gt)), 1.0)
    return (acc, fp / len(pred) if len(pred) else 0.0, fn / max(min(len(gt), 4.0), 1.0), matched)


def f1_score(fp: float, fn: float) -> float:
    """LSTR's F1 from TuSimple's FP and FN rates (fractions)."""
    p, r = 1 - fp, 1 - fn
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def tusimple_metrics(preds: list[np.ndarray], gts: list[np.ndarray], ys: list[np.ndarray],
                     widths: list[float]) -> dict[str, float]:  # fmt: skip
    """Accuracy, FP, FN and F1 (percent) over images."""
    if not gts:
        return {"accuracy": 0.0, "fp": 0.0, "fn": 0.0, "f1": 0.0, "n": 0}
    rows = [tusimple_image(p, g, y, w) for p, g, y, w in zip(preds, gts, ys, widths, strict=True)]
    acc, fp, fn = (float(np.mean([r[i] for r in rows])) for i in range(3))
    return {"accuracy": 100 * acc, "fp": 100 * fp, "fn": 100 * fn, "f1": 100 * f1_score(fp, fn),
            "n": len(rows)}  # fmt: skip


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lane_scores(logits: np.ndarray) -> np.ndarray:
    """Probability that each query is a lane: (B, Q)."""
    return _softmax(np.asarray(logits, np.float64))[..., 1]


def decode(logits: np.ndarray, curves: np.ndarray, ys: np.ndarray, width: int, height: int,
           threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One image's lanes: (x (P, S) pixels or -2 at rows `ys`, kept query indices).

    logits (Q, 2), curves (Q, 8) of one image. Lanes with no visible point are dropped."""
    from tvc.data.lanes import curve_points

    keep = np.flatnonzero(lane_scores(logits[None])[0] >= threshold)
    xs = curve_points(np.asarray(curves)[keep], ys, width, height)
    visible = (xs >= 0).any(1)
    return xs[visible], keep[visible]


def shape_errors(matched: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]]
                 ) -> dict[str, float]:  # fmt: skip
    """Lane-shape errors over matched lanes, given as (predicted params (8,), gt x (S,), rows
    (S,), width, height): the errors of the vertical start (lower) and end (upper) and the mean
    |x| error of the predicted curve on the ground truth's rows, all in pixels."""
    if not matched:
        return {}
    start, end, x_err = [], [], []
    for params, gx, ys, width, height in matched:
        valid = gx >= 0
        yv = ys[valid]
        start.append(abs(params[0] * height - yv.min()))
        end.append(abs(params[1] * height - yv.max()))
        with np.errstate(all="ignore"):
            px = curve_x(np.asarray(params, np.float64)[None], yv[None] / height)[0] * width
        x_err.append(float(np.nanmean(np.abs(px - gx[valid]))))
    return {
        "start_error_px": float(np.mean(start)),
        "end_error_px": float(np.mean(end)),
        "x_error_px": float(np.nanmean(x_err)),
    }


def evaluate_lanes(predict: Callable[[np.ndarray], dict[str, np.ndarray]], data: LaneSet, *,
                   input_size, mean, std, batch_size: int = 64, threshold: float = SCORE_THRESHOLD,
                   reference: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """TuSimple metrics of `predict` (batch -> {"logits", "curves"}) on `data`, plus lane-shape
    errors of the predictions that matched a ground-truth lane, and, with `reference`, how far
    its curves are from the reference's (pixels) and how often their lane decisions agree."""
    preds, gts, ys_all, widths, matched = [], [], [], [], []
    curve_diff, agree, total = [], 0, 0
    for x, _targets, pos in data.batches(batch_size, input_size=input_size, mean=mean, std=std):
        out = predict(x)
        ref = reference(x) if reference is not None else None
        for j, i in enumerate(pos):
            h, w = data.images[i].shape[:2]
            ys = np.asarray(data.h_samples[i], np.float64)
            lanes, kept = decode(out["logits"][j], out["curves"][j], ys, w, h, threshold)
            gt = np.asarray(data.lanes[i], np.float64).reshape(-1, len(ys))
            preds.append(lanes)
            gts.append(gt)
            ys_all.append(ys)
            widths.append(float(w))
            thresh = PIXEL_THRESH * w / REFERENCE_WIDTH
            for g in gt:
                if not len(lanes):
                    break
                accs = [line_accuracy(p, g, thresh / np.cos(_angle(g, ys))) for p in lanes]
                best = int(np.argmax(accs))
                if accs[best] >= PT_THRESH:
                    matched.append((out["curves"][j][kept[best]], g, ys, w, h))
            if ref is not None:
                a = lane_scores(out["logits"][j : j + 1])[0] >= threshold
                b = lane_scores(ref["logits"][j : j + 1])[0] >= threshold
                agree += int((a == b).sum())
                total += len(a)
                both = np.flatnonzero(a & b)
                if len(both):
                    pa = curve_points(out["curves"][j][both], ys, w, h)
                    pb = curve_points(ref["curves"][j][both], ys, w, h)
                    ok = (pa >= 0) & (pb >= 0)
                    if ok.any():
                        curve_diff.append(float(np.abs(pa - pb)[ok].max()))
    metrics: dict[str, Any] = tusimple_metrics(preds, gts, ys_all, widths)
    metrics.update(shape_errors(matched))
    metrics["lanes"] = int(sum(len(g) for g in gts))
    metrics["predicted"] = int(sum(len(p) for p in preds))
    if reference is not None:
        metrics["agreement"] = agree / max(total, 1)
        metrics["curve_max_px_vs_reference"] = max(curve_diff) if curve_diff else 0.0
    return metrics
