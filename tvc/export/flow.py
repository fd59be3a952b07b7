"""`tvc export`: one artifact holding every deployable form of a model, for every task.

    MODEL or model artifact --export_into--> model.onnx (FP32, parity-checked)
    ONNX artifact           --copied-------> model.onnx
                             then, as asked: model.fp16.onnx, model.int8.onnx (Q/DQ, accuracy
                             gate), model.int8dyn.onnx, model.engine (TensorRT, built here),
                             model.ort.onnx (ONNX Runtime's transformer fusions, --ort-optimize)

What differs between classifiers, detectors and the rest is asked of the task adapter: the graph
(tvc.export.onnx), calibration and evaluation data (`load_data`, `images`), the metric the INT8
gate holds to a budget (`evaluate`, `metric`), output agreement (`agreement`). Each INT8 variant
is checked against TensorRT's explicit-quantization rules once, stored as `trt_readiness`. A task
whose model reads tokens (`input_kind`, iGPT) gets its variants from tvc.export.token_variants.

Everything is staged and committed atomically. When TensorRT is asked for but not installed, the
ONNX variants are still written together with a ready `trtexec` command for the board, and the
command ends with an error that says what to install.
"""

from __future__ import annotations

import logging
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.artifact import Artifact, is_artifact, load_artifact, write_artifact
from tvc.errors import ConfigError, MissingDependencyError
from tvc.export.onnx import MODEL_FILE, OnnxExportConfig, export_into
from tvc.export.tensorrt import TRTEXEC_SCRIPT

if TYPE_CHECKING:
    from tvc.models.info import ModelInfo
    from tvc.models.load import LoadedModel
    from tvc.stages.export import Config
    from tvc.tasks import Task

log = logging.getLogger("tvc")

FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"
INT8_DYNAMIC_FILE = "model.int8dyn.onnx"
ENGINE_FILE = "model.engine"
INT8_FILES = {"static": INT8_FILE, "dynamic": INT8_DYNAMIC_FILE}
PARITY_IMAGES = 64  # INT8 vs FP32 output parity: images it is measured on


@dataclass
class OnnxSource:
    """An ONNX artifact to start from (no torch needed): its model.onnx is copied as is."""

    artifact: Artifact
    info: ModelInfo


def onnx_source(model: str) -> OnnxSource | None:
    """MODEL as an ONNX artifact, or None when it is anything else."""
    if not is_artifact(model):
        return None
    art = load_artifact(model)
    if art.kind != "onnx":
        return None
    from tvc.models.info import ModelInfo

    if not art.meta.get("model"):
        raise ConfigError(
            f"the ONNX artifact {model} records no model input facts (size, mean, std)",
            "export it with tvc export from a model",
        )
    return OnnxSource(art, ModelInfo.from_json(art.meta["model"]))


