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

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

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


class Task(ABC):
    """What one kind of model needs from the shared pipelines. See the module docstring."""

    name: ClassVar[str]  # "classification", "detection", "lanes", "pixels"
    metric: ClassVar[str]  # headline quality key in metrics and records ("top1", "map", ...)
    metric_label: ClassVar[str]  # how reports name it ("top-1 %", "COCO mAP")
    data_example: ClassVar[str]  # a --data value for this task, for error messages
    columns: ClassVar[tuple[Column, ...]] = ()

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

    # ------------------------------------------------------------------------------- models
    def load_model(self, spec: str, **kwargs: Any) -> LoadedModel:
        from tvc.models import load_model

        return load_model(spec, **kwargs)

    # --------------------------------------------------------------------------------- data
    @abstractmethod
    def load_data(self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None,
                  seed: int = 0) -> Any:  # fmt: skip
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
    def agreement(self, reference: Outputs, candidate: Outputs) -> dict[str, Any]:
        """How closely `candidate` follows `reference` on the same inputs: at least
        `max_abs_diff` and `agreement` (a fraction in [0, 1], e.g. top-1 or class agreement)."""

    @abstractmethod
    def evaluate(self, predict: Predict, data: Any, *, batch_size: int = 64,
                 reference: Predict | None = None) -> dict[str, Any]:  # fmt: skip
        """Quality of `predict` on `data`: a dict holding `self.metric`, `n`, `dataset`,
        `split`, and agreement with `reference` when one is given."""

    # --------------------------------------------------------------------- train, compress
    @abstractmethod
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict:
        """Train `loaded.model` in place on `data_spec`; returns the training report (history,
        metrics). `settings` are the train stage's validated options."""

    @abstractmethod
    def prune(self, model: Any, settings: dict[str, Any], *, example: Any,
              batches: list | None = None) -> dict[str, Any]:  # fmt: skip
        """Structured pruning of `model` in place; returns what was removed."""

    @abstractmethod
    def distill(self, student: LoadedModel, teacher: LoadedModel, data_spec: str,
                settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Distil `student` (in place) from `teacher` on `data_spec`; returns the report with
        the student's quality under `self.metric` when it was evaluated."""

    # ------------------------------------------------------------------------------ export
    @abstractmethod
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        """ONNX input and output names of this task's models."""

    def extra_graphs(self, loaded: LoadedModel, out_dir: Any, opset: int) -> dict[str, Any]:
        """ONNX graphs a task exports beside model.onnx (iGPT's single-step decoder with
        past/present key/value tensors): {file name: parity facts}. None by default."""
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
