"""`tvc info`: which backends and devices work here, and why the others do not."""

from __future__ import annotations

from importlib import metadata

from tvc.deps import available
from tvc.runtime.device import environment, jetson_facts, nvidia_gpus


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def backend_report() -> list[tuple[str, bool, str]]:
    """(name, available, detail) rows."""
    rows: list[tuple[str, bool, str]] = []
    env = environment()
    rows.append(("host", True, f"{env['cpu']}, {env['cpu_count']} cores, Python {env['python']}"))
    try:
        import onnxruntime as ort

        provs = ort.get_available_providers()
        rows.append(("onnxruntime", True, f"{ort.__version__}: {', '.join(provs)}"))
        if "CUDAExecutionProvider" not in provs:
            rows.append(("ort cuda provider", False,
                         "needs onnxruntime-gpu and an NVIDIA GPU"))  # fmt: skip
    except ImportError:
        rows.append(("onnxruntime", False, "not installed: pip install onnxruntime"))
    if available("torch"):
        rows.append(("pytorch", True, f"{_version('torch')} (compress, train, export)"))
    else:
        rows.append(("pytorch", False, "not installed: pip install 'tvc[torch]'"))
    gpus = nvidia_gpus()
    jetson = jetson_facts()
    if gpus:
        g = gpus[0]
        rows.append(("nvidia gpu", True, f"{g['name']}, driver {g['driver']}, "
                                          f"sm {g['compute_capability']}"))  # fmt: skip
    elif jetson:
        rows.append(("jetson", True, ", ".join(f"{k} {v}" for k, v in jetson.items())))
    else:
        rows.append(("nvidia gpu", False, "no NVIDIA driver found (nvidia-smi absent or failing)"))
    rows.append(trt_row())
    return rows


def trt_row() -> tuple[str, bool, str]:
    """Why TensorRT can or cannot be used here."""
    if not available("tensorrt"):
        return ("tensorrt", False,
                "the tensorrt package is not installed: pip install 'tvc[trt]' on a machine with "
                "an NVIDIA GPU (Jetson: use JetPack's python3-libnvinfer)")  # fmt: skip
    try:
        import tensorrt as trt

        version = trt.__version__
    except Exception as exc:  # the PyPI stub and broken installs fail in many ways
        return ("tensorrt", False, f"the tensorrt package does not load: {exc}")
    if not available("cuda") and not available("pycuda"):
        return ("tensorrt", False, f"{version}, but cuda-python is missing: pip install cuda-python")
    return ("tensorrt", True, version)
