"""Transformer-safe INT8 post-training quantization of ONNX models, with an accuracy gate.

Built on ONNX Runtime's quantization tooling (`onnxruntime.quantization`). What tvc adds:

- **Safe placement.** By default (`ops="safe"`) only the inputs of the Linear layers are quantized:
  MatMul/Gemm/Conv nodes whose weight is a constant (qkv, proj, fc1, fc2, the head and the patch
  embedding). LayerNorm, Softmax, GELU (Erf), the residual Adds and the attention matmuls between
  two activations stay in float. Quantizing those is what collapses ViT accuracy; `ops="all"` does
  it anyway (ONNX Runtime's default, kept to show what it costs).
- **One Q/DQ model for every runtime.** Weights int8 symmetric per output channel, activations
  int8 symmetric per tensor, zero points 0, biases in float: the explicit-quantization form that
  TensorRT 10 and 11 build from (checked by tvc.export.trt_rules) and that ONNX Runtime's CPU
  kernels fuse. One detail makes the CPU path fast: ORT only fuses DQ -> Gemm -> (float) into
  its integer QGemm when the Gemm has no float bias, so each quantized Gemm's bias is moved into
  a separate Add (TensorRT fuses it back). Without that, ORT dequantizes the weights and runs
  the float Gemm: no speed-up.
- **Accuracy gate.** `quantize_with_gate` measures the INT8 model against the FP32 one; when the
  loss exceeds the budget it ranks layers by how much quantizing each one alone hurts, keeps the
  most sensitive ones in float until the budget holds, and fails loudly when it cannot.

Dynamic INT8 (`quantize_dynamic`) quantizes activations at run time (uint8); it needs no
calibration and is often the fastest on ORT CPU, but TensorRT cannot run it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import (
    AccuracyBudgetError,
    ConfigError,
    DataError,
    UnsupportedModelError,
    first_line,
)

if TYPE_CHECKING:
    from onnx import ModelProto

    from tvc.data.base import ImageSet

log = logging.getLogger("tvc")

MODES = ("static", "dynamic")
OPS = ("safe", "all")
CALIB_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
LINEAR_OPS = ("MatMul", "Gemm", "Conv")  # ops with weights: the Linear layers and patch embed
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_CALIB_CHUNK_IMAGES = 16  # images whose activations are held in memory at once while calibrating
_PARITY_IMAGES = 64


@dataclass
class QuantConfig:
    mode: str = "static"  # static | dynamic
    calib_size: int = 512
    calib_method: str = "minmax"  # minmax | percentile | entropy
    budget: float = 0.5  # max top-1 points lost
    ops: str = "safe"  # safe: Linear-layer inputs only; all: every op ORT can quantize
    allow_accuracy_drop: bool = False
    seed: int = 0
    percentile: float = 99.999  # for calib_method="percentile"
    sensitivity_samples: int = 128  # images used to rank layers in the accuracy gate
    max_float_layers: int | None = None  # stop falling back after this many layers (None: all)

    def validate(self) -> None:
        def bad(what: str, fix: str) -> ConfigError:
            return ConfigError(what, fix)

        if self.mode not in MODES:
            raise bad(f"unknown INT8 mode '{self.mode}'", "use static or dynamic")
        if self.ops not in OPS:
            raise bad(f"unknown --int8-ops '{self.ops}'", "use safe (default) or all")
        if self.calib_method not in CALIB_METHODS:
            raise bad(
                f"unknown --calib-method '{self.calib_method}'",
                f"use one of: {', '.join(CALIB_METHODS)}",
            )
        if self.calib_size < 1:
            raise bad(f"--calib-size must be >= 1, got {self.calib_size}", "e.g. --calib-size 512")
        if not self.budget >= 0:  # also catches NaN
            raise bad(
                f"--int8-budget must be >= 0 points, got {self.budget}", "e.g. --int8-budget 0.5"
            )
        if not 0 < self.percentile <= 100:
            raise bad(f"percentile must be in (0, 100], got {self.percentile}", "e.g. 99.999")
        if self.sensitivity_samples < 1:
            raise bad(
                f"sensitivity_samples must be >= 1, got {self.sensitivity_samples}", "e.g. 128"
            )
        if self.max_float_layers is not None and self.max_float_layers < 0:
            raise bad(
                f"max_float_layers must be >= 0, got {self.max_float_layers}",
                "leave it unset to allow every layer",
            )


# ------------------------------------------------------------------------------ public API


def quantizable_nodes(model_path: str | Path, ops: str = "safe") -> list[str]:
    """Names of the nodes `ops` would quantize: the Linear layers ("safe") or every op ORT can
    quantize ("all"). Unnamed nodes get the names tvc gives them (`<OpType>_<index>`)."""
    if ops not in OPS:
        raise ConfigError(f"unknown --int8-ops '{ops}'", "use safe (default) or all")
    model = _prepare(_load(model_path))
    return _candidates(model, ops)


def quantize_static(
    fp32: str | Path,
    out: str | Path,
    calib: ImageSet,
    cfg: QuantConfig,
    *,
    exclude: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Calibrated INT8 Q/DQ model of `fp32` at `out`; returns a report (JSON-ready dict)."""
    cfg.validate()
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        job = _StaticJob(Path(fp32), Path(out), calib, cfg, list(exclude), Path(tmp))
        return job.run()


