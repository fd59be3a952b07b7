"""The stage registry: every step of tvc as one library function taking one validated config.

    from tvc.stages import get_stage
    stage = get_stage("compress")
    artifact = stage.run(stage.config.parse({"model": "vit_pico", "output": "small",
                                             "prune": 0.5}))

The command line (`tvc/cli/`) and recipes (`tvc/pipeline/`) are both generated from these
configs, and the recipe runner runs a stage as `python -m tvc.stages NAME CONFIG.json` in a
child process: nothing here knows about click. A stage module defines `Config` (a
`StageConfig`), `run(config)` and a one-line `SUMMARY`; adding a stage is one module plus one
line in `_MODULES`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tvc.errors import ConfigError
from tvc.stages.config import StageConfig

__all__ = ["Stage", "StageConfig", "get_stage", "stage_names"]

_MODULES = {
    "train": "tvc.stages.train",
    "compress": "tvc.stages.compress",
    "export": "tvc.stages.export",
    "eval": "tvc.stages.evaluate",
    "bench": "tvc.stages.bench",
    "report": "tvc.stages.report",
}


@dataclass(frozen=True)
class Stage:
    name: str
    config: type[StageConfig]
    run: Callable[[Any], Any]
    summary: str


def stage_names() -> list[str]:
    return list(_MODULES)


def get_stage(name: str) -> Stage:
    """The stage called `name`; an unknown name lists the valid ones and the closest match."""
    if name not in _MODULES:
        close = difflib.get_close_matches(name, list(_MODULES), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown stage '{name}'", f"{hint}stages: {', '.join(_MODULES)}")
    module = importlib.import_module(_MODULES[name])
    return Stage(name, module.Config, module.run, module.SUMMARY)
