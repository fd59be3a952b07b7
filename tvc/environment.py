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


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    return platform.machine()


@functools.lru_cache(maxsize=1)
def _host() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }


def host_environment() -> dict[str, Any]:
    """A JSON-ready description of this host and the package versions in use."""
    return dict(_host())