def export_model(task: Task, source: LoadedModel | OnnxSource, cfg: Config) -> Artifact:
    """Produce the export artifact cfg.output from `source`; see the module docstring."""
    out = Path(cfg.output)
    calib = cfg.calib or task.default_calib
    if cfg.int8 == "static" and not calib:
        raise ConfigError(
            "static INT8 needs calibration data, and the model's lineage records none",
            f"pass --calib DATA (e.g. --calib {task.data_example}), or use --int8 dynamic",
        )
    settings = OnnxExportConfig(
        opset=cfg.opset,
        batch=cfg.batch,
        dynamic_batch=cfg.dynamic_batch or (cfg.trt and (cfg.max_batch or 1) > 1),
        simplify=not cfg.no_simplify,
        input_size=cfg.input_size,
        pixel_mask=cfg.pixel_mask,
        sampling=cfg.sampling,
    )
    settings.validate()
    spec = {
        "stage": "export",
        "task": task.name,
        "source": source.info.name,
        "options": cfg.model_dump(mode="json", exclude_unset=True, exclude={"force"}),
    }
    if cfg.ort_optimize:  # refused before any work when ORT's optimizer cannot be imported
        from tvc.export.ort_fusion import require_optimizer

        require_optimizer()
    trt_missing: MissingDependencyError | None = None
    with write_artifact(out, "onnx", parent=source.artifact, spec=spec, force=cfg.force) as w:
        if isinstance(source, OnnxSource):
            _copy_fp32(source.artifact, w)
        else:
            export_into(w, task, source, settings)
        variants = _variants_for(task)(task, w, cfg, calib)
        if cfg.eval_data:
            w.meta["metrics"].update(task.headline(variants.fp32_quality()))
        if cfg.ort_optimize:
            variants.ort_fused()
        if cfg.fp16:
            variants.fp16()
        if cfg.int8:
            variants.int8()
        if cfg.trt:
            trt_missing = _engine(w, cfg)
    art = load_artifact(out)
    if trt_missing is not None:
        raise MissingDependencyError(
            f"{trt_missing.problem}; the ONNX variants are in {out} and a ready trtexec command "
            f"that builds the same engine is in {out / TRTEXEC_SCRIPT}",
            "run that command on the board, or install TensorRT here: pip install 'tvc[trt]'",
        )
    return art


def _variants_for(task: Task) -> type[Variants]:
    """Token models (iGPT) quantize and check on token sequences, not images."""
    if task.input_kind == "tokens":
        from tvc.export.token_variants import TokenVariants

        return TokenVariants
    return Variants


def _copy_fp32(src: Artifact, w) -> None:
    shutil.copy2(src.file(MODEL_FILE), w.path_for(MODEL_FILE))
    for name in src.meta.get("metrics", {}).get("extra_graphs", {}):  # iGPT's decoder.onnx
        if src.has(name):
            shutil.copy2(src.file(name), w.path_for(name))
    for key in ("model", "task", "io", "precision"):
        if key in src.meta:
            w.meta[key] = src.meta[key]
    w.meta["metrics"].update(src.meta.get("metrics", {}))
    w.meta["variants"] = {
        MODEL_FILE: src.meta.get("variants", {}).get(MODEL_FILE, {"precision": "fp32"})
    }


