"""The error boundary's mapping: which exceptions are the user's or the environment's fault.

The command line (tvc.cli.main) and the stage runner (python -m tvc.stages) both end every
fault as one `error: what; how to fix` line and an exit code (tvc.errors); an exception this
module does not recognise is a bug in tvc (exit 70).
"""

from __future__ import annotations

from tvc.deps import missing_dependency
from tvc.errors import TvcError, first_line, storage_error


def as_user_error(exc: BaseException) -> TvcError | None:
    """The user or environment fault behind `exc` as a TvcError (itself; a missing optional
    package; a full disk or a permission), or None when it is a bug in tvc."""
    if isinstance(exc, TvcError):
        return exc
    if isinstance(exc, ImportError):
        # A missing optional package, or one failing to import deep inside (None: a real bug).
        return missing_dependency(exc)
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        return storage_error(exc, getattr(exc, "filename", None) or "a file")
    return None


def internal_error_line(exc: BaseException) -> str:
    """The one line tvc prints for a bug: what broke and how to report it."""
    return (
        f"error: internal error {type(exc).__name__}: {first_line(exc)}; this is a bug in tvc, "
        "re-run with TVC_DEBUG=1 for the traceback and report it"
    )
