"""Errors a user can act on.

Every mistake a user can make ends in a `TvcError`. The CLI's one error boundary prints it as a
single line (`error: <what went wrong>; <how to fix it>`) and exits with `exit_code`, no traceback.

Exit codes: 0 success; 2 usage or input (bad option, model, weights, artifact, data, output path);
3 parity failure; 4 accuracy budget missed; 5 missing optional dependency; 6 non-finite weights
or outputs (diverged training, corrupt input); 7 storage (disk full, read-only or unwritable
place); 70 a bug in tvc; 130 interrupted (earlier results are left intact).
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


class StorageError(TvcError):
    """The machine cannot store a result: disk full, read-only, no permission, not a directory."""

    exit_code = 7


class UnsupportedModelError(TvcError):
    """The model has a structure a stage does not understand."""


def storage_error(exc: OSError, where: str | object) -> StorageError | None:
    """A `StorageError` for an OSError that the environment caused (disk full, permissions,
    read-only file system, a file where a directory should be), or None for anything else."""
    import errno

    what = {
        errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere with -o"),
        errno.EDQUOT: ("the disk quota is exhausted", "free some space or write elsewhere with -o"),
        errno.EROFS: ("the file system is read-only", "write elsewhere with -o"),
        errno.EACCES: ("permission denied", "write somewhere you may write, with -o"),
        errno.EPERM: ("operation not permitted", "write somewhere you may write, with -o"),
        errno.ENOTDIR: ("a path component is a file, not a directory", "choose another -o path"),
        errno.EEXIST: ("a file is in the way", "choose another -o path"),
        errno.EISDIR: ("a directory is in the way", "choose another -o path"),
        errno.EFBIG: (
            "the file is larger than this file system or limit allows",
            "write elsewhere",
        ),
    }.get(exc.errno)
    if what is None:
        return None
    return StorageError(f"cannot write {where}: {what[0]}", what[1])


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