class Variants:
    """The FP16 and INT8 variants of the FP32 graph staged in `w`, with the data they read
    loaded once each."""

    def __init__(self, task: Task, w, cfg: Config, calib: str | None) -> None:
        from tvc.models.info import ModelInfo

        self.task, self.w, self.cfg, self.calib = task, w, cfg, calib
        self.info = ModelInfo.from_json(w.meta["model"])
        self.fp32 = w.path_for(MODEL_FILE)
        self.variants = w.meta.setdefault("variants", {MODEL_FILE: {"precision": "fp32"}})
        self._test: tuple[Any, dict[str, Any]] | None = None
        self.gate_limit = cfg.gate_samples or task.export_eval_limit

    def data(self, spec: str, split: str, limit: int | None):
        return self.task.load_data(spec, split, self.info, limit=limit)

    def fp32_quality(self) -> dict[str, Any]:
        """The task's metric of model.onnx on --eval-data's test split (measured once)."""
        if self._test is None:
            from tvc.export.quantize.graph import load_onnx
            from tvc.export.quantize.scoring import predict_outputs

            data = self.data(self.cfg.eval_data, "test", self.gate_limit)
            misfit = self.task.labels_misfit(self.info, data)
            if misfit:
                raise ConfigError(
                    f"--eval-data {self.cfg.eval_data} {misfit}",
                    "pass data labelled with the model's classes, or drop --eval-data (the "
                    "INT8 gate then holds the model to agreement with FP32)",
                )
            self._test = (data, self.task.evaluate(predict_outputs(load_onnx(self.fp32)), data))
        return self._test[1]

    def fp16(self) -> None:
        from tvc.export.fp16 import convert_fp16

        log.info("writing the FP16 variant")
        # Real images make the overflow scan meaningful; random ones are the fallback.
        sample = None
        if self.cfg.int8 and self.cfg.calib:
            batch = self.w.meta["io"]["inputs"][0]["shape"][0]
            n = batch if isinstance(batch, int) else 16  # a fixed-batch model takes only its own
            images = self.task.images(self.data(self.cfg.calib, "train", n))
            sample = next(images.batches(n))[0]
        path = self.w.path_for(FP16_FILE)
        report = convert_fp16(self.fp32, path, sample=sample)
        variant = {"precision": "fp16", **report}
        variant["parity_vs_fp32"] = self._parity(path, self._parity_images(), "fp16")
        self.variants[FP16_FILE] = variant

    def ort_fused(self) -> None:
        """model.ort.onnx: ONNX Runtime's transformer fusions of model.onnx, proven against it
        (tvc.export.ort_fusion)."""
        from tvc.export.ort_fusion import ORT_FILE, fuse_checked

        log.info("writing the ONNX Runtime fused variant")
        images = self._parity_images()
        x = self._inputs(images)
        variant = fuse_checked(self.fp32, self.w.path_for(ORT_FILE), x, self.task, self.info)
        variant["parity_vs_fp32"]["inputs"] = (
            "random inputs" if images is None else f"{len(x)} {images.name} images"
        )
        if not variant["fused_ops"]:
            log.warning("ONNX Runtime's transformer optimizer fused nothing in this graph")
        variant["latency_ms"] = indicative_latency(
            self.fp32, self.w.path_for(ORT_FILE), label="fused"
        )
        if variant["latency_ms"]["speedup"] < 1.0:
            variant["slower_than_fp32"] = True
            log.warning(
                "%s IS SLOWER THAN model.onnx here: speed-up %.2fx (indicative ORT CPU p50, "
                "1 thread); deploy model.onnx on this kind of machine",
                ORT_FILE,
                variant["latency_ms"]["speedup"],
            )
        self.variants[ORT_FILE] = variant

    def int8(self) -> None:
        from tvc.export.quantize import QuantConfig, quantize_dynamic
        from tvc.export.quantize.progress import shown

        cfg, fname = self.cfg, INT8_FILES[self.cfg.int8]
        path = self.w.path_for(fname)
        qcfg = QuantConfig(
            mode=cfg.int8,
            calib_size=cfg.calib_size,
            calib_method=cfg.calib_method,
            budget=cfg.int8_budget,
            ops=cfg.int8_ops,
            smooth_alpha=cfg.smooth_alpha,
            # the range is for the CPU kernels of this machine; TensorRT's GPU kernels take
            # the full range
            weight_range="full"
            if cfg.trt and cfg.int8_weight_range == "auto"
            else cfg.int8_weight_range,
            allow_accuracy_drop=cfg.allow_accuracy_drop,
            sensitivity_samples=min(128, self.gate_limit),
        )
        images, count = None, ""
        if self.calib:
            images = self.task.images(self.data(self.calib, "train", cfg.calib_size))
            count = _count_line(images, cfg.calib_size, self.calib)
            log.info("calibration: %s", count)
        with shown():
            if cfg.int8 == "dynamic":
                log.info("writing the dynamic INT8 variant")
                report = quantize_dynamic(self.fp32, path, qcfg, check_data=images)
                variant = {"precision": "int8-dynamic", **report}
            else:
                variant = {"precision": "int8-qdq", **self._static(path, images, qcfg)}
                variant["calibration"]["note"] = count
        variant["parity_vs_fp32"] = self._parity(path, images, "int8")
        variant["trt_readiness"] = trt_readiness(path, warn=cfg.int8 == "static")
        variant.setdefault("latency_ms", indicative_latency(self.fp32, path))
        warn_if_slower(fname, variant)
        self.variants[fname] = variant

    def _static(self, path: Path, images, qcfg) -> dict[str, Any]:
        """Calibrated Q/DQ held to --int8-budget in the task's metric on the gate data:
        --eval-data's test split, else the calibration set's val split."""
        from tvc.export.quantize import LogitJudge, TaskJudge, quantize_with_gate

        if self.cfg.eval_data:
            self.fp32_quality()
            data, fp32 = self._test
        else:
            data, fp32 = self.data(self.calib, "val", self.gate_limit), None
        misfit = None if self.cfg.eval_data else self.task.labels_misfit(self.info, data)
        if misfit:
            # The labels cannot score this head: hold INT8 to FP32's own predictions instead.
            log.warning("the gate data %s %s %s; the INT8 gate measures agreement with FP32",
                        self.calib, data.split, misfit)  # fmt: skip
            judge = LogitJudge(self.fp32, self.task.images(data), False, qcfg)
        else:
            judge = TaskJudge(
                self.task, self.fp32, data, self.task.images(data), qcfg, fp32_result=fp32
            )
        report = quantize_with_gate(self.fp32, path, images, qcfg, None, judge=judge)
        if misfit:
            report["gate_note"] = f"{self.calib} {data.split} {misfit}; measured agreement"
        report["calibration"] = {
            **report.get("calibration", {}),
            "data": self.calib,
            "split": "train",
            "requested": self.cfg.calib_size,
        }
        report["latency_ms"] = indicative_latency(self.fp32, path)
        return report

    def _inputs(self, images) -> Any:
        """The inputs a variant's parity runs on: PARITY_IMAGES of `images`, or seeded numpy
        inputs without them (an ONNX artifact exports on a board without torch)."""
        from tvc.export.quantize.calibration import check_inputs
        from tvc.export.quantize.graph import input_spec, load_onnx

        return check_inputs(images, input_spec(load_onnx(self.fp32)), PARITY_IMAGES, 0)

    def _parity_images(self):
        """Real images for a variant's parity: --calib's, else --eval-data's (None: random)."""
        spec = self.calib if self.cfg.calib else self.cfg.eval_data
        if not spec:
            return None
        return self.task.images(self.data(spec, "train", PARITY_IMAGES))

    def _parity(self, path: Path, images, precision: str) -> dict[str, Any]:
        """The variant's outputs against FP32's on calibration images (random inputs
        without them): the task's agreement and each output's worst difference, held to the
        task's tolerance for `precision` (a miss is a warning, recorded)."""
        from tvc.export.parity import outputs_parity
        from tvc.export.quantize.graph import load_onnx
        from tvc.export.quantize.scoring import predict_outputs

        fp32 = load_onnx(self.fp32)
        x = self._inputs(images)
        ref = predict_outputs(fp32)(x)
        got = predict_outputs(load_onnx(path))(x)
        self.task.check_finite(got, f"the {precision.upper()} model")
        record = outputs_parity(self.task, [ref], [got], atol=1e-4, rtol=1e-3, info=self.info)
        record = {k: v for k, v in record.items() if k not in ("ok", "tolerance")}
        record["inputs"] = "random inputs" if images is None else f"{len(x)} {images.name} images"
        limits = self.task.variant_tolerance(self.info, precision)
        if limits is not None:
            misses = self.task.tolerance_misses(record, limits)
            record["tolerance"] = limits
            record["within_tolerance"] = not misses
            if misses:
                record["warning"] = f"{path.name} differs from FP32 by more than its " + (
                    f"tolerance: {'; '.join(misses)}"
                )
                log.warning("%s PARITY OUTSIDE TOLERANCE: %s", precision.upper(), record["warning"])
        return record


