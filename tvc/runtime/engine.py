"""What a TensorRT engine is tied to, and the check that it fits this machine. No torch here.

An engine only loads on the TensorRT release and GPU model that built it (and, on a Jetson, the
JetPack). Both the builder (tvc/export/tensorrt.py) and the runner (runtime/trt.py) need these
facts, so they live here, below both: export imports runtime, never the other way round.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from tvc.errors import ArtifactError, MissingDependencyError, TvcError, first_line

INSTALL_HINT = (
    "on the board: pip install 'tvc[trt]' (Jetson: sudo apt install python3-libnvinfer), "
    "or build with the trtexec command tvc writes next to the ONNX model"
)
REBUILD = "rebuild the engine on this machine: tvc export MODEL --trt -o OUT"


class EngineMismatchError(TvcError):
    """An engine was built for another GPU or TensorRT version than the one here."""


def import_tensorrt(purpose: str) -> ModuleType:
    """`tensorrt`, or a MissingDependencyError that says what to install."""
    from tvc.deps import require

    try:
        return require("tensorrt", purpose)
    except MissingDependencyError as exc:
        raise MissingDependencyError(exc.problem, INSTALL_HINT) from exc
    except Exception as exc:  # PyPI's stub and a missing libnvinfer fail in many ways
        first = first_line(exc, 200)
        raise MissingDependencyError(
            f"{purpose} needs TensorRT, whose Python package is installed but does not load "
            f"({first})",
            INSTALL_HINT,
        ) from exc


def current_target(trt: ModuleType | None = None) -> dict[str, Any]:
    """What an engine built here is tied to: TensorRT version, GPU, JetPack on a Jetson."""
    from tvc.runtime.device import jetson_facts, nvidia_gpus

    target: dict[str, Any] = {}
    if trt is not None:
        target["tensorrt"] = str(trt.__version__)
    gpu = None
    try:
        from tvc.runtime.cuda import cuda_api

        gpu = cuda_api().device_facts()
    except TvcError as exc:
        gpus = nvidia_gpus()
        if not gpus:
            raise exc
        gpu = gpus[0]
    target["gpu"] = gpu["name"]
    target["compute_capability"] = gpu["compute_capability"]
    for key in ("cuda_runtime", "cuda_driver", "driver"):  # recorded, not compared
        if gpu.get(key):
            target[key] = gpu[key]
    jetson = jetson_facts()
    if jetson:
        target["jetpack"] = jetson.get("jetpack")
        target["l4t"] = jetson.get("l4t")
    return target


def _release(version: str) -> str:
    """'10.3.0.30' -> '10.3.0': engines are tied to the release, not the build number."""
    return ".".join(str(version).split(".")[:3])


def check_engine_compatible(
    meta: dict, *, current: dict[str, Any] | None = None, trt_module: ModuleType | None = None
) -> None:
    """Raise EngineMismatchError (saying 'rebuild the engine') unless `meta` fits this machine.

    `meta` is what `build_engine` returned (artifact.json "engine"). `current` defaults to this
    machine: the installed TensorRT (or `trt_module`), compared first, then the GPU.
    """
    missing = [k for k in ("tensorrt", "gpu", "compute_capability") if not meta.get(k)]
    if missing:
        raise ArtifactError(
            f"the engine metadata lacks {', '.join(missing)}, so tvc cannot tell what it was "
            "built for",
            REBUILD,
        )
    if current is None:
        trt = trt_module or import_tensorrt("checking a TensorRT engine")
        _check_release(meta, str(trt.__version__))  # before touching the GPU
        current = current_target(trt)
    _check_release(meta, str(current.get("tensorrt", "")))
    if (meta["gpu"], str(meta["compute_capability"])) != (
        current.get("gpu"),
        str(current.get("compute_capability")),
    ):
        raise EngineMismatchError(
            f"the engine was built for {meta['gpu']} (sm {meta['compute_capability']}), this "
            f"machine has {current.get('gpu')} (sm {current.get('compute_capability')}); "
            "engines are compiled for one GPU model",
            REBUILD,
        )
    if meta.get("jetpack") and current.get("jetpack") and meta["jetpack"] != current["jetpack"]:
        raise EngineMismatchError(
            f"the engine was built on JetPack {meta['jetpack']}, this board runs JetPack "
            f"{current['jetpack']}",
            REBUILD,
        )


def _check_release(meta: dict, version: str) -> None:
    if _release(meta["tensorrt"]) != _release(version):
        raise EngineMismatchError(
            f"the engine was built with TensorRT {meta['tensorrt']}, this machine has TensorRT "
            f"{version or 'none'}; engines only load on the TensorRT release that built them",
            REBUILD,
        )
