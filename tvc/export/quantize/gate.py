"""The INT8 accuracy gate: hold a quantized model to a budget, falling back layers to float."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tvc.errors import AccuracyBudgetError, DataError
from tvc.export.quantize.calibration import check_image_size
from tvc.export.quantize.config import QuantConfig
from tvc.export.quantize.dynamic import quantize_dynamic, run_dynamic
from tvc.export.quantize.graph import check_model, input_spec, load_onnx, prepare, save_onnx, sizes
from tvc.export.quantize.progress import step
from tvc.export.quantize.scoring import (
    Scorer,
    logit_errors,
    predict_all,
    predict_array,
    predict_outputs,
    session,
)
from tvc.export.quantize.static import StaticJob
from tvc.progress import counted

if TYPE_CHECKING:
    from onnx import ModelProto

    from tvc.data.base import ImageSet
    from tvc.tasks import Task

log = logging.getLogger("tvc")


def quantize_with_gate(
    fp32: str | Path,
    out: str | Path,
    calib: ImageSet,
    cfg: QuantConfig,
    eval_data: ImageSet | None,
    *,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Quantize (static, or dynamic when cfg.mode says so), then hold it to `cfg.budget`.

    `judge` scores a model against FP32 (the export flow passes a TaskJudge: the task's own
    metric on its own data). Without one the loss is measured in top-1 points on `eval_data`
    (labelled) or, without that, as top-1 agreement with FP32 on the calibration images
    (100 - agreement %). Over budget, each
    quantized layer is scored by the logit error of a model with only that layer quantized,
    and the worst ones are kept in float, one at a time, until the budget holds. If it never
    holds: AccuracyBudgetError, unless `cfg.allow_accuracy_drop` (then 'budget_met': False).
    """
    cfg.validate()
    fp32, out = Path(fp32), Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        if cfg.mode == "static":
            job = StaticJob(fp32, out, calib, cfg, [], Path(tmp))
            report = job.run()
            build = job.build_with_float
        else:
            report = quantize_dynamic(fp32, out, cfg)
            prepared = save_onnx(
                prepare(load_onnx(fp32), gemm="matmul"), Path(tmp) / "prepared.onnx"
            )

            def build(keep_float: set[str]) -> ModelProto:
                path = Path(tmp) / "probe.onnx"
                nodes = [n for n in report["quantized_nodes"] if n not in keep_float]
                run_dynamic(prepared, path, nodes, cfg)
                return load_onnx(path)

        quantized = report["quantized_nodes"]
        if judge is None:
            judge = _logit_judge(fp32, calib, cfg, eval_data)
        report.update(_gate(fp32, out, cfg, judge, quantized, build))
    if report["float_layers"]:  # `out` was rewritten: describe the final model
        report["quantized_nodes"] = [n for n in quantized if n not in report["float_layers"]]
        report.update(sizes(fp32, out))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if not report["budget_met"]:
        what = (
            f"the INT8 model loses {report['drop']:.2f} points ({report['metric']}) with "
            f"{len(report['float_layers'])} layer(s) kept in float, over the budget of "
            f"{cfg.budget:g}"
        )
        if not cfg.allow_accuracy_drop:
            raise AccuracyBudgetError(
                what,
                "raise --int8-budget, calibrate on more or better data (--calib-size, "
                "--calib-method percentile), or pass --allow-accuracy-drop to keep it anyway",
            )
        report["warning"] = what + " (kept because accuracy drop was allowed)"
        log.warning("INT8 ACCURACY BUDGET MISSED: %s", report["warning"])
    return report


def _gate(
    fp32: Path, out: Path, cfg: QuantConfig, judge: Judge, quantized: list[str], build
) -> dict[str, Any]:
    """Measure the model at `out`; fall back layers to float (rewriting `out`) until in budget."""
    before = judge.measure(load_onnx(out))
    result: dict[str, Any] = {
        "metric": judge.metric,
        "eval_data": judge.eval_data,
        "budget": cfg.budget,
        "accuracy": {
            "fp32": judge.fp32_score,
            "int8_before": before["score"],
            "int8": before["score"],
        },
        "drop_before": before["drop"],
        "drop": before["drop"],
        "float_layers": [],
        "sensitivity": [],
        "budget_met": before["drop"] <= cfg.budget,
        "int8_eval": before,
    }
    if result["budget_met"]:
        return result

    log.info(
        "INT8 loses %.2f points (budget %g): ranking %d layers by sensitivity",
        before["drop"],
        cfg.budget,
        len(quantized),
    )
    probe = Scorer(fp32, judge.sensitivity_images())
    scores = []
    with step(f"INT8 gate: ranking {len(quantized)} layers by sensitivity", len(quantized)) as bar:
        for name in quantized:  # quantize one layer at a time
            err = probe.score(build(set(quantized) - {name}))
            scores.append({"node": name, "nmse": err["nmse"], "agreement": err["agreement"]})
            bar.advance()
    scores.sort(key=lambda e: e["nmse"], reverse=True)
    result["sensitivity"] = scores[:20]

    limit = len(scores) if cfg.max_float_layers is None else min(cfg.max_float_layers, len(scores))
    best = before
    for k in range(1, limit + 1):
        keep = [s["node"] for s in scores[:k]]
        model = build(set(keep))
        measured = judge.measure(model)
        log.info("INT8 with %d layer(s) in float: drop %.2f", k, measured["drop"])
        if measured["drop"] < best["drop"] or measured["drop"] <= cfg.budget:
            best = measured
            save_onnx(model, out)
            result["float_layers"] = keep
        if measured["drop"] <= cfg.budget:
            break
    result.update(
        drop=best["drop"],
        budget_met=best["drop"] <= cfg.budget,
        int8_eval=best,
    )
    result["accuracy"]["int8"] = best["score"]
    if result["float_layers"]:
        check_model(out)
    return result