def _count_line(images, requested: int, spec: str) -> str:
    """How many calibration images there really are, and why when fewer than asked."""
    n = len(images)
    line = f"{n} images of {spec} ({getattr(images, 'split', 'train')} split)"
    if n < requested:
        line += f"; --calib-size asked for {requested} but the split holds only {n}"
    skipped = getattr(images, "skipped", 0)
    if skipped:
        line += f"; {skipped} unreadable file(s) left out"
    return line


def warn_if_slower(fname: str, variant: dict[str, Any]) -> None:
    """A variant meant to be faster that measured slower than FP32 says so on the terminal."""
    lat = variant.get("latency_ms") or {}
    speedup = lat.get("speedup")
    if speedup is None or speedup >= 1.0:
        return
    p = variant.get("parity_vs_fp32", {})
    agree = p.get("top1_agreement", p.get("class_agreement", p.get("agreement")))
    fidelity = f", top-1 agreement with FP32 {agree:.1%}" if isinstance(agree, float) else ""
    variant["slower_than_fp32"] = True
    # static Q/DQ can still lose to dynamic INT8 on ORT; a slow dynamic variant has no INT8
    # scheme left to try here (e.g. a CPU whose integer GEMMs are no faster than its FP32 ones)
    other = ", or try --int8 dynamic" if variant.get("precision") == "int8-qdq" else ""
    log.warning(
        "%s IS SLOWER THAN FP32 here: speed-up %.2fx (indicative ORT CPU p50, 1 thread, batch 1)"
        "%s; deploy model.onnx on this kind of machine%s",
        fname,
        speedup,
        fidelity,
        other,
    )


