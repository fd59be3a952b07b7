"""The eval stage: the quality of every variant of TARGET on DATA, measured on the thing that ships.

A target is a PyTorch model (name, HF directory, model artifact) run by the torch backend, or an
export artifact / ONNX file whose every variant (FP32, FP16, INT8) runs on ONNX Runtime (or
TensorRT). What differs between classifiers (top-1/top-5) and detectors (COCO mAP) is the task
adapter's (tvc.tasks): it loads DATA prepared for the variant's input and scores the runner's
outputs. The bench stage measures quality with the same `measure`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tvc.errors import ConfigError, DataError
from tvc.models.info import ModelInfo, image_view, model_class_names
from tvc.stages import torch_backend  # noqa: F401 - registers the `torch` backend
from tvc.stages.config import ModelOptions, StageConfig, option

if TYPE_CHECKING:
    from tvc.runtime.base import Runner
    from tvc.runtime.targets import Variant
    from tvc.tasks import Task

log = logging.getLogger("tvc")

SUMMARY = "quality (top-1/top-5, COCO mAP) of every variant of a model or export on a dataset"
DEFAULT_MEAN_STD = 0.5  # per channel: what a bare ONNX file without tvc's facts is fed with
_MODEL = ModelOptions.model_fields  # MODEL's options, declared once in stages/config.py


class Config(StageConfig):
    target: str = option(..., "", argument=True)
    data: str = option(
        ...,
        "fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors "
        "fashion-mnist-det or a COCO-format directory (COCO mAP).",
    )
    limit: int | None = Field(
        None, ge=1, description="Evaluate on a seeded subset of this many images."
    )
    split: Literal["train", "val", "test"] = option("test", "Which split of DATA to evaluate on.")
    reference: str | None = option(
        None, "MODEL or artifact to measure top-1 agreement with (e.g. FP32 source)."
    )
    backend: str | None = option(
        None, "Default: ort for ONNX files/export artifacts, torch for models."
    )
    variant: str | None = option(
        None, "Only this file of an export artifact, e.g. model.int8.onnx."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores).")
    provider: str = option("cpu", "ORT provider: cpu, cuda, trt.")
    batch_size: int = Field(64, ge=1, description="Images per inference call.")
    json_out: str | None = option(None, "Also write the results as JSON.", flag="--json")
    weights: str | None = _MODEL["weights"]
    num_classes: int | None = _MODEL["num_classes"]
    pretrained: bool = _MODEL["pretrained"]
    model_kwargs = ModelOptions.model_kwargs  # weights, num_classes, pretrained for load_model


def run(cfg: Config) -> list[dict[str, Any]]:
    """Quality of every variant of cfg.target (or the one file cfg.variant) on cfg.data; with
    cfg.json_out, the results are also written there."""
    from tvc.runtime.backends import check_target, get_backend
    from tvc.safe_io import check_output_file

    check_target(cfg.target)
    if cfg.json_out:  # before any work: an evaluation must not end in "cannot write"
        check_output_file(cfg.json_out, "--json")
    name = cfg.backend if cfg.backend is not None else default_backend(cfg.target)
    backend = get_backend(name)
    found = backend.variants(cfg.target, cfg.model_kwargs())
    if cfg.variant:
        found = [v for v in found if v.path is not None and v.path.name == cfg.variant]
        if not found:
            raise ConfigError(f"{cfg.target} has no variant '{cfg.variant}'",
                              "list its files in artifact.json, e.g. model.int8.onnx")  # fmt: skip
    data = DataCache(cfg.data, split=cfg.split, limit=cfg.limit)
    ref = _open_reference(cfg) if cfg.reference else None
    results = []
    notes: dict[str, dict[str, Any]] = {}  # the task's notes on DATA, made once per task
    try:
        for variant in found:
            with backend.open(variant, threads=cfg.threads, provider=cfg.provider) as runner:
                task, res = measure(runner, variant, data, reference=ref,
                                    batch_size=cfg.batch_size)  # fmt: skip
                if task.name not in notes:
                    notes[task.name] = _notes(
                        task, cfg.data, data.get(task, model_info(runner, variant))
                    )
            results.append({"variant": variant.label, "precision": variant.precision,
                            "backend": name, "path": str(variant.path or cfg.target),
                            "task": task.name, **res, **notes[task.name]})  # fmt: skip
    finally:
        if ref is not None:
            ref[0].close()
    if cfg.json_out:
        import json

        from tvc.safe_io import storage_errors, write_text_atomic

        with storage_errors(cfg.json_out):
            Path(cfg.json_out).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cfg.json_out, json.dumps(results, indent=2) + "\n")
    return results


def _notes(task: Task, spec: str, data: Any) -> dict[str, Any]:
    """The task's notes on the evaluated data (tasks.base.Task.eval_notes); warnings shown."""
    found = task.eval_notes(spec, data)
    for warning in found.get("warnings", ()):
        log.warning("%s", warning)
    return found


def describe(result: dict[str, Any]) -> str:
    """One result of `run` as the line `tvc eval` prints (the task adapter words it)."""
    from tvc.tasks import task_named

    return task_named(result["task"]).eval_line(result)


def default_backend(target: str) -> str:
    """ort for ONNX files and export artifacts, torch for everything else."""
    from tvc.artifact import is_artifact, load_artifact

    p = Path(target)
    if p.suffix == ".onnx":
        return "ort"
    if is_artifact(p) and load_artifact(p, verify=False).kind != "model":
        return "ort"
    return "torch"


# ------------------------------------------------------------------ quality of one open runner


