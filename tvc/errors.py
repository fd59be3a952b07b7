"""Errors a user can act on.

Every mistake a user can make ends in a `TvcError`. The CLI's one error boundary prints it as a
single line (`error: <what went wrong>; <how to fix it>`) and exits with `exit_code`, no traceback.
"""

from __future__ import annotations


class TvcError(Exception):
    """A problem the user can fix. `fix` says how."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class ModelNotFoundError(TvcError):
    """A MODEL argument names nothing tvc can build or load."""


class WeightsError(TvcError):
    """A weights file is missing, unreadable or does not fit the architecture."""


class ArtifactError(TvcError):
    """An artifact directory is missing, incomplete or tampered with."""


class DataError(TvcError):
    """A dataset is missing, empty or unreadable."""


class ConfigError(TvcError):
    """An option or config value is out of range or inconsistent."""


class ExportError(TvcError):
    """Exporting, simplifying or checking a model failed."""


class ParityError(TvcError):
    """An exported model does not reproduce its source within tolerance."""

    exit_code = 3


class AccuracyBudgetError(TvcError):
    """A compressed model lost more accuracy than the user allowed."""

    exit_code = 4


class MissingDependencyError(TvcError):
    """An optional dependency (an extra) is not installed."""

    exit_code = 5


class NonFiniteError(TvcError):
    """Weights or outputs hold NaN or Inf: training diverged or the input is corrupt."""

    exit_code = 6


class UnsupportedModelError(TvcError):
    """The model has a structure a stage does not understand."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
