"""The task adapter: everything that differs between classification, detection, lanes, pixels.

One compress pipeline, one export flow, one train stage and one eval path drive every task
through this interface; a new task is one module that subclasses `Task` and one
`register_task(...)` call in `tvc/tasks/__init__.py`. Nothing here imports torch at module level:
the adapters import it inside the methods that need it, so `tvc.tasks` can be asked which task
a spec belongs to on a machine without torch.

Conventions every adapter follows:
- a *batch* fed to a model is what `sample_inputs` returns: a float32 tensor N x C x H x W for
  image tasks (iGPT: int64 token ids N x L);
- `outputs(model, x)` returns the model's outputs as a dict of numpy arrays keyed by the ONNX
  output names of `onnx_io`, so the same comparison code reads PyTorch, ONNX Runtime and
  TensorRT outputs;
- `evaluate(predict, data)` takes `predict(batch: np.ndarray) -> dict[str, np.ndarray]` (the same
  dict) and returns metrics with `self.metric` among the keys, in the units reports show.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.artifact import parent_path

if TYPE_CHECKING:
    from tvc.models.load import LoadedModel, ModelInfo

Outputs = dict[str, np.ndarray]
Predict = Callable[[np.ndarray], Outputs]


@dataclass(frozen=True)
class OnnxIO:
    """Names of a task's ONNX graph inputs and outputs; `dynamic` lists axes that may vary."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Column:
    """One task-specific column of a report: a metrics key and how to show it."""

    key: str
    label: str
    fmt: str = "{:.2f}"
    higher_is_better: bool = True


# Why `tvc train --finetune/--ema` are refused outside Image GPT: only its loop has them.
IGPT_TRAINING_ONLY = (
    "only Image GPT models (igpt_*) choose pretraining or fine-tuning and keep a weight average"
)