class DataCache:
    """Each split of DATA loaded once per preparation (task, input size, normalisation),
    however many variants need it."""

    def __init__(self, spec: str, *, split: str = "test", limit: int | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        self.spec, self.split, self.limit, self.seed = spec, split, limit, seed
        self._sets: dict[tuple, Any] = {}

    def get(self, task: Task, info: ModelInfo) -> Any:
        key = (task.name, tuple(info.input_size), tuple(info.mean), tuple(info.std),
               repr(sorted(info.extra.items())))  # fmt: skip
        if key not in self._sets:
            data = task.load_data(self.spec, self.split, info, limit=self.limit, seed=self.seed)
            if getattr(data, "skipped", None):  # unreadable images an image folder left out
                log.warning("%s", data.summary())
            self._sets[key] = data
        return self._sets[key]


def model_info(runner: Runner, variant: Variant) -> ModelInfo:
    """The facts of the model a runner runs: the loaded model's, the artifact's, or for a bare
    ONNX file what its input shape says (normalised with mean = std = 0.5)."""
    if variant.model is not None:  # a PyTorch model the torch backend loaded
        return variant.model.info
    facts = (variant.artifact.meta.get("model") or {}) if variant.artifact else {}
    shape = tuple(runner.inputs[0].shape[1:])
    fixed = all(isinstance(d, int) and d > 0 for d in shape)
    if "input_size" in facts:
        info = ModelInfo.from_json(facts)
        # the graph is what is fed: an export may fix another image size than the model's
        # (a token graph, iGPT's, has another rank and keeps the model's facts)
        if fixed and len(shape) == len(info.input_size):
            info.input_size = tuple(int(d) for d in shape)
        return info
    if runner.is_detector:
        raise ConfigError(
            f"{variant.path} is a bare ONNX file; a detector's preprocessing is not in it",
            "pass the export artifact directory that holds it",
        )
    if not fixed:
        raise ConfigError(
            f"the model's input {runner.inputs[0].describe()} has dynamic image dimensions",
            "export the model with a fixed input size",
        )
    log.warning("%s carries no mean/std (not a tvc artifact); normalising with mean=std=0.5",
                variant.path)  # fmt: skip
    classes = runner.outputs[0].shape[-1]
    return ModelInfo(
        name=variant.model_name, family="onnx", arch="onnx", kwargs={},
        num_classes=classes if isinstance(classes, int) else 0,
        input_size=tuple(int(d) for d in shape), mean=(DEFAULT_MEAN_STD,) * shape[0],
        std=(DEFAULT_MEAN_STD,) * shape[0],
        weights=str(variant.path),
    )  # fmt: skip


def measure(
    runner: Runner,
    variant: Variant,
    data: DataCache,
    *,
    reference: tuple[Runner, ModelInfo] | None = None,
    batch_size: int = 64,
) -> tuple[Task, dict[str, Any]]:
    """The task of `runner`'s model and its quality on `data` (the task's evaluate result);
    `reference` (an open runner and its facts) adds the agreement with it."""
    from tvc.data.classes import listed_names
    from tvc.progress import Progress, counted
    from tvc.runtime.predict import runner_outputs
    from tvc.stages.common import check_data_task
    from tvc.tasks import task_for_info

    info = model_info(runner, variant)
    task = task_for_info(info)
    check_data_task(task, variant.label, data.spec)
    ref_predict = None
    if reference is not None:
        ref_runner, ref_info = reference
        view, ref_view = image_view(info), image_view(ref_info)
        if ref_view != view:  # agreement needs both to see the very same pixels
            differ = sorted(
                k for k in view.keys() | ref_view.keys() if view.get(k) != ref_view.get(k)
            )
            said = ", ".join(f"{k} {ref_view.get(k)} vs {view.get(k)}" for k in differ)
            raise ConfigError(
                f"the reference model reads images otherwise than the model ({said})",
                "compare against a reference with the same input size, normalisation and crop",
            )
        names, ref_names = model_class_names(info), model_class_names(ref_info)
        if names and ref_names and names != ref_names:  # agreement compares output positions
            raise ConfigError(
                "the reference model's outputs mean other classes than the model's "
                f"({listed_names(ref_names)} vs {listed_names(names)})",
                "compare against a reference trained on the same classes in the same order",
            )
        ref_predict = runner_outputs(ref_runner)
    dataset = data.get(task, info)
    misfit = task.labels_misfit(info, dataset)
    if misfit:  # e.g. 2 class folders for a 10-class head: any top-1 would be meaningless
        raise DataError(
            f"{data.spec} {misfit}",
            f"evaluate on data labelled with the model's classes, or fine-tune it on this data "
            f"first ('tvc train MODEL --data {data.spec} -o OUT')",
        )
    predict = runner_outputs(runner)
    with Progress() as bar:  # a bar on a terminal, plain lines in a log
        total = task.eval_size(dataset)
        bar.task(f"evaluating {variant.label} on {data.spec}", total, unit="images")
        quality = task.evaluate(counted(predict, bar), dataset, batch_size=batch_size,
                                reference=ref_predict)  # fmt: skip
    return task, quality


def _open_reference(cfg: Config) -> tuple[Runner, ModelInfo]:
    """The reference's runner (its first, FP32 variant) and its model facts."""
    from tvc.runtime.backends import get_backend

    backend = get_backend(default_backend(cfg.reference))
    kwargs = {} if Path(cfg.reference).exists() else {"num_classes": cfg.num_classes}
    variant = backend.variants(cfg.reference, kwargs)[0]
    runner = backend.open(variant, threads=cfg.threads, provider=cfg.provider)
    try:
        return runner, model_info(runner, variant)
    except BaseException:
        runner.close()
        raise
