"""The export stage: MODEL (or an ONNX artifact) to one artifact holding its deployable forms.

model.onnx (proven against PyTorch), and as asked model.fp16.onnx, model.int8.onnx (Q/DQ, held
to an accuracy budget), model.int8dyn.onnx and model.engine (TensorRT). Every task goes through
the same flow (tvc.export.flow); what differs between classifiers, detectors and the rest lives
in their task adapter (tvc.tasks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from tvc.errors import ConfigError
from tvc.stages.config import ModelOptions, OutputOptions, default_output, option

if TYPE_CHECKING:
    from tvc.artifact import Artifact
    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.info import LoadedModel

log = logging.getLogger("tvc")

SUMMARY = "export a model to ONNX (parity-proven), FP16/INT8 variants and a TensorRT engine"


_STATIC_ONLY = frozenset({"calib_method", "int8_budget", "allow_accuracy_drop"})
_INT8_ONLY = frozenset({"calib_size", "int8_ops", "int8_weight_range"})
_TRT_ONLY = frozenset(
    {"min_batch", "opt_batch", "max_batch", "workspace_mb", "timing_cache", "dla"}
)


class Config(ModelOptions, OutputOptions):
    output: str | None = option(
        None,
        "Artifact directory to write [default: MODEL's name + '-exported', here].",
        flag="-o/--output",
    )
    opset: int = option(17, "ONNX opset (LayerNormalization needs 17 or newer).")
    batch: int = Field(1, ge=1, description="Fixed batch size.")
    dynamic_batch: bool = option(False, "Export with a dynamic batch dimension.")
    input_size: int | None = Field(
        None,
        ge=1,
        description="Input resolution for a model name or Hugging Face directory (position "
        "embeddings are resampled as the model family does).",
    )
    no_simplify: bool = option(False, "Skip onnxslim simplification.")
    fp16: bool = option(False, "Also write an FP16 ONNX (norms/softmax kept FP32).")
    ort_optimize: bool = option(
        False,
        "Also write model.ort.onnx for ONNX Runtime: its transformer fusions (SkipLayerNorm, "
        "Gelu, Attention where it matches), parity-checked; model.onnx stays for TensorRT.",
    )
    int8: Literal["static", "dynamic"] | None = option(
        None,
        "Also write an INT8 ONNX: static (calibrated Q/DQ; a bare --int8) or dynamic.",
        metavar="[static|dynamic]",
        flag_value="static",
    )
    calib: str | None = option(
        None,
        "Calibration DATA for static INT8 [default: the data MODEL was trained or compressed on, "
        "as its lineage records].",
    )
    calib_size: int = Field(512, ge=1, description="Calibration images.")
    calib_method: Literal["minmax", "percentile", "entropy"] = option(
        "minmax", "How calibration turns activations into ranges."
    )
    int8_budget: float = Field(
        0.5,
        ge=0,
        description="Max points of the task's metric (top-1, mAP) INT8 may lose before layers "
        "fall back to float; for iGPT the bits/dim it may add (default 0.05 there).",
    )
    allow_accuracy_drop: bool = option(
        False, "Keep an INT8 model that misses its budget (exit 0, loud warning)."
    )
    smooth_alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Static INT8: SmoothQuant strength moving activation outliers of each "
        "LayerNorm into the next Linear's weights (0: off).",
    )
    int8_ops: Literal["safe", "all"] = option(
        "safe", "safe: only Linear/MatMul inputs; all: every op (the naive setting)."
    )
    int8_weight_range: Literal["auto", "full", "reduced", "unsigned"] = option(
        "auto",
        "reduced: 7-bit weights, which x86 CPUs without VNNI need (their integer kernels "
        "saturate at full range); auto: reduced on such a CPU unless --trt; unsigned (dynamic "
        "only): uint8 weights with zero points, all 8 bits without saturation.",
    )
    eval_data: str | None = option(
        None,
        "DATA for the INT8 accuracy gate (default: the calibration set's val split); its test "
        "split also measures the FP32 model.",
    )
    gate_samples: int | None = Field(
        None,
        ge=1,
        description="Images the INT8 accuracy gate measures on (fewer: a faster, coarser "
        "gate) [default: the task's, 2000 for classifiers].",
    )
    trt: bool = option(False, "Build a TensorRT engine on this machine.")
    # Unset, the profile is the ONNX model's batch (a fixed-batch graph takes only that one);
    # for a dynamic batch 1/1/8. A --max-batch above 1 exports a dynamic batch.
    min_batch: int | None = Field(
        None, ge=1, description="TensorRT profile: smallest batch [default: the ONNX model's]."
    )
    opt_batch: int | None = Field(
        None, ge=1, description="TensorRT profile: batch to tune for [default: the ONNX model's]."
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        description="TensorRT profile: largest batch [default: the ONNX model's; 8 for a "
        "dynamic batch].",
    )
    workspace_mb: int = Field(1024, ge=16, description="TensorRT builder workspace (MiB).")
    timing_cache: str | None = option(None, "Timing cache file, reused across builds.")
    dla: int | None = Field(None, ge=0, description="Jetson DLA core to build for.")
    sampling: Literal["gather", "grid"] = option(
        "gather", "Deformable DETR: bilinear sampling by Gathers, or by GridSample."
    )
    pixel_mask: bool = option(False, "Detectors: add a pixel_mask input for padding.")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        typed = [b for b in (self.min_batch, self.opt_batch, self.max_batch) if b is not None]
        if self.trt and typed != sorted(typed):
            raise ConfigError(
                f"batch profile must satisfy min <= opt <= max, got "
                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}",
                "e.g. --min-batch 1 --opt-batch 1 --max-batch 8",
            )
        self._options_apply()
        if self.fp16 and self.pixel_mask:
            raise ConfigError(
                "the FP16 converter takes models with one input, not a pixel_mask input too",
                "drop --pixel-mask for an FP16 export",
            )
        if self.ort_optimize and self.pixel_mask:
            raise ConfigError(
                "--ort-optimize checks the fused graph on images only, not a pixel_mask input",
                "drop --pixel-mask or --ort-optimize",
            )
        if self.int8:  # e.g. unsigned weights with static INT8, refused before any work
            from tvc.export.quantize.config import QuantConfig

            QuantConfig(mode=self.int8, weight_range=self.int8_weight_range).validate()
        if self.int8 and self.pixel_mask:
            raise ConfigError(
                "INT8 calibration takes images only, not a pixel_mask input",
                "drop --pixel-mask for an INT8 export",
            )
        return self

    def _options_apply(self) -> None:
        """An option typed for a step that does not run is refused, never silently ignored."""
        from tvc.stages.config import cli_flag

        rules = (
            (_STATIC_ONLY, self.int8 == "static", "static INT8",
             "--int8 dynamic has no calibration or accuracy gate", "use --int8 static"),
            (_INT8_ONLY, self.int8 is not None, "INT8", "no INT8 variant is written",
             "add --int8"),
            (_TRT_ONLY, self.trt, "a TensorRT build", "no engine is built here",
             "add --trt, or pass them to trtexec on the board"),
        )  # fmt: skip
        for names, applies, what, why, fix in rules:
            for name in sorted(names & self.model_fields_set):
                if not applies:
                    flag = cli_flag(name, type(self).model_fields[name])
                    raise ConfigError(
                        f"{flag} applies to {what} only ({why})", f"{fix}, or drop {flag}"
                    )

    def engine_options(self, onnx_batch: int | str | None = None) -> dict:
        """The EngineConfig fields --trt asks for (precision aside). `onnx_batch` is the ONNX
        input's batch dimension: an int when fixed, which the unset profile batches take."""
        fixed = onnx_batch if isinstance(onnx_batch, int) and onnx_batch > 0 else None
        lo = self.min_batch or fixed or 1
        opt = self.opt_batch or fixed or lo
        hi = self.max_batch or fixed or max(8, opt)
        return {
            "min_batch": lo,
            "opt_batch": opt,
            "max_batch": hi,
            "workspace_mb": self.workspace_mb,
            "timing_cache": Path(self.timing_cache) if self.timing_cache else None,
            "dla_core": self.dla,
        }