def quantize_dynamic(
    fp32: str | Path,
    out: str | Path,
    cfg: QuantConfig,
    *,
    exclude: list[str] | tuple[str, ...] = (),
    check_data: ImageSet | None = None,
) -> dict[str, Any]:
    """Dynamic INT8 (weights int8 per channel, activations quantized at run time) at `out`.

    Parity with FP32 is measured on `check_data` when given, else on seeded random inputs.
    """
    cfg.validate()
    fp32, out = Path(fp32), Path(out)
    t0 = time.perf_counter()
    model = _prepare(_load(fp32), gemm="matmul")
    nodes = _dynamic_nodes(model, cfg.ops)
    exclude = _check_names(exclude, _all_names(model))
    nodes = [n for n in nodes if n not in exclude]
    if not nodes:
        raise _no_layers(fp32, cfg.ops)
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _save(model, prepared)
        _run_dynamic(prepared, out, nodes, cfg)
    _check_model(out)
    inputs = _input_spec(model)
    x = _check_inputs(check_data, inputs, _PARITY_IMAGES, cfg.seed)
    parity = _Scorer(fp32, x).score(_load(out))
    report = {
        "mode": "dynamic",
        "format": "ONNX Runtime integer ops (DynamicQuantizeLinear + MatMulInteger)",
        "ops": cfg.ops,
        "weights": "int8 symmetric, per output channel",
        "activations": "uint8, range computed at run time per tensor",
        "quantized_nodes": nodes,
        "float_nodes": sorted(exclude),
        "parity": {**parity, "inputs": "check data" if check_data is not None else "random"},
        "trt_ready": False,
        "note": "dynamic INT8 runs on ONNX Runtime (CPU); TensorRT needs the static Q/DQ model",
        **_sizes(fp32, out),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return report


def quantize_with_gate(
    fp32: str | Path,
    out: str | Path,
    calib: ImageSet,
    cfg: QuantConfig,
    eval_data: ImageSet | None,
    *,
    latency: bool = True,
) -> dict[str, Any]:
    """Quantize (static, or dynamic when cfg.mode says so), then hold it to `cfg.budget`.

    The loss is measured in top-1 points on `eval_data` (labelled); without it, as top-1
    agreement with FP32 on the calibration images (100 - agreement %). Over budget, each
    quantized layer is scored by the logit error of a model with only that layer quantized,
    and the worst ones are kept in float, one at a time, until the budget holds. If it never
    holds: AccuracyBudgetError, unless `cfg.allow_accuracy_drop` (then 'budget_met': False).
    """
    cfg.validate()
    fp32, out = Path(fp32), Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        if cfg.mode == "static":
            job = _StaticJob(fp32, out, calib, cfg, [], Path(tmp))
            report = job.run()
            build = job.build_with_float
        else:
            report = quantize_dynamic(fp32, out, cfg)
            prepared = _save(_prepare(_load(fp32), gemm="matmul"), Path(tmp) / "prepared.onnx")

            def build(keep_float: set[str]) -> ModelProto:
                path = Path(tmp) / "probe.onnx"
                nodes = [n for n in report["quantized_nodes"] if n not in keep_float]
                _run_dynamic(prepared, path, nodes, cfg)
                return _load(path)

        quantized = report["quantized_nodes"]
        report.update(_gate(fp32, out, calib, cfg, eval_data, quantized, build))
    if report["float_layers"]:  # `out` was rewritten: describe the final model
        report["quantized_nodes"] = [n for n in quantized if n not in report["float_layers"]]
        report.update(_sizes(fp32, out))
        if cfg.mode == "static":
            from tvc.export.trt_rules import check_trt_qdq

            report["trt_violations"] = check_trt_qdq(out)
            report["trt_ready"] = not report["trt_violations"]
    if latency:
        report["latency_ms"] = _latency(fp32, out)
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


# ------------------------------------------------------------------------------ static job


class _StaticJob:
    """One static quantization: prepare, calibrate, quantize; can rebuild with layers in float."""

    def __init__(
        self,
        fp32: Path,
        out: Path,
        calib: ImageSet,
        cfg: QuantConfig,
        exclude: list[str],
        tmp: Path,
    ) -> None:
        self.fp32, self.out, self.calib, self.cfg, self.tmp = fp32, out, calib, cfg, tmp
        # The safe setting moves Gemm biases into Adds so ORT's CPU kernels fuse (see top).
        self.prepared = _prepare(_load(fp32), gemm="split_bias" if cfg.ops == "safe" else "keep")
        self.exclude = _check_names(exclude, _all_names(self.prepared))
        self.qdq: ModelProto | None = None

    def run(self) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        candidates = [n for n in _candidates(self.prepared, cfg.ops) if n not in self.exclude]
        if not candidates:
            raise _no_layers(self.fp32, cfg.ops)
        inputs = _input_spec(self.prepared)
        x = _calibration_images(self.calib, cfg, inputs)
        prepared_path = _save(self.prepared, self.tmp / "prepared.onnx")
        _run_static(prepared_path, self.out, x, inputs, cfg, candidates, self.exclude)
        self.qdq = _load(self.out)
        if cfg.ops == "safe":
            self.qdq = _float_for_bystanders(self.qdq, self.prepared, set(candidates), self.out)
        _check_model(self.out)  # the file as it ships, after any rewiring
        quantized = _quantized_nodes(self.qdq)
        if not quantized:
            raise _no_layers(self.fp32, cfg.ops)
        from tvc.export.trt_rules import check_trt_qdq

        violations = check_trt_qdq(self.out)
        parity = _Scorer(self.fp32, x[:_PARITY_IMAGES]).score(self.qdq)
        calib_info = {
            "data": getattr(self.calib, "name", "?"),
            "split": getattr(self.calib, "split", "?"),
            "size": len(x),
            "method": cfg.calib_method,
            "seed": cfg.seed,
        }
        if cfg.calib_method == "percentile":
            calib_info["percentile"] = cfg.percentile
        return {
            "mode": "static",
            "format": "QDQ",
            "ops": cfg.ops,
            "weights": "int8 symmetric (zero point 0), per output channel",
            "activations": "int8 symmetric (zero point 0), per tensor",
            "calibration": calib_info,
            "quantized_nodes": quantized,
            "quantized_op_types": dict(Counter(_op_types(self.qdq, quantized))),
            "float_op_types": _float_op_types(self.qdq, set(quantized)),
            "float_nodes": sorted(self.exclude),
            "parity": {**parity, "inputs": "calibration images"},
            "trt_ready": not violations,
            "trt_violations": violations,
            **_sizes(self.fp32, self.out),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def build_with_float(self, keep_float: set[str]) -> ModelProto:
        """The quantized model with the nodes in `keep_float` computing in float again."""
        assert self.qdq is not None, "run() first"
        return keep_in_float(self.qdq, self.prepared, keep_float)


# ------------------------------------------------------------------------------ accuracy gate


def _gate(
    fp32: Path,
    out: Path,
    calib: ImageSet,
    cfg: QuantConfig,
    eval_data: ImageSet | None,
    quantized: list[str],
    build,
) -> dict[str, Any]:
    """Measure the model at `out`; fall back layers to float (rewriting `out`) until in budget."""
    labelled = eval_data is not None
    data = eval_data if labelled else calib
    if len(data) == 0:
        raise DataError(
            f"{data.name} {data.split} has no images to evaluate the INT8 model on",
            "pass --eval-data with images",
        )
    inputs = _input_spec(_load(fp32, weights=False))
    _check_image_size(data, inputs, "evaluation")
    judge = _Judge(fp32, data, labelled, cfg)
    before = judge.measure(_load(out))
    result: dict[str, Any] = {
        "metric": "top1" if labelled else "agreement",
        "eval_data": {"name": data.name, "split": data.split, "n": len(data), "labelled": labelled},
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
    probe = _Scorer(fp32, judge.sensitivity_images())
    scores = []
    for name in quantized:  # quantize one layer at a time
        err = probe.score(build(set(quantized) - {name}))
        scores.append({"node": name, "nmse": err["nmse"], "agreement": err["agreement"]})
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
            _save(model, out)
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
        _check_model(out)
    return result


class _Judge:
    """Scores models against FP32 on one data set: top-1 drop or 100 - agreement."""

    def __init__(self, fp32: Path, data: ImageSet, labelled: bool, cfg: QuantConfig) -> None:
        self.data, self.labelled, self.cfg = data, labelled, cfg
        self.labels = np.asarray(data.labels)
        self.ref = _predict_all(_session(_load(fp32)), data)
        self.fp32_top1 = 100.0 * float(np.mean(self.ref.argmax(1) == self.labels))
        self.fp32_score = round(self.fp32_top1, 3) if labelled else 100.0

    def measure(self, model: ModelProto) -> dict[str, Any]:
        logits = _predict_all(_session(model), self.data)
        top1 = 100.0 * float(np.mean(logits.argmax(1) == self.labels))
        errs = _logit_errors(self.ref, logits)
        score = top1 if self.labelled else errs["agreement"]
        return {
            "score": round(score, 3),
            "drop": round(self.fp32_score - score, 3),
            "top1": round(top1, 3),
            **errs,
        }

    def sensitivity_images(self) -> np.ndarray:
        from tvc.data.base import seeded_subset

        idx = seeded_subset(len(self.data), self.cfg.sensitivity_samples, self.cfg.seed)
        return self.data.take(idx)[0]


class _Scorer:
    """Logit error of candidate models against FP32 on a fixed array of images."""

    def __init__(self, fp32: Path, x: np.ndarray) -> None:
        self.x = x
        self.ref = _predict_array(_session(_load(fp32)), x)

    def score(self, model: ModelProto) -> dict[str, float]:
        return _logit_errors(self.ref, _predict_array(_session(model), self.x))


def _logit_errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    diff = (got.astype(np.float64) - ref.astype(np.float64)).reshape(len(ref), -1)
    energy = float(np.mean(ref.astype(np.float64) ** 2)) or 1.0
    return {
        "agreement": round(100.0 * float(np.mean(ref.argmax(1) == got.argmax(1))), 3),
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
        "mean_abs_diff": float(np.abs(diff).mean()) if diff.size else 0.0,
        "nmse": float(np.mean(diff**2) / energy),  # logit MSE relative to the logits' power
        "n": len(ref),
    }


def _latency(fp32: Path, out: Path) -> dict[str, float]:
    """A short, single-thread, interleaved latency check (indicative; `tvc bench` measures)."""
    from tvc.runtime.bench import LatencyStats
    from tvc.runtime.ort import OrtRunner

    runners = {"fp32": OrtRunner(fp32, threads=1), "int8": OrtRunner(out, threads=1)}
    feeds = {k: r.sample_feeds(1) for k, r in runners.items()}
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for k, r in runners.items():  # warm up
        for _ in range(3):
            r.infer(feeds[k])
    for _ in range(10):
        for k, r in runners.items():
            for _ in range(3):
                t0 = time.perf_counter()
                r.infer(feeds[k])
                samples[k].append(time.perf_counter() - t0)
    p50 = {k: LatencyStats.from_samples(v).p50 for k, v in samples.items()}
    return {
        "fp32_p50": round(p50["fp32"], 3),
        "int8_p50": round(p50["int8"], 3),
        "speedup": round(p50["fp32"] / p50["int8"], 2),
        "threads": 1,
        "batch": 1,
    }


# ------------------------------------------------------------------------------ ORT calls


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's quantizer warns on the root logger and prints progress; keep the CLI readable."""
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(old)


def _run_static(
    prepared: Path,
    out: Path,
    x: np.ndarray,
    inputs: _InputSpec,
    cfg: QuantConfig,
    nodes: list[str],
    exclude: list[str],
) -> None:
    from onnxruntime import quantization as oq

    reader = _CalibrationReader(x, inputs)
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,  # zero point 0: what TensorRT requires
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,
        "QuantizeBias": False,  # TensorRT cannot parse int32 bias DQ; biases stay float
    }
    if cfg.calib_method == "percentile":
        extra["CalibPercentile"] = cfg.percentile
    stride = reader.stride(_CALIB_CHUNK_IMAGES)
    if stride < len(reader):  # calibrate in chunks so activations of all images never pile up
        extra["CalibStridedMinMax"] = stride
    kwargs: dict[str, Any] = {}
    if cfg.ops == "safe":
        # Only the Linear layers' inputs; their outputs (feeding residual Adds, GELU, attention)
        # stay float.
        kwargs.update(op_types_to_quantize=list(LINEAR_OPS), nodes_to_quantize=nodes)
        extra["OpTypesToExcludeOutputQuantization"] = list(LINEAR_OPS)
    else:
        kwargs.update(nodes_to_exclude=exclude)
    try:
        with _quiet_ort():
            oq.quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=oq.QuantFormat.QDQ,
                per_channel=True,
                activation_type=oq.QuantType.QInt8,
                weight_type=oq.QuantType.QInt8,
                calibrate_method=getattr(oq.CalibrationMethod, CALIB_METHODS[cfg.calib_method]),
                extra_options=extra,
                **kwargs,
            )
    except (DataError, ConfigError):
        raise
    except Exception as exc:  # ORT raises plain Exceptions/ValueErrors of many kinds
        first = first_line(exc)
        raise UnsupportedModelError(
            f"ONNX Runtime could not quantize {prepared.name}: {first}",
            "try --calib-method minmax, --int8-ops safe, or --int8 dynamic",
        ) from exc


def _run_dynamic(prepared: Path, out: Path, nodes: list[str], cfg: QuantConfig) -> None:
    from onnxruntime import quantization as oq

    try:
        with _quiet_ort():
            oq.quantize_dynamic(
                str(prepared),
                str(out),
                weight_type=oq.QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gemm"] if cfg.ops == "safe" else None,
                nodes_to_quantize=nodes,
                extra_options={"MatMulConstBOnly": True},
            )
    except Exception as exc:
        first = first_line(exc)
        raise UnsupportedModelError(
            f"ONNX Runtime could not quantize {prepared.name} dynamically: {first}",
            "try --int8 static",
        ) from exc


class _CalibrationReader:
    """Feeds calibration batches to ORT; supports ORT's strided (chunked) calibration.

    Duck-typed like onnxruntime.quantization.CalibrationDataReader (ORT only calls get_next,
    and len/set_range for strided calibration).
    """

    def __init__(self, x: np.ndarray, inputs: _InputSpec) -> None:
        b = inputs.fixed_batch or min(8, len(x))
        pad = (-len(x)) % b
        if pad:  # a fixed-batch model needs full batches: repeat the last images
            x = np.concatenate([x, x[-1:].repeat(pad, axis=0)])
        self.batch = b
        self.items = [{inputs.name: x[i : i + b]} for i in range(0, len(x), b)]
        self.start, self.end = 0, len(self.items)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.items)

    def stride(self, images: int) -> int:
        """The largest number of items <= `images` worth that divides the item count."""
        want = max(1, images // self.batch)
        return max(d for d in range(1, min(want, len(self.items)) + 1) if len(self.items) % d == 0)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._pos = start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= min(self.end, len(self.items)):
            return None
        item = self.items[self._pos]
        self._pos += 1
        return item


# ------------------------------------------------------------------------------ graph helpers


def _load(path: str | Path, *, weights: bool = True) -> ModelProto:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX model {path} does not exist", "check the path")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:
        raise ConfigError(
            f"{path} is not a readable ONNX model ({exc})",
            "pass the model.onnx written by 'tvc export'",
        ) from exc


def _save(model: ModelProto, path: Path) -> Path:
    import onnx

    onnx.save(model, str(path))
    return path


def _check_model(path: Path) -> None:
    import onnx

    from tvc.errors import ExportError

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"the INT8 model fails onnx.checker: {first}", "report this model; try --int8-ops safe"
        ) from exc


