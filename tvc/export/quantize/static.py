"""Static INT8: calibrated Q/DQ with the transformer-safe placement (see tvc.export.quantize)."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.export.quantize.calibration import calibration_images, run_static
from tvc.export.quantize.config import (
    PARITY_IMAGES,
    SMOOTH_IMAGES,
    QuantConfig,
    weight_bits,
    weight_range_used,
)
from tvc.export.quantize.graph import (
    all_names,
    check_model,
    check_names,
    float_for_bystanders,
    float_op_types,
    input_spec,
    keep_in_float,
    load_onnx,
    no_layers,
    op_types,
    prepare,
    quantize_candidates,
    quantized_nodes,
    save_onnx,
    sizes,
)
from tvc.export.quantize.scoring import Scorer
from tvc.export.quantize.smooth import smooth_layernorms

if TYPE_CHECKING:
    from onnx import ModelProto

    from tvc.data.base import ImageSet


def quantize_static(
    fp32: str | Path,
    out: str | Path,
    calib: ImageSet,
    cfg: QuantConfig,
    *,
    exclude: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Calibrated INT8 Q/DQ model of `fp32` at `out`; returns a report (JSON-ready dict).

    TensorRT readiness is not judged here: the export flow checks the file it ships, once."""
    cfg.validate()
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        job = StaticJob(Path(fp32), Path(out), calib, cfg, list(exclude), Path(tmp))
        return job.run()


class StaticJob:
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
        self.prepared = prepare(load_onnx(fp32), gemm="split_bias" if cfg.ops == "safe" else "keep")
        self.exclude = check_names(exclude, all_names(self.prepared))
        self.qdq: ModelProto | None = None

    def run(self) -> dict[str, Any]:
        cfg, t0 = self.cfg, time.perf_counter()
        candidates = [
            n for n in quantize_candidates(self.prepared, cfg.ops) if n not in self.exclude
        ]
        if not candidates:
            raise no_layers(self.fp32, cfg.ops)
        inputs = input_spec(self.prepared)
        x = calibration_images(self.calib, cfg, inputs)
        smoothing: dict[str, Any] = {"alpha": 0.0, "smoothed": []}
        if cfg.smooth_alpha > 0 and cfg.ops == "safe":
            from tvc.data.base import seeded_subset

            sample = x[seeded_subset(len(x), SMOOTH_IMAGES, cfg.seed)]  # spread over the classes
            self.prepared, smoothing = smooth_layernorms(
                self.prepared, sample, inputs, cfg.smooth_alpha
            )
            smoothing["images"] = len(sample)
        prepared_path = save_onnx(self.prepared, self.tmp / "prepared.onnx")
        run_static(prepared_path, self.out, x, inputs, cfg, candidates, self.exclude)
        self.qdq = load_onnx(self.out)
        if cfg.ops == "safe":
            self.qdq = float_for_bystanders(self.qdq, self.prepared, set(candidates), self.out)
        check_model(self.out)  # the file as it ships, after any rewiring
        quantized = quantized_nodes(self.qdq)
        if not quantized:
            raise no_layers(self.fp32, cfg.ops)
        parity = Scorer(self.fp32, x[:PARITY_IMAGES]).score(self.qdq)
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
            "weights": f"{weight_bits(cfg)} symmetric (zero point 0), per output channel",
            "weight_range": weight_range_used(cfg),
            "activations": "int8 symmetric (zero point 0), per tensor",
            "calibration": calib_info,
            "smoothing": smoothing,
            "quantized_nodes": quantized,
            "quantized_op_types": dict(Counter(op_types(self.qdq, quantized))),
            "float_op_types": float_op_types(self.qdq, set(quantized)),
            "float_nodes": sorted(self.exclude),
            "parity": {**parity, "inputs": "calibration images"},
            **sizes(self.fp32, self.out),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    def build_with_float(self, keep_float: set[str]) -> ModelProto:
        """The quantized model with the nodes in `keep_float` computing in float again."""
        assert self.qdq is not None, "run() first"
        return keep_in_float(self.qdq, self.prepared, keep_float)
