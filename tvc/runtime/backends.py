"""The backend registry: the runtimes a variant can be measured on, and how to open each.

A backend is a name, an `opener` that turns a Variant into an open Runner, an `available` test
(is its package installed here?), and a `variants` finder that says which variants of a target
it can run. ONNX Runtime (`ort`) and TensorRT (`trt`, imported only when a runner opens) are
registered below; the PyTorch backend lives above runtime (tvc/stages/torch_backend.py), since a
board never imports torch. Adding a backend is one module that calls `register_backend`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvc.artifact import is_artifact, load_artifact
from tvc.deps import available as installed
from tvc.errors import ConfigError, MissingDependencyError
from tvc.runtime.base import Runner
from tvc.runtime.targets import Variant, onnx_variants

Opener = Callable[..., Runner]  # opener(variant, *, threads, provider) -> an open Runner
Finder = Callable[[str, dict[str, Any]], list[Variant]]  # variants(target, model_kwargs)


@dataclass(frozen=True)
class Backend:
    name: str
    opener: Opener
    available: Callable[[], bool]
    variants: Finder
    needs: str  # what it runs on, e.g. "TensorRT", for the error line when it is missing
    install: str  # how to make an unavailable backend work

    def open(self, variant: Variant, *, threads: int | None = None, provider: str = "cpu"):
        return self.opener(variant, threads=threads, provider=provider)


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    opener: Opener,
    available: Callable[[], bool],
    *,
    variants: Finder,
    needs: str,
    install: str,
) -> None:
    """Add backend `name`; registering a name twice is a bug, not an override."""
    if name in _BACKENDS:
        raise ValueError(f"backend '{name}' is registered twice")
    _BACKENDS[name] = Backend(name, opener, available, variants, needs, install)


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called `name`, usable here. An unknown (or empty) name lists the valid ones
    and the closest match; a known one whose package is missing says what to install."""
    backend = _BACKENDS.get(name)
    if backend is None:
        close = difflib.get_close_matches(name, list(_BACKENDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        shown = f"'{name}'" if name else "'' (empty)"
        raise ConfigError(f"unknown backend {shown}", f"{hint}backends: {', '.join(_BACKENDS)}")
    if not backend.available():
        raise MissingDependencyError(
            f"--backend {name} needs {backend.needs}, which is not installed here", backend.install
        )
    return backend


def check_target(target: str) -> None:
    """Refuse targets no backend measures on their own."""
    path = Path(target)
    if path.is_file() and path.suffix == ".engine":
        raise ConfigError(
            f"{target} is a bare TensorRT engine file; tvc benchmarks engines inside the export "
            "artifact they were built into (its artifact.json says how to feed and check them)",
            "tvc export ART --trt -o OUT builds one there; then run: tvc bench OUT --backend trt",
        )


# ------------------------------------------------------------------------------- ONNX Runtime


def _ort_open(variant: Variant, *, threads: int | None, provider: str) -> Runner:
    from tvc.runtime.ort import OrtRunner

    return OrtRunner(variant.path, threads=threads, provider=provider)


def _ort_variants(target: str, model_kwargs: dict[str, Any]) -> list[Variant]:
    found = onnx_variants(target)
    if not found:
        raise ConfigError(
            f"{target} has no ONNX model to run on ONNX Runtime",
            f"export it first: tvc export {target} -o OUT, then tvc bench OUT",
        )
    return found


# ----------------------------------------------------------------------------------- TensorRT


def _trt_open(variant: Variant, *, threads: int | None, provider: str) -> Runner:
    from tvc.runtime.trt import TrtRunner

    return TrtRunner(variant.path)


def _trt_variants(target: str, model_kwargs: dict[str, Any]) -> list[Variant]:
    path = Path(target)
    if not is_artifact(path) or not load_artifact(path).has("model.engine"):
        raise ConfigError(
            f"{target} has no TensorRT engine",
            f"build one on this machine: tvc export {target} --trt -o OUT",
        )
    art = load_artifact(path)
    name = art.meta.get("model", {}).get("name", path.name)
    prec = art.meta.get("engine", {}).get("precision", "fp32")
    size = art.meta["files"]["model.engine"]["bytes"]
    return [Variant(f"{name} trt-{prec}", prec, art.path / "model.engine", art, name, size)]


register_backend(
    "ort",
    _ort_open,
    lambda: installed("onnxruntime"),
    variants=_ort_variants,
    needs="ONNX Runtime",
    install="install it with: pip install onnxruntime (or onnxruntime-gpu)",
)
register_backend(
    "trt",
    _trt_open,
    lambda: installed("tensorrt"),
    variants=_trt_variants,
    needs="TensorRT",
    install="install it with: pip install 'tvc[trt]' (on a Jetson, JetPack's TensorRT), "
    "or use --backend ort",
)
