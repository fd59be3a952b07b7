"""Lazy imports of optional, heavy dependencies with a message that names the pip extra."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path
from types import ModuleType

from tvc.errors import MissingDependencyError

# module -> (pip extra, what needs it)
_EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "torch_pruning": "torch",
    "safetensors": "torch",
    "onnxslim": "torch",
    "scipy": "torch",
    "transformers": "hf",
    "matplotlib": "report",
    "tensorrt": "trt",
    "cuda": "trt",
    "pynvml": "trt",
}


def _install(top: str) -> str:
    extra = _EXTRAS.get(top)
    return f"pip install 'tvc[{extra}]'" if extra else f"pip install {top}"


def _package_of(filename: str) -> str | None:
    """The top-level package a source file of an installed distribution belongs to."""
    parts = Path(filename).parts
    for i, part in enumerate(parts[:-1]):
        if part in ("site-packages", "dist-packages"):
            name = parts[i + 1]
            return name[:-3] if name.endswith(".py") else name
    return None


def missing_dependency(
    exc: ImportError, purpose: str | None = None
) -> MissingDependencyError | None:
    """The MissingDependencyError behind an ImportError, naming the extra to install: the
    missing module is itself optional (timm, transformers, ...), or the import failed deep
    inside an optional package (transformers missing one of its own dependencies, or too old
    for a name tvc imports). None when no optional package is involved (a bug in tvc)."""
    from tvc.errors import first_line

    top = (exc.name or "").split(".")[0]
    needs = f"{purpose} needs" if purpose else "tvc needs"
    if top in _EXTRAS and isinstance(exc, ModuleNotFoundError) and exc.name == top:
        return MissingDependencyError(
            f"{needs} the Python package '{top}', which is not installed",
            f"install it with: {_install(top)}",
        )
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    owners = [_package_of(f.filename) for f in frames]
    culprit = next((p for p in reversed(owners) if p in _EXTRAS), None)
    if culprit is None and top in _EXTRAS:
        culprit = top
    if culprit is None:
        return None
    return MissingDependencyError(
        f"{needs} the Python package '{culprit}', which cannot be imported "
        f"({first_line(exc, 160)})",
        f"install or update it with: {_install(culprit)}",
    )


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise a one-line error saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        error = missing_dependency(exc, purpose)
        if error is None:  # the module itself is missing, or failed inside tvc
            error = MissingDependencyError(
                f"{purpose} needs the Python package '{top}', which cannot be imported ({exc})",
                f"install it with: {_install(top)}",
            )
        raise error from exc


def available(module: str) -> bool:
    """True when `module` can be found, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
