"""Facts about the host or board a number was measured on. No torch import here.

Everything is read from files and tools that exist on the platform (/proc, /etc/nv_tegra_release,
nvidia-smi, nvpmodel); a fact that cannot be read is left out rather than guessed.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import socket
import subprocess
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


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def nvidia_gpus() -> list[dict[str, str]]:
    """Desktop/server NVIDIA GPUs via nvidia-smi (absent on Jetson and CPU hosts)."""
    q = "name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,power.limit"
    out = _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"])
    if not out:
        return []
    keys = ["name", "driver", "compute_capability", "memory_mib", "sm_clock_mhz",
            "max_sm_clock_mhz", "power_limit_w"]  # fmt: skip
    return [dict(zip(keys, [v.strip() for v in line.split(",")], strict=False))
            for line in out.splitlines()]  # fmt: skip


def jetson_facts() -> dict[str, Any] | None:
    """Board model, L4T/JetPack release and power mode on an NVIDIA Jetson, else None."""
    release = Path("/etc/nv_tegra_release")
    if not release.exists():
        return None
    facts: dict[str, Any] = {}
    m = re.search(r"R(\d+).*REVISION:\s*([\d.]+)", release.read_text())
    if m:
        facts["l4t"] = f"{m.group(1)}.{m.group(2)}"
    for model_file in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            facts["board"] = Path(model_file).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    mode = _run(["nvpmodel", "-q"])
    if mode:
        m = re.search(r"NV Power Mode:\s*(\S+)", mode)
        facts["power_mode"] = m.group(1) if m else mode.splitlines()[0]
    clocks = _run(["jetson_clocks", "--show"])
    if clocks is not None:
        facts["clocks_locked"] = "MinFreq" in clocks and _clocks_pinned(clocks)
    try:
        facts["jetpack"] = metadata.version("nvidia-jetpack")
    except metadata.PackageNotFoundError:
        pass
    return facts


def _clocks_pinned(show: str) -> bool:
    """jetson_clocks --show prints MinFreq=... MaxFreq=... CurrentFreq=... per unit."""
    pairs = re.findall(r"MinFreq=(\d+) MaxFreq=(\d+)", show)
    return bool(pairs) and all(lo == hi for lo, hi in pairs)


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }
    gpus = nvidia_gpus()
    if gpus:
        env["gpus"] = gpus
    jetson = jetson_facts()
    if jetson:
        env["jetson"] = jetson
    return env


def environment() -> dict[str, Any]:
    """A JSON-ready description of this machine and the versions in use."""
    return dict(_static_environment())


def board_name(env: dict[str, Any]) -> str:
    """A short, human label for the machine a record came from."""
    if env.get("jetson", {}).get("board"):
        return env["jetson"]["board"]
    if env.get("gpus"):
        return f"{env['gpus'][0]['name']} ({env.get('cpu', '?')})"
    return f"{env.get('cpu', '?')} x{env.get('cpu_count', '?')}"
