"""Facts about the host a file or a number came from: machine, Python, CPU, package versions.

On the floor (no tvc imports): artifacts record these when they are written. The device facts
a benchmark also needs (GPUs, Jetson board, power mode, clocks) are added on top of these by
tvc/runtime/device.py.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "tvc",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "torchvision",
    "timm",
    "torch-pruning",
    "transformers",
    "onnxslim",
    "tensorrt",
    "cuda-python",
    "pycuda",
    "nvidia-ml-py",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# The vector extensions that decide how fast a model's GEMMs run (FP32 FMA width, the INT8 dot
# products ONNX Runtime's kernels pick by): in the order a reader compares them. Two machines
# both named "AMD EPYC" ran deit_small 6x apart (Zen 1 with AVX2 against Zen 4 with AVX-512
# VNNI), so a number is only comparable with these beside it.
SIMD_FLAGS = (
    "avx2", "fma", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8",  # x86
    "asimd", "asimddp", "i8mm", "sve",  # Arm
)  # fmt: skip


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpuinfo_field(text: str, *keys: str) -> str | None:
    for key in keys:
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return None


def cpu_model() -> str:
    text = _cpuinfo()
    if not text:
        return platform.processor() or platform.machine()
    return _cpuinfo_field(text, "model name", "Model", "Hardware") or platform.machine()


def cpu_simd(text: str | None = None) -> list[str]:
    """The SIMD_FLAGS this CPU has (from /proc/cpuinfo's flags or Features; [] where unknown)."""
    text = _cpuinfo() if text is None else text
    flags = set((_cpuinfo_field(text, "flags", "Features") or "").split())
    return [f for f in SIMD_FLAGS if f in flags]


def cpu_generation(text: str | None = None) -> str | None:
    """x86 "family F model M" (e.g. AMD family 23 is Zen 1/2, 25 is Zen 3/4): virtual machines
    often name every generation alike; None where /proc/cpuinfo has no such fields."""
    text = _cpuinfo() if text is None else text
    family, model = _cpuinfo_field(text, "cpu family"), _cpuinfo_field(text, "model")
    return f"family {family} model {model}" if family and model else None


def cpu_label(env: dict[str, Any]) -> str:
    """The CPU as results name it: its model, and its generation and SIMD where recorded
    (environments written before they were recorded have the model alone)."""
    extra = [x for x in (env.get("cpu_generation"), "/".join(env.get("cpu_simd") or [])) if x]
    cpu = env.get("cpu", "?")
    return f"{cpu} ({'; '.join(extra)})" if extra else cpu


@functools.lru_cache(maxsize=1)
def _host() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_generation": cpu_generation(),
        "cpu_simd": cpu_simd(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }


def host_environment() -> dict[str, Any]:
    """A JSON-ready description of this host and the package versions in use."""
    return dict(_host())