def _constants(model: ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return names


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_linear(node, consts: set[str]) -> bool:
    """A Linear-like layer: MatMul/Gemm/Conv whose weight (input 1) is a constant."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.input) < 2 or node.input[1] not in consts:
        return False
    return not (node.op_type == "Gemm" and _attr(node, "transA", 0))


def _candidates(model: ModelProto, ops: str) -> list[str]:
    if ops == "safe":
        consts = _constants(model)
        return [n.name for n in model.graph.node if _is_linear(n, consts)]
    from onnxruntime.quantization.registry import QDQRegistry

    return [
        n.name
        for n in model.graph.node
        if n.op_type in QDQRegistry
        or n.op_type in ("Add", "Mul", "Softmax", "Concat", "Sigmoid", "LeakyRelu")
    ]


def _dynamic_nodes(model: ModelProto, ops: str) -> list[str]:
    consts = _constants(model)
    if ops == "safe":  # Conv would become ConvInteger, slow on ORT CPU: Linear layers only
        return [n.name for n in model.graph.node if _is_linear(n, consts) and n.op_type != "Conv"]
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [n.name for n in model.graph.node if n.op_type in IntegerOpsRegistry]


def _all_names(model: ModelProto) -> list[str]:
    return [n.name for n in model.graph.node]


def _check_names(names, known: list[str]) -> list[str]:
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean: {', '.join(close)}?" if close else "list them with Netron"
            raise ConfigError(f"the model has no node named '{name}' to keep in float", hint)
    return list(dict.fromkeys(names))


def _prepare(model: ModelProto, *, gemm: str = "keep") -> ModelProto:
    """A copy with unique node names, and the Linear Gemms rewritten for the quantizer:

    - "split_bias" (static): the bias moves into a separate Add. ORT's CPU kernels fuse
      DQ -> Gemm into the integer QGemm only when the Gemm has no float bias, and TensorRT cannot
      parse an int32 (quantized) bias; a float Add serves both.
    - "matmul" (dynamic): Gemm -> MatMul (+ Add). ORT's dynamic quantizer only handles MatMul and
      would otherwise do this rewrite itself under new node names.
    - "keep": unchanged.
    """
    from onnx import ModelProto as _MP
    from onnx import helper, numpy_helper

    copy = _MP()
    copy.CopyFrom(model)
    graph = copy.graph
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    if gemm == "keep":
        return copy
    consts = _constants(copy)
    inits = {t.name: t for t in graph.initializer}

    def add_const(array: np.ndarray, name: str) -> str:
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    new_nodes = []
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        bias = node.input[2] if len(node.input) > 2 else ""
        if not (node.op_type == "Gemm" and _is_linear(node, consts) and weight in inits):
            new_nodes.append(node)
            continue
        if (bias and bias not in inits) or (gemm == "split_bias" and not bias):
            new_nodes.append(node)
            continue
        alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
        out = node.output[0]
        core_out = f"{out}_nobias" if bias else out
        if gemm == "matmul":
            w = numpy_helper.to_array(inits[weight])
            w = (w.T if _attr(node, "transB", 0) else w) * np.float32(alpha)
            w_name = add_const(w, f"{weight}_kn_{node.name}")
            new_nodes.append(
                helper.make_node("MatMul", [node.input[0], w_name], [core_out], name=node.name)
            )
        else:
            attrs = {
                a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "beta"
            }
            new_nodes.append(
                helper.make_node(
                    "Gemm", [node.input[0], weight], [core_out], name=node.name, **attrs
                )
            )
        if bias:
            if beta != 1.0:
                b = numpy_helper.to_array(inits[bias]) * np.float32(beta)
                bias = add_const(b, f"{bias}_times_beta_{node.name}")
            new_nodes.append(
                helper.make_node("Add", [core_out, bias], [out], name=f"{node.name}_bias")
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(copy)  # drops weights only the rewritten Gemms used
    return copy


def _float_for_bystanders(
    qdq: ModelProto, fp32: ModelProto, linears: set[str], path: Path
) -> ModelProto:
    """Point every other reader of a quantized activation back at the float tensor.

    ONNX Runtime inserts one Q/DQ pair per activation and hands the dequantized copy to all its
    readers, not only the Linear it quantized for. In a post-norm transformer (DETR) a
    LayerNorm's output feeds both the q/k/v Linears and the residual Add, so the residual
    stream would carry INT8 rounding error through every layer. Only the Linears should read
    the Q/DQ copy; this rewires the rest (Adds, Shapes, ...) and saves the result to `path`.
    """
    producers = {o: n for n in qdq.graph.node for o in n.output}
    activation_dq = {
        n.output[0]
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear"
        and getattr(producers.get(n.input[0]), "op_type", None) == "QuantizeLinear"
    }
    bystanders = {
        n.name
        for n in qdq.graph.node
        if n.op_type not in _QDQ_OPS
        and n.name not in linears
        and any(i in activation_dq for i in n.input)
    }
    if not bystanders:
        return qdq
    log.debug("%d non-Linear readers of quantized activations kept in float", len(bystanders))
    fixed = keep_in_float(qdq, fp32, bystanders)
    _save(fixed, path)
    return fixed


def _quantized_nodes(model: ModelProto) -> list[str]:
    """Compute nodes that read at least one DequantizeLinear output."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in _QDQ_OPS and any(i in dq_out for i in n.input)
    ]


