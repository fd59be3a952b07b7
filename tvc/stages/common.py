"""Checks every model stage makes before it loads anything: task, options, data, output."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tvc.errors import ConfigError
from tvc.stages.config import StageConfig, cli_flag

if TYPE_CHECKING:
    from tvc.tasks import Task


def task_of_model(spec: str, purpose: str) -> Task:
    """The task of MODEL `spec`; first says which extra to install when torch is missing."""
    from tvc.deps import require
    from tvc.tasks import task_for_model

    require("torch", purpose)
    return task_for_model(spec)


def refuse_options(task: Task, stage: str, cfg: StageConfig) -> None:
    """A typed option the task has no use for is an error with the reason, never ignored."""
    refused = task.refuses.get(stage, {})
    for name in cfg.model_fields_set:
        if name in refused:
            flag = cli_flag(name, type(cfg).model_fields[name])
            raise ConfigError(
                f"{flag} does not apply to the {task.noun} {getattr(cfg, 'model', '')}".rstrip(),
                f"drop {flag} ({refused[name]})",
            )


def check_data_task(task: Task, model: str, data: str | None) -> None:
    """A detector takes detection data, a classifier classification data: say which."""
    if data is None:
        return
    if not data.strip():
        raise ConfigError("--data is empty", f"pass a dataset, e.g. --data {task.data_example}")
    from tvc.tasks import task_for_data

    data_task = task_for_data(data)
    if not data_task.names_data(data):
        raise ConfigError(
            f"dataset '{data}' not found (neither a known name nor an existing path)",
            f"pass {task.name} data, e.g. --data {task.data_example}",
        )
    if data_task is not task:
        misfit = task.misfit_data(data)
        if misfit:
            raise ConfigError(f"--data {data} is not laid out as {task.name} data", misfit)
        raise ConfigError(
            f"{model} is a {task.noun} but --data {data} is {data_task.name} data",
            f"pass {task.name} data (e.g. --data {task.data_example}), or a {data_task.noun}",
        )


def same_model(a: str, b: str) -> bool:
    """Two MODEL arguments that name the same thing (the same text, or the same path)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def claim_output(cfg: StageConfig, *inputs: str | None) -> None:
    """Refuse, before any work, an output that would replace an artifact without --force,
    replace one of the stage's inputs, or cannot be written."""
    import os

    from tvc.artifact import check_output

    given = tuple(p for p in inputs if p and os.path.exists(p))
    check_output(cfg.output, force=cfg.force, inputs=given)
