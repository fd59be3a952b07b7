"""Task adapters and their registry: which task a model, a loaded model or a data spec is.

Lookups go through the registered tasks in order and the first that owns the spec wins;
classification is last, the fallback for any image classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvc.errors import ConfigError
from tvc.tasks.base import Column, OnnxIO, Outputs, Predict, Task

if TYPE_CHECKING:
    from tvc.models.load import ModelInfo

__all__ = [
    "Column",
    "OnnxIO",
    "Outputs",
    "Predict",
    "Task",
    "register_task",
    "task_for_data",
    "task_for_info",
    "task_for_model",
    "task_named",
    "tasks",
]

_TASKS: list[Task] = []


def register_task(task: Task, *, before: str | None = None) -> None:
    """Add a task; `before` puts it ahead of the named one (its ownership tests win)."""
    if any(t.name == task.name for t in _TASKS):
        raise ValueError(f"task '{task.name}' is registered twice")
    at = next((i for i, t in enumerate(_TASKS) if t.name == before), len(_TASKS))
    _TASKS.insert(at, task)


def tasks() -> list[Task]:
    _register_builtin()
    return list(_TASKS)


def task_named(name: str) -> Task:
    for t in tasks():
        if t.name == name:
            return t
    raise ConfigError(f"unknown task '{name}'", f"use one of: {', '.join(t.name for t in tasks())}")


def task_for_model(spec: str) -> Task:
    """The task of MODEL `spec` (name, directory or artifact), decided without building it."""
    return next(t for t in tasks() if t.owns_model(spec))


def task_for_info(info: ModelInfo) -> Task:
    return next(t for t in tasks() if t.owns_info(info))


def task_for_data(spec: str) -> Task:
    return next(t for t in tasks() if t.owns_data(spec))


def _register_builtin() -> None:
    if _TASKS:
        return
    from tvc.tasks.classification import ClassificationTask
    from tvc.tasks.detection import DetectionTask
    from tvc.tasks.lanes import LanesTask
    from tvc.tasks.pixels import PixelsTask

    # lanes first: its data test reads the JSON (TuSimple lines), detection's takes any .json
    register_task(LanesTask())
    register_task(DetectionTask())
    register_task(PixelsTask())
    register_task(ClassificationTask())