def _op_types(model: ModelProto, names: list[str]) -> list[str]:
    by_name = {n.name: n.op_type for n in model.graph.node}
    return [by_name[n] for n in names]


def _float_op_types(model: ModelProto, quantized: set[str]) -> list[str]:
    skip = {
        *_QDQ_OPS,
        "Shape",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Split",
        "Constant",
        "ConstantOfShape",
        "Equal",
        "Where",
        "Expand",
        "Slice",
        "Cast",
        "Flatten",
        "Identity",
    }
    return sorted(
        {n.op_type for n in model.graph.node if n.name not in quantized and n.op_type not in skip}
    )


def keep_in_float(qdq: ModelProto, fp32: ModelProto, names: set[str]) -> ModelProto:
    """`qdq` with the nodes in `names` reading float inputs again (from the FP32 graph `fp32`,
    which must be the graph `qdq` was quantized from). Q/DQ nodes left unused are removed."""
    from onnx import ModelProto as _MP

    model = _MP()
    model.CopyFrom(qdq)
    graph = model.graph
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = {t.name: t for t in fp32.graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    available = (
        producers.keys() | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    )
    added: set[str] = set()
    for node in graph.node:
        if node.name not in names:
            continue
        original = fp_nodes[node.name]
        for i, (now, before) in enumerate(zip(node.input, original.input, strict=False)):
            if now == before:
                continue
            if before in available:
                node.input[i] = before
            elif before in fp_inits:  # a weight ORT replaced by its int8 copy
                if before not in added:
                    graph.initializer.append(fp_inits[before])
                    added.add(before)
                node.input[i] = before
            else:  # follow DQ <- Q back to the float tensor
                dq = producers.get(now)
                q = producers.get(dq.input[0]) if dq is not None else None
                if dq is None or dq.op_type != "DequantizeLinear" or q is None:
                    raise UnsupportedModelError(
                        f"cannot restore the float input '{before}' of node '{node.name}'",
                        "exclude the node before quantizing instead",
                    )
                node.input[i] = q.input[0]
    _prune(model)
    return model


def _prune(model: ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers no node uses."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name not in dropped]  # old IRs list weights as inputs
    del graph.input[:]
    graph.input.extend(inputs)


# ------------------------------------------------------------------------------ data helpers


@dataclass
class _InputSpec:
    name: str
    fixed_batch: int | None  # None: dynamic batch
    chw: tuple[int | None, ...]  # (C, H, W); None for a dynamic dimension


def _input_spec(model: ModelProto) -> _InputSpec:
    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        raise UnsupportedModelError(
            f"INT8 calibration needs a model with one image input, this one has {len(real)}",
            "export a classifier with a single input",
        )
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in real[0].type.tensor_type.shape.dim
    ]
    if len(dims) != 4:
        raise UnsupportedModelError(
            f"the model input has rank {len(dims)}; INT8 calibration expects images (N, C, H, W)",
            "export a vision model taking NCHW images",
        )
    return _InputSpec(real[0].name, dims[0], tuple(dims[1:]))


def _check_image_size(data: ImageSet, inputs: _InputSpec, what: str) -> None:
    size = tuple(getattr(data, "input_size", ()) or ())
    if not size:
        return
    if any(want is not None and got != want for got, want in zip(size, inputs.chw, strict=False)):
        fmt = "x".join(str(d) if d else "?" for d in inputs.chw)
        raise DataError(
            f"the {what} images are {'x'.join(map(str, size))} but the model expects {fmt}",
            "load the data at the model's input size (tvc does this for DATA specs it loads)",
        )


def _calibration_images(calib: ImageSet, cfg: QuantConfig, inputs: _InputSpec) -> np.ndarray:
    from tvc.data.base import seeded_subset

    if calib is None or len(calib) == 0:
        name = getattr(calib, "name", "the calibration set")
        raise DataError(
            f"{name} has no images to calibrate on", "pass --calib with at least one image"
        )
    _check_image_size(calib, inputs, "calibration")
    x, _ = calib.take(seeded_subset(len(calib), cfg.calib_size, cfg.seed))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if any(
        want is not None and got != want for got, want in zip(x.shape[1:], inputs.chw, strict=False)
    ):
        raise DataError(
            f"calibration images have shape {x.shape[1:]}, the model expects {inputs.chw}",
            "load the data at the model's input size",
        )
    return x


def _check_inputs(data: ImageSet | None, inputs: _InputSpec, n: int, seed: int) -> np.ndarray:
    if data is not None and len(data):
        from tvc.data.base import seeded_subset

        _check_image_size(data, inputs, "check")
        return data.take(seeded_subset(len(data), n, seed))[0]
    if any(d is None for d in inputs.chw):
        raise DataError(
            "the model input has dynamic image dimensions",
            "pass check_data to compare the INT8 model",
        )
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, *inputs.chw)).astype(np.float32)