def run(cfg: Config):
    """Export cfg.model as cfg asks and write the export artifact cfg.output."""
    from tvc.export.flow import export_model, onnx_source
    from tvc.export.onnx import check_opset_and_batch
    from tvc.stages.common import claim_output, refuse_options

    if cfg.output is None:
        cfg = cfg.model_copy(update={"output": default_output(cfg.model, "exported")})
    claim_output(cfg, cfg.model, cfg.weights, cfg.calib, cfg.eval_data, cfg.timing_cache)
    check_opset_and_batch(cfg.opset, cfg.batch)
    source = onnx_source(cfg.model)
    if source is not None:  # an ONNX artifact: no torch needed (a board adding an engine)
        from tvc.tasks import task_for_info

        task = task_for_info(source.info)
    else:
        from tvc.stages.common import task_of_model

        task = task_of_model(cfg.model, "export")
    refuse_options(task, "export", cfg)
    _check_data(task, cfg)
    if cfg.int8 == "static" and cfg.calib is None:
        cfg = _lineage_calib(task, cfg)
    if source is not None:
        return export_model(task, source, cfg)
    # A name is built at --input-size, a Hugging Face directory resized to it (position
    # embeddings interpolated as its family does); an artifact keeps its size (else an error).
    loaded = task.load_model(cfg.model, **cfg.model_kwargs(), input_size=cfg.input_size)
    return export_model(task, loaded, cfg)