class Judge(Protocol):
    """Scores candidate INT8 models against the FP32 one on one data set."""

    metric: str  # what `score` is ("top1", "map", "agreement")
    fp32_score: float
    eval_data: dict[str, Any]  # name, split, n, labelled

    def measure(self, model: ModelProto) -> dict[str, Any]:
        """At least `score` and `drop` (fp32_score - score, in the metric's points)."""

    def sensitivity_images(self) -> np.ndarray:
        """Images on which single-layer quantization errors are ranked."""


def _logit_judge(
    fp32: Path, calib: ImageSet, cfg: QuantConfig, eval_data: ImageSet | None
) -> LogitJudge:
    labelled = eval_data is not None
    data = eval_data if labelled else calib
    if len(data) == 0:
        raise DataError(
            f"{data.name} {data.split} has no images to evaluate the INT8 model on",
            "pass --eval-data with images",
        )
    check_image_size(data, input_spec(load_onnx(fp32, weights=False)), "evaluation")
    return LogitJudge(fp32, data, labelled, cfg)


class LogitJudge:
    """Top-1 drop on labelled images, or 100 - top-1 agreement with FP32 on unlabelled ones."""

    def __init__(self, fp32: Path, data: ImageSet, labelled: bool, cfg: QuantConfig) -> None:
        self.data, self.labelled, self.cfg = data, labelled, cfg
        self.labels = np.asarray(data.labels)
        self.ref = predict_all(session(load_onnx(fp32)), data)
        fp32_top1 = 100.0 * float(np.mean(self.ref.argmax(1) == self.labels))
        self.fp32_score = round(fp32_top1, 3) if labelled else 100.0
        self.metric = "top1" if labelled else "agreement"
        self.eval_data = {"name": data.name, "split": data.split, "n": len(data),
                          "labelled": labelled}  # fmt: skip

    def measure(self, model: ModelProto) -> dict[str, Any]:
        n = len(self.data)
        with step(f"INT8 gate: measuring on {n} images", n) as bar:
            sess = session(model)
            predict = counted(lambda x: predict_array(sess, x), bar)
            logits = np.concatenate([predict(x) for x, _ in self.data.batches(64)])
        top1 = 100.0 * float(np.mean(logits.argmax(1) == self.labels))
        errs = logit_errors(self.ref, logits)
        score = top1 if self.labelled else errs["agreement"]
        return {
            "score": round(score, 3),
            "drop": round(self.fp32_score - score, 3),
            "top1": round(top1, 3),
            **errs,
        }

    def sensitivity_images(self) -> np.ndarray:
        return _subset(self.data, self.cfg)


class TaskJudge:
    """The task's own metric (`task.evaluate`) on the task's own data: top-1 for classifiers,
    COCO mAP for detectors. `images` is the same data as an image set (for layer ranking)."""

    def __init__(
        self,
        task: Task,
        fp32: Path,
        data: Any,
        images: ImageSet,
        cfg: QuantConfig,
        *,
        fp32_result: dict[str, Any] | None = None,
    ) -> None:
        self.task, self.data, self.images, self.cfg = task, data, images, cfg
        self.reference = _remembered(predict_outputs(load_onnx(fp32)))
        self.fp32 = fp32_result or task.evaluate(self.reference, data)
        self.metric = task.metric
        self.fp32_score = round(float(self.fp32[task.metric]), 3)
        self.eval_data = {"name": self.fp32.get("dataset"), "split": self.fp32.get("split"),
                          "n": self.fp32.get("n"), "labelled": True}  # fmt: skip

    def measure(self, model: ModelProto) -> dict[str, Any]:
        n = len(self.images)
        with step(f"INT8 gate: measuring on {n} images", n) as bar:
            predict = counted(predict_outputs(model), bar)
            result = self.task.evaluate(predict, self.data, reference=self.reference)
        score = float(result[self.metric])
        return {"score": round(score, 3), "drop": round(self.fp32_score - score, 3), **result}

    def sensitivity_images(self) -> np.ndarray:
        return _subset(self.images, self.cfg)


def _subset(data: ImageSet, cfg: QuantConfig) -> np.ndarray:
    from tvc.data.base import seeded_subset

    return data.take(seeded_subset(len(data), cfg.sensitivity_samples, cfg.seed))[0]


def _remembered(predict: Callable) -> Callable:
    """`predict` computing each distinct batch once: FP32 is the reference of every measure."""
    seen: dict[bytes, Any] = {}

    def run(x: np.ndarray):
        key = hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest()
        if key not in seen:
            seen[key] = predict(x)
        return seen[key]

    return run