class Task(ABC):
    """What one kind of model needs from the shared pipelines. See the module docstring."""

    name: ClassVar[str]  # "classification", "detection", "lanes", "pixels"
    metric: ClassVar[str]  # headline quality key in metrics and records ("top1", "map", ...)
    metric_label: ClassVar[str]  # how reports name it ("top-1 %", "COCO mAP")
    data_example: ClassVar[str]  # a --data value for this task, for error messages
    noun: ClassVar[str] = "model"  # what messages call one of its models ("detector")
    quality_key: ClassVar[str] = "quality"  # where artifact metrics keep the full quality dict
    columns: ClassVar[tuple[Column, ...]] = ()
    # Stage options this task has no use for: {stage: {option: why}}. A typed one is refused
    # with the reason, instead of being silently ignored.
    refuses: ClassVar[dict[str, dict[str, str]]] = {}
    # What model.onnx takes: "images" (float N, C, H, W) or "tokens" (int64 N, L: iGPT); export
    # calibrates and checks its FP16 / INT8 variants on inputs of this kind.
    input_kind: ClassVar[str] = "images"

    # ------------------------------------------------------------------ what belongs to the task
    @abstractmethod
    def owns_model(self, spec: str) -> bool:
        """True when MODEL `spec` (name, directory or artifact) is of this task, decided
        without building it."""

    @abstractmethod
    def owns_info(self, info: ModelInfo) -> bool:
        """True when a loaded model's info is of this task."""

    @abstractmethod
    def owns_data(self, spec: str) -> bool:
        """True when DATA `spec` is this task's kind of data."""

    def misfit_data(self, spec: str) -> str | None:
        """Why `spec`, which another task took as its data, almost is this task's data and how
        to fix it (e.g. label files under names this task does not look for); None if not."""
        return None

    def names_data(self, spec: str) -> bool:
        """True when `spec` names data that exists: a known dataset name or an existing path.
        The fallback task owns any spec, so it says here which of them are real."""
        return self.owns_data(spec)

    # ------------------------------------------------------------------------------- models
    def load_model(self, spec: str, **kwargs: Any) -> LoadedModel:
        from tvc.models import load_model

        return load_model(spec, **kwargs)

    def training_model_kwargs(self, model: str, data: str, options: dict[str, Any]) -> dict:
        """Extra load_model keyword arguments for training `model` on `data` (what a model is
        built for follows from the data: detectors take their classes and query count from
        it); `options` are the train stage's set options."""
        return {}

    # --------------------------------------------------------------------------------- data
    @abstractmethod
    def load_data(
        self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None, seed: int = 0
    ) -> Any:
        """Split `split` of DATA `spec`, prepared for the model described by `info`."""

    @abstractmethod
    def sample_inputs(self, info: ModelInfo, data_spec: str | None, n: int) -> tuple[Any, str]:
        """`n` held-out inputs from `data_spec` (random ones, seeded, when None) and a few
        words saying which: for output agreement, low-rank errors and parity."""

    # ----------------------------------------------------------------------------- running
    @abstractmethod
    def outputs(self, model: Any, x: Any) -> Outputs:
        """The model's outputs on batch `x` as numpy arrays keyed by `onnx_io().outputs`."""

    @abstractmethod
    def agreement(
        self, reference: Outputs, candidate: Outputs, *, info: ModelInfo | None = None
    ) -> dict[str, Any]:
        """How closely `candidate` follows `reference` on the same inputs: at least
        `max_abs_diff` and `agreement` (a fraction in [0, 1], e.g. top-1 or class agreement).
        `info` (the model's facts, when known) lets a task measure in its own units."""

    def variant_tolerance(self, info: ModelInfo, precision: str) -> dict[str, float] | None:
        """Limits an FP16/INT8 variant's `agreement` with FP32 is held to ("fp16", "int8");
        the export warns and records when one is missed. None: no limits (the default)."""
        return None

    def tolerance_misses(self, record: dict[str, Any], limits: dict[str, float]) -> list[str]:
        """What in an `agreement` record is outside `limits`, in words."""
        return []

    def parity_words(self, record: dict[str, Any]) -> str:
        """An `agreement` record in a few words, for the terminal."""
        return f"agreement {record['agreement']:.1%}, max abs diff {record['max_abs_diff']:.2e}"

    @abstractmethod
    def evaluate(
        self, predict: Predict, data: Any, *, batch_size: int = 64, reference: Predict | None = None
    ) -> dict[str, Any]:
        """Quality of `predict` on `data`: a dict holding `self.metric`, `n`, `dataset`,
        `split`, and agreement with `reference` when one is given."""

    def quality(
        self,
        loaded: LoadedModel,
        data: Any,
        *,
        reference: LoadedModel | None = None,
        device: str = "cpu",
    ) -> dict[str, Any]:
        """`evaluate` of a PyTorch model (with `reference`'s agreement), on `device`. By default
        each batch goes through `outputs`, which then must accept numpy batches."""
        models = [m for m in (loaded, reference) if m is not None]
        for m in models:
            m.model.to(device)
        from tvc.progress import Progress, counted

        try:
            with Progress() as bar:  # a bar on a terminal, plain lines in a log
                bar.task(f"evaluating {loaded.info.name}", self.eval_size(data), unit="images")
                return self.evaluate(
                    counted(self.predictor(loaded), bar),
                    data,
                    reference=self.predictor(reference) if reference else None,
                )
        finally:
            for m in models:
                m.model.cpu()

    def predictor(self, loaded: LoadedModel) -> Predict:
        """predict(batch) -> outputs of a PyTorch model, for `evaluate`."""
        return lambda x: self.outputs(loaded.model, x)

    def headline(self, quality: dict[str, Any]) -> dict[str, Any]:
        """The artifact metrics a quality result contributes: the headline metric and the
        whole result under `quality_key`."""
        return {self.metric: quality[self.metric], self.quality_key: quality}

    def describe(self, quality: dict[str, Any]) -> str:
        """A quality result in a few words, for the terminal ("top-1 92.01% on 10000 images")."""
        return f"{self.metric_label} {quality[self.metric]:.2f} on {quality['n']} images"

    def eval_line(self, result: dict[str, Any]) -> str:
        """One result of the eval stage (`evaluate` plus variant, precision, backend) as the
        line `tvc eval` prints."""
        return (
            f"{result['variant']} [{result['backend']}]: {self.metric_label} "
            f"{result[self.metric]:.2f} on {result['n']} {result['dataset']} {result['split']} "
            "images"
        )

    def eval_notes(self, spec: str, data: Any) -> dict[str, Any]:
        """What `tvc eval` adds to its results for DATA `spec` once (`data`: the split it
        evaluated): "baseline" (a trivial model's quality, with a "line" to print) and
        "warnings" (e.g. a split too small to mean much). None by default."""
        return {}

    # --------------------------------------------------------------------- train, compress
    @abstractmethod
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict | None:
        """Train `loaded.model` in place on `data_spec` and evaluate it on the test split.
        Returns the metrics the artifact records (`self.metric` and the rest of `headline`,
        plus `training`: history, wall time, config), or None on the non-main processes of a
        distributed job. `settings` are the train stage's options (`tvc train --help`): only
        those the user set are present, so the task picks its own defaults for the rest."""

    @abstractmethod
    def prune(
        self, model: Any, settings: dict[str, Any], *, example: Any, batches: list | None = None
    ) -> dict[str, Any]:
        """Structured pruning of `model` in place; returns what was removed. `settings` are the
        compress stage's options (`prune`, `round_to`, ... as in `tvc compress --help`)."""

    def taylor_batches(self, info: ModelInfo, data_spec: str, n: int, size: int) -> list:
        """`n` labelled batches of `size` inputs for taylor importance; tasks that rank
        channels by magnitude only refuse `--importance taylor` (see `refuses`)."""
        from tvc.errors import ConfigError

        raise ConfigError(
            f"--importance taylor and data are not available for the {self.name} task",
            "use --importance magnitude",
        )

    def factorize(self, model: Any, lowrank: Any, *, samples: Any) -> dict[str, Any]:
        """Low-rank factorization of `model` in place (a `tvc.compress.lowrank.LowRankConfig`);
        by default every attention and MLP Linear that `target_linears` finds."""
        from tvc.compress.lowrank import factorize

        return factorize(model, lowrank, sample_inputs=samples)

    @abstractmethod
    def distill(
        self, student: LoadedModel, teacher: LoadedModel, data_spec: str, settings: dict[str, Any]
    ) -> dict[str, Any]:
        """Distil `student` (in place) from `teacher` on `data_spec`'s train split; returns the
        distillation report (epochs, steps, seconds, losses). The pipeline evaluates after."""

    # ------------------------------------------------------------------------------ export
    @abstractmethod
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        """ONNX input and output names of this task's models."""

    # Images the export's INT8 gate and FP32 evaluation read at most; calibration DATA when
    # --calib is not given (None: static INT8 needs --calib); how to fix a failed parity proof.
    export_eval_limit: ClassVar[int] = 2000
    default_calib: ClassVar[str | None] = None
    parity_hint: ClassVar[str] = (
        "try another --opset or --no-simplify; if it persists, report the model"
    )

    def export_info(self, info: ModelInfo, input_size: int | None) -> ModelInfo:
        """The model facts the ONNX graph fixes. By default the loaded ones: a classifier's
        size is chosen when it is built, so `input_size` cannot change a loaded artifact."""
        if input_size is not None and info.input_size[1] != input_size:
            import logging

            logging.getLogger("tvc").warning(
                "--input-size is ignored for artifacts and directories (fixed at %s)",
                info.input_size[1],
            )
        return info

    @contextlib.contextmanager
    def export_patches(self, model: Any, options: Any) -> Iterator[dict[str, Any]]:
        """Reversible model patches around torch.onnx.export (restored on exit); yields facts
        for the artifact's metrics. None by default."""
        yield {}

    def export_feeds(
        self, info: ModelInfo, batches: list[np.ndarray], options: Any
    ) -> list[dict[str, np.ndarray]]:
        """The ONNX feeds ({input name: array}) for sample batches: the graph's inputs are
        their keys. By default the one input of `onnx_io`."""
        name = self.onnx_io(info).inputs[0]
        return [{name: x} for x in batches]

    def export_io(self, info: ModelInfo, io: dict[str, Any]) -> dict[str, Any]:
        """artifact.json's `io` (inputs, outputs, mean, std) with what this task adds."""
        return io

    def labels_misfit(self, info: ModelInfo, data: Any) -> str | None:
        """Why `data`'s labels cannot score this model (e.g. a class-count mismatch), or None
        when they can. The INT8 gate then holds the model to agreement with FP32 instead."""
        return None

    def images(self, data: Any) -> Any:
        """`load_data`'s result as an image set (tvc.data.base.ImageSet): what INT8
        calibration reads. By default the data already is one."""
        return data

    def extra_graphs(self, loaded: LoadedModel, out_dir: Any, opset: int) -> dict[str, Any]:
        """ONNX graphs a task exports beside model.onnx (iGPT's single-step decoder with
        past/present key/value tensors): {file name: parity facts}. None by default."""
        return {}

    def eval_size(self, data: Any) -> int | None:
        """How many inputs `evaluate` runs the model on (its progress bar's total): the data's
        length by default; None when it has none."""
        from tvc.progress import size_of

        return size_of(data)

    def bench_extras(self, variant: Any, threads: int | None) -> dict[str, Any]:
        """What a bench record of `variant` (tvc.runtime.targets.Variant) carries beyond its
        timing and quality, as BenchRecord fields: iGPT's generation speed. None by default."""
        return {}

    def check_finite(self, out: Outputs, who: str) -> None:
        """Refuse outputs with NaN or Inf: a model that produces them is never a success."""
        from tvc.errors import NonFiniteError

        for key, arr in out.items():
            if np.issubdtype(np.asarray(arr).dtype, np.floating) and not np.isfinite(arr).all():
                raise NonFiniteError(
                    f"{who} produced non-finite values in its '{key}' output",
                    "check the weights (and the learning rate if it was just trained)",
                )


def artifact_family(path: Path) -> str | None:
    """The model family of an artifact directory (following an export's parent), read without
    building anything; None when `path` is not a readable artifact."""
    for _ in range(4):
        meta_file = path / "artifact.json"
        try:
            if not meta_file.is_file():
                return None
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        model = meta.get("model") or {}
        if isinstance(model, dict) and model:
            return model.get("family")
        parent = parent_path(path, meta)
        if parent is None:
            return None
        path = parent
    return None


def first_set(settings: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The value of the first of `names` set in `settings` (stage options; aliases allowed)."""
    for n in names:
        if settings.get(n) is not None:
            return settings[n]
    return default