def _lineage_calib(task, cfg: Config) -> Config:
    """Static INT8 without --calib calibrates on the data MODEL's lineage records (what it was
    trained, compressed or calibrated on) when that data is the task's and still there."""
    from tvc.artifact import is_artifact, load_artifact, recorded_data
    from tvc.tasks import task_for_data

    if not is_artifact(cfg.model):
        return cfg
    found = recorded_data(load_artifact(cfg.model, verify=False))
    if found is None:
        return cfg
    data, step = found
    if task_for_data(data) is not task or not task.names_data(data):
        log.warning(
            "the %s step in %s's lineage read %s, which is not %s data found here; not "
            "calibrating on it",
            step,
            cfg.model,
            data,
            task.name,
        )
        return cfg
    log.info("calibrating on %s, the data of the %s step in %s's lineage (--calib to choose)",
             data, step, cfg.model)  # fmt: skip
    return cfg.model_copy(update={"calib": data})


def _check_data(task, cfg: Config) -> None:
    """--calib and --eval-data hold the task's kind of data (a detector calibrates on scenes)."""
    from tvc.tasks import task_for_data

    for flag, data in (("--calib", cfg.calib), ("--eval-data", cfg.eval_data)):
        if data is None:
            continue
        if not data.strip():
            raise ConfigError(
                f"{flag} is empty", f"pass a dataset, e.g. {flag} {task.data_example}"
            )
        kind = task_for_data(data)
        if kind is not task:
            raise ConfigError(
                f"{cfg.model} is a {task.noun} but {flag} {data} is {kind.name} data",
                f"pass {task.name} data (e.g. {flag} {task.data_example})",
            )


def export_loaded(loaded: LoadedModel, out: str | Path, config: OnnxExportConfig) -> Artifact:
    """`tvc.export.onnx.export_onnx` for a loaded model of any task: its task is looked up
    here, above export/ (which must not import the task registry)."""
    from tvc.export.onnx import export_onnx
    from tvc.tasks import task_for_info

    return export_onnx(task_for_info(loaded.info), loaded, out, config)