def _session(model: ModelProto):
    """An ORT CPU session on an in-memory model, with its input facts for batching."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return sess, _input_spec(model)


def _predict_array(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    sess, spec = session
    b = spec.fixed_batch or batch
    outs = []
    for start in range(0, len(x), b):
        chunk = x[start : start + b]
        n = len(chunk)
        if spec.fixed_batch and n < b:  # pad the last chunk of a fixed-batch model
            chunk = np.concatenate([chunk, chunk[-1:].repeat(b - n, axis=0)])
        outs.append(sess.run(None, {spec.name: chunk})[0][:n])
    return np.concatenate(outs).reshape(len(x), -1)


def _predict_all(session, data: ImageSet) -> np.ndarray:
    return np.concatenate([_predict_array(session, x) for x, _ in data.batches(64)])


def _sizes(fp32: Path, out: Path) -> dict[str, Any]:
    a, b = fp32.stat().st_size, out.stat().st_size
    return {"size_bytes": b, "fp32_size_bytes": a, "size_ratio": round(a / b, 2) if b else None}


def _no_layers(path: Path, ops: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{path.name} has no layers to quantize with --int8-ops {ops} (no MatMul/Gemm/Conv with "
        "constant weights)",
        "quantize a transformer or CNN exported by 'tvc export'",
    )


__all__ = [
    "QuantConfig",
    "keep_in_float",
    "quantizable_nodes",
    "quantize_dynamic",
    "quantize_static",
    "quantize_with_gate",
]
