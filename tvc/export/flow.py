"""`tvc export`: one artifact holding every deployable form of a model.

    MODEL or model artifact --export_into--> model.onnx (FP32, parity-checked)
    ONNX artifact           --copied-------> model.onnx
                             then, as asked: model.fp16.onnx, model.int8.onnx (Q/DQ, accuracy
                             gate), model.int8dyn.onnx, model.engine (TensorRT, built here)

Everything is staged and committed atomically. When TensorRT is asked for but not installed, the
ONNX variants are still written together with a ready `trtexec` command for the board, and the
command ends with an error that says what to install.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvc.artifact import Artifact, is_artifact, load_artifact, write_artifact
from tvc.errors import ConfigError, MissingDependencyError
from tvc.export.onnx import MODEL_FILE, OnnxExportConfig, export_into
from tvc.export.tensorrt import TRTEXEC_SCRIPT

log = logging.getLogger("tvc")

FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"
INT8_DYNAMIC_FILE = "model.int8dyn.onnx"
ENGINE_FILE = "model.engine"


@dataclass
class Int8Request:
    mode: str  # static | dynamic
    calib: str | None = None  # DATA spec for calibration (static)
    calib_size: int = 512
    calib_method: str = "minmax"
    budget: float = 0.5
    allow_accuracy_drop: bool = False
    ops: str = "safe"
    eval_data: str | None = None  # DATA for the accuracy gate; default: calib's val split
    eval_limit: int | None = 2000

    def validate(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise ConfigError(
                f"--int8 {self.mode} is unknown", "use --int8 static or --int8 dynamic"
            )
        if self.mode == "static" and not self.calib:
            raise ConfigError(
                "static INT8 needs calibration data",
                "pass --calib DATA (e.g. --calib fashion-mnist), or use --int8 dynamic",
            )
        if self.budget < 0:
            raise ConfigError(
                f"--int8-budget must be >= 0 points, got {self.budget}", "e.g. --int8-budget 0.5"
            )
        if self.calib_size < 1:
            raise ConfigError(
                f"--calib-size must be >= 1, got {self.calib_size}", "e.g. --calib-size 512"
            )


@dataclass
class ExportRequest:
    onnx: OnnxExportConfig = field(default_factory=OnnxExportConfig)
    fp16: bool = False
    int8: Int8Request | None = None
    trt: dict[str, Any] | None = None  # EngineConfig fields when --trt is given

    def spec(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"stage": "export", **asdict(self)}


def run_export(model: str, out: Path, req: ExportRequest, model_kwargs: dict) -> Artifact:
    """Produce the export artifact at `out`; see the module docstring."""
    if req.int8:
        req.int8.validate()
    req.onnx.validate()
    source_onnx = _onnx_source(model)
    trt_missing: MissingDependencyError | None = None
    if source_onnx is not None:
        parent, loaded = source_onnx, None
    else:
        from tvc.models import load_model

        loaded = load_model(model, **model_kwargs)
        parent = loaded.artifact
    with write_artifact(out, "onnx", parent=parent, spec=req.spec()) as w:
        if loaded is not None:
            export_into(w, loaded, req.onnx)
        else:
            _copy_fp32(source_onnx, w)
        fp32 = w.path_for(MODEL_FILE)
        variants = w.meta.setdefault("variants", {MODEL_FILE: {"precision": "fp32"}})
        if req.fp16:
            from tvc.export.fp16 import convert_fp16

            log.info("writing the FP16 variant")
            # Real images make the overflow scan meaningful; random ones are the fallback.
            sample = None
            if req.int8 and req.int8.calib:
                batch = w.meta["io"]["inputs"][0]["shape"][0]
                n = (
                    batch if isinstance(batch, int) else 16
                )  # a fixed-batch model takes only its own
                sample = next(_model_data(w, req.int8.calib, "train", n).batches(n))[0]
            report = convert_fp16(fp32, w.path_for(FP16_FILE), sample=sample)
            variants[FP16_FILE] = {"precision": "fp16", **report}
        if req.int8:
            variants.update(_int8(fp32, w, req.int8))
        if req.trt is not None:
            trt_missing = _engine(w, req)
    art = load_artifact(out)
    if trt_missing is not None:
        raise MissingDependencyError(
            f"{trt_missing.problem}; the ONNX variants are in {out} and a ready trtexec command "
            f"that builds the same engine is in {out / TRTEXEC_SCRIPT}",
            "run that command on the board, or install TensorRT here: pip install 'tvc[trt]'",
        )
    return art


def _onnx_source(model: str) -> Artifact | None:
    if not is_artifact(model):
        return None
    art = load_artifact(model)
    return art if art.kind == "onnx" else None


def _copy_fp32(src: Artifact, w) -> None:
    shutil.copy2(src.file(MODEL_FILE), w.path_for(MODEL_FILE))
    for key in ("model", "io", "precision"):
        if key in src.meta:
            w.meta[key] = src.meta[key]
    w.meta["metrics"].update(src.meta.get("metrics", {}))
    w.meta["variants"] = {
        MODEL_FILE: src.meta.get("variants", {}).get(MODEL_FILE, {"precision": "fp32"})
    }


def _model_data(w, spec: str, split: str, limit: int | None):
    from tvc.data import load_images

    info = w.meta.get("model") or {}
    if not info:
        raise ConfigError(
            "the ONNX artifact records no model input facts (size, mean, std)",
            "export it with tvc export from a model",
        )
    return load_images(
        spec,
        split,
        input_size=tuple(info["input_size"]),
        mean=tuple(info["mean"]),
        std=tuple(info["std"]),
        limit=limit,
        seed=0,
    )


def _int8(fp32: Path, w, r: Int8Request) -> dict[str, Any]:
    from tvc.compress.quantize import QuantConfig, quantize_dynamic, quantize_with_gate
    from tvc.export.trt_rules import check_trt_qdq

    cfg = QuantConfig(
        mode=r.mode,
        calib_size=r.calib_size,
        calib_method=r.calib_method,
        budget=r.budget,
        ops=r.ops,
        allow_accuracy_drop=r.allow_accuracy_drop,
    )
    if r.mode == "dynamic":
        log.info("writing the dynamic INT8 variant")
        report = quantize_dynamic(fp32, w.path_for(INT8_DYNAMIC_FILE), cfg)
        return {INT8_DYNAMIC_FILE: {"precision": "int8-dynamic", **report}}
    log.info("calibrating static INT8 on %d images of %s", r.calib_size, r.calib)
    calib = _model_data(w, r.calib, "train", r.calib_size)
    eval_spec = r.eval_data or r.calib
    evaluation = _model_data(w, eval_spec, "val" if r.eval_data is None else "test", r.eval_limit)
    report = quantize_with_gate(fp32, w.path_for(INT8_FILE), calib, cfg, evaluation)
    violations = check_trt_qdq(w.path_for(INT8_FILE))
    for v in violations:
        log.warning("TensorRT explicit-quantization rule: %s", v)
    report["trt_readiness"] = {"ok": not violations, "violations": violations}
    report["calibration"] = {**report.get("calibration", {}), "data": r.calib, "split": "train"}
    return {INT8_FILE: {"precision": "int8-qdq", **report}}


def _engine(w, req: ExportRequest) -> MissingDependencyError | None:
    """Build the engine from the ONNX variant matching the precision; return the error if no TRT.

    build_engine checks the engine against ONNX Runtime itself and fails loudly on a mismatch.
    """
    from tvc.export.tensorrt import (
        EngineConfig,
        build_engine,
        onnx_input,
        trtexec_command,
        write_trtexec_script,
    )

    precision = "int8" if req.int8 and req.int8.mode == "static" else "fp16" if req.fp16 else "fp32"
    source = {"int8": INT8_FILE, "fp16": FP16_FILE, "fp32": MODEL_FILE}[precision]
    cfg = EngineConfig(precision=precision, **req.trt)
    name, shape = onnx_input(w.path_for(source))
    # The script runs on the board from inside the artifact directory.
    cmd = trtexec_command(Path(source), Path(ENGINE_FILE), cfg, input_name=name, input_shape=shape)
    write_trtexec_script(w.staging, f'cd "$(dirname "$0")"\n{cmd}')
    try:
        engine_meta = build_engine(w.path_for(source), w.path_for(ENGINE_FILE), cfg)
    except MissingDependencyError as exc:
        return exc
    w.meta["engine"] = {**engine_meta, "source": source}
    w.meta["variants"][ENGINE_FILE] = {"precision": f"trt-{precision}"}
    return None
