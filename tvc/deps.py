"""Lazy imports of optional, heavy dependencies with a message that names the pip extra."""

from __future__ import annotations

import importlib
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
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise a one-line error saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRAS.get(top)
        how = f"pip install 'tvc[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{top}', which is not installed ({exc})",
            f"install it with: {how}",
        ) from exc


def available(module: str) -> bool:
    """True when `module` can be found, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
