"""`tvc info`: which backends and devices work here, and why the others do not."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tvc.deps import available
from tvc.errors import first_line
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
        rows.append(("nvidia gpu", False,
                     "no NVIDIA driver found (NVML and nvidia-smi absent or failing)"))  # fmt: skip
    rows.append(cuda_row())
    rows.append(trt_row())
    rows.append(trtexec_row())
    return rows


def trt_row() -> tuple[str, bool, str]:
    """Whether TensorRT can build and run engines here, and if not, why."""
    if not available("tensorrt"):
        return ("tensorrt", False, "the tensorrt package is not installed: pip install 'tvc[trt]' "
                "on a machine with an NVIDIA GPU (Jetson: sudo apt install python3-libnvinfer); "
                "'tvc export --trt' then writes a trtexec command instead")  # fmt: skip
    try:
        import tensorrt as trt

        version = str(trt.__version__)
    except Exception as exc:  # PyPI's stub and a missing libnvinfer fail in many ways
        first = first_line(exc, 160)
        return ("tensorrt", False, f"the tensorrt package is installed but does not load ({first})")
    cuda = cuda_row()
    if not cuda[1]:
        return ("tensorrt", False, f"TensorRT {version} is installed, but {cuda[2]}")
    return ("tensorrt", True, f"{version} (engines build and run here)")


def cuda_row() -> tuple[str, bool, str]:
    """Whether a CUDA binding (cuda-python or pycuda) sees a GPU."""
    if not available("cuda") and not available("pycuda"):
        return ("cuda", False, "cuda-python is missing: pip install 'tvc[trt]'")
    from tvc.errors import TvcError
    from tvc.runtime.cuda import cuda_api

    try:
        api = cuda_api()
        facts = api.device_facts()
    except TvcError as exc:
        return ("cuda", False, exc.problem)
    return ("cuda", True, f"{api.name}: {facts['name']}, sm {facts['compute_capability']}")


def trtexec_row() -> tuple[str, bool, str]:
    """trtexec builds engines without Python, from the command 'tvc export --trt' writes."""
    import shutil

    path = shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec",) if Path(p).is_file()), None
    )
    if path:
        return ("trtexec", True, path)
    return ("trtexec", False, "not found (JetPack: /usr/src/tensorrt/bin/trtexec)")
