"""Facts about the host or board a number was measured on. No torch import here.

Everything is read from files and tools that exist on the platform (/proc, /etc/nv_tegra_release,
devfreq/cpufreq sysfs, NVML or nvidia-smi, nvpmodel, dpkg); a fact that cannot be read is left
out rather than guessed.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tvc.environment import cpu_label, cpu_model, host_environment, package_versions  # noqa: F401


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


GPU_KEYS = (
    "name",
    "driver",
    "compute_capability",
    "memory_mib",
    "sm_clock_mhz",
    "max_sm_clock_mhz",
    "power_limit_w",
)


def nvidia_gpus() -> list[dict[str, str]]:
    """Desktop/server NVIDIA GPUs: NVML (nvidia-ml-py) where installed, else nvidia-smi.

    Values are strings, as nvidia-smi prints them; "source" says which tool answered.
    """
    return _nvml_gpus() or _smi_gpus()


def _smi_gpus() -> list[dict[str, str]]:
    q = "name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,power.limit"
    out = _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"])
    if not out:
        return []
    gpus = [
        dict(zip(GPU_KEYS, [v.strip() for v in line.split(",")], strict=False))
        for line in out.splitlines()
    ]
    for g in gpus:
        g["source"] = "nvidia-smi"
    return gpus


def _nvml_gpus(pynvml=None) -> list[dict[str, str]]:
    """GPU facts through NVML; [] when nvidia-ml-py or the driver is missing."""
    if pynvml is None:
        try:
            import pynvml
        except ImportError:
            return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a GPU
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            g = {
                "name": _text(pynvml.nvmlDeviceGetName(h)),
                "driver": driver,
                "compute_capability": f"{major}.{minor}",
                "memory_mib": str(pynvml.nvmlDeviceGetMemoryInfo(h).total // (1 << 20)),
                "sm_clock_mhz": str(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                "max_sm_clock_mhz": str(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
                "source": "nvml",
            }
            g.update(_nvml_optional(pynvml, h))
            gpus.append(g)
        return gpus
    except Exception:  # a partial NVML (old driver, vGPU) should not break `tvc info`
        return []
    finally:
        pynvml.nvmlShutdown()


def _nvml_optional(pynvml, h) -> dict[str, str]:
    """Facts some GPUs do not report: power limit, locked clocks, persistence mode."""
    out: dict[str, str] = {}
    calls = {
        "power_limit_w": lambda: f"{pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000:.0f}",
        "mem_clock_mhz": lambda: str(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
        "app_sm_clock_mhz": lambda: str(
            pynvml.nvmlDeviceGetApplicationsClock(h, pynvml.NVML_CLOCK_SM)
        ),
        "persistence_mode": lambda: "on" if pynvml.nvmlDeviceGetPersistenceMode(h) else "off",
        "temperature_c": lambda: str(
            pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)
        ),
    }
    for key, call in calls.items():
        try:
            out[key] = call()
        except Exception:  # NVMLError_NotSupported and friends
            continue
    return out


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# L4T release -> JetPack release, for boards without the nvidia-jetpack package installed
L4T_TO_JETPACK = {
    "36.4.3": "6.2",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
    "35.2.1": "5.1",
}


def jetson_facts(root: Path = Path("/")) -> dict[str, Any] | None:
    """Board model, L4T/JetPack release, power mode and clock state on a Jetson, else None.

    `root` is the filesystem root (tests pass a fake tree).
    """
    release = root / "etc/nv_tegra_release"
    if not release.exists():
        return None
    facts: dict[str, Any] = {}
    # "# R36 (release), REVISION: 4.3, GCID: ..." -> 36.4.3
    m = re.search(r"R(\d+)[^,]*,\s*REVISION:\s*([\d.]+)", release.read_text())
    if m:
        rev = m.group(2).rstrip(".")
        facts["l4t"] = f"{m.group(1)}.{rev}" + (".0" if rev.count(".") == 0 else "")
    for model_file in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            facts["board"] = (root / model_file).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    live = root == Path("/")  # tools describe this machine, not a fake tree
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]) if live else None
    if jetpack:
        facts["jetpack"] = jetpack.split("-")[0].split("+")[0]
    elif facts.get("l4t") in L4T_TO_JETPACK:
        facts["jetpack"] = L4T_TO_JETPACK[facts["l4t"]]
    if live:
        mode = _run(["nvpmodel", "-q"])
        if mode:
            facts.update(parse_nvpmodel(mode))
    locked = clocks_locked(root)
    if locked is not None:
        facts["clocks_locked"] = locked
    return facts


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' then the mode id."""
    out: dict[str, Any] = {}
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if m:
        out["power_mode"] = m.group(1)
    ids = [ln.strip() for ln in text.splitlines() if ln.strip().isdigit()]
    if ids:
        out["power_mode_id"] = int(ids[0])
    return out


def clocks_locked(root: Path = Path("/")) -> bool | None:
    """True when the GPU's and CPUs' minimum clocks equal their maximum (jetson_clocks ran).

    Read from devfreq/cpufreq sysfs, which needs no root (jetson_clocks --show does).
    None when neither is readable.
    """
    pairs = []
    for dev in sorted((root / "sys/class/devfreq").glob("*")):
        name = dev.name.lower()
        if any(k in name for k in ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")):
            pairs.append((dev / "min_freq", dev / "max_freq"))
    cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
    pairs += [(c / "scaling_min_freq", c / "scaling_max_freq") for c in cpus]
    seen = False
    for lo, hi in pairs:
        try:
            lo_v, hi_v = int(lo.read_text()), int(hi.read_text())
        except (OSError, ValueError):
            continue
        seen = True
        if lo_v != hi_v:
            return False
    return True if seen else None


@functools.lru_cache(maxsize=1)
def _device_facts() -> dict[str, Any]:
    env: dict[str, Any] = {}
    gpus = nvidia_gpus()
    if gpus:
        env["gpus"] = gpus
    jetson = jetson_facts()
    if jetson:
        env["jetson"] = jetson
    return env


def environment() -> dict[str, Any]:
    """A JSON-ready description of this machine and the versions in use: the host facts of
    tvc/environment.py plus the GPUs and Jetson board a number was measured on."""
    return {**host_environment(), **_device_facts()}


def board_name(env: dict[str, Any]) -> str:
    """A short, human label for the machine a record came from."""
    if env.get("jetson", {}).get("board"):
        return env["jetson"]["board"]
    if env.get("gpus"):
        return f"{env['gpus'][0]['name']} ({env.get('cpu', '?')})"
    return f"{cpu_label(env)} x{env.get('cpu_count', '?')}"