def trt_readiness(path: Path, *, warn: bool) -> dict[str, Any]:
    """TensorRT's explicit-quantization rules on the file as it ships (the one check)."""
    from tvc.export.trt_rules import check_trt_qdq

    violations = check_trt_qdq(path)
    for v in violations if warn else ():
        log.warning("TensorRT explicit-quantization rule: %s", v)
    return {"ok": not violations, "violations": violations}


def indicative_latency(
    fp32: Path, int8: Path, rounds: int = 3, label: str = "int8"
) -> dict[str, Any]:
    """A short single-thread p50 of both models (batch 1, or the graph's fixed batch),
    interleaved round by round so a busy machine slows both alike (indicative; `tvc bench`
    measures). The second model's p50 is recorded as `<label>_p50`."""
    from tvc.runtime.bench import time_calls
    from tvc.runtime.ort import OrtRunner

    runners = {"fp32": OrtRunner(fp32, threads=1), "int8": OrtRunner(int8, threads=1)}
    first = runners["fp32"].inputs[0].shape[0]
    batch = first if isinstance(first, int) and first > 0 else 1  # a fixed batch runs as is
    p50s: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            feeds = r.sample_feeds(batch)
            stats = time_calls(
                lambda r=r, feeds=feeds: r.infer(feeds), warmup_s=0.0, min_runs=10, min_time_s=0.0
            )
            p50s[k].append(stats.p50)
    p50 = {k: statistics.median(v) for k, v in p50s.items()}
    return {
        "fp32_p50": round(p50["fp32"], 3),
        f"{label}_p50": round(p50["int8"], 3),
        "speedup": round(p50["fp32"] / p50["int8"], 2),
        "threads": 1,
        "batch": batch,
    }


def _engine(w, cfg: Config) -> MissingDependencyError | None:
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

    precision = "int8" if cfg.int8 == "static" else "fp16" if cfg.fp16 else "fp32"
    source = {"int8": INT8_FILE, "fp16": FP16_FILE, "fp32": MODEL_FILE}[precision]
    name, shape = onnx_input(w.path_for(source))
    engine_cfg = EngineConfig(
        precision=precision, **cfg.engine_options(shape[0] if shape else None)
    )
    # The script runs on the board from inside the artifact directory.
    cmd = trtexec_command(
        Path(source), Path(ENGINE_FILE), engine_cfg, input_name=name, input_shape=shape
    )
    write_trtexec_script(w.staging, f'cd "$(dirname "$0")"\n{cmd}')
    try:
        engine_meta = build_engine(w.path_for(source), w.path_for(ENGINE_FILE), engine_cfg)
    except MissingDependencyError as exc:
        return exc
    w.meta["engine"] = {**engine_meta, "source": source}
    w.meta["variants"][ENGINE_FILE] = {"precision": f"trt-{precision}"}
    return None
