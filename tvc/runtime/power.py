"""Power sampling during a benchmark, and energy per inference. No torch import here.

Sources, in the order `find_power_source` tries them:

- Jetson INA3221 power monitors in sysfs: the hwmon driver of JetPack 5/6 (`in<N>_label`,
  bus voltage `in<N>_input` in mV, current `curr<N>_input` in mA), or the older `ina3221x` iio
  driver of JetPack 4 (`rail_name_<N>`, `in_power<N>_input` in mW). The module's input rail
  (VDD_IN, POM_5V_IN) is used when the board has one, else the sum of all rails.
- `tegrastats` on a Jetson whose sysfs is not readable.
- NVML (nvidia-ml-py) on desktop and server GPUs: the GPU's energy counter where it has one
  (Volta and newer), else its power readings; `nvidia-smi` when NVML's Python package is absent.

What is measured is the whole rail (or the whole GPU board), idle power included, over the timed
window: energy per inference = energy / inferences run inside the window.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType
from typing import Any

from tvc.errors import ConfigError

log = logging.getLogger("tvc")

# rails that measure the whole module's input, by Jetson generation
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


class PowerSource(ABC):
    name: str = "?"
    rails: list[str]

    @abstractmethod
    def read_w(self) -> float:
        """The power drawn now, in watts."""

    def energy_j(self) -> float | None:
        """A cumulative energy counter in joules, where the hardware keeps one."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def _pick_rails(labels: list[str]) -> list[str]:
    for total in TOTAL_RAILS:
        if total in labels:
            return [total]
    return labels  # no input rail on this board (e.g. AGX Orin): the sum of its rails


class Ina3221Hwmon(PowerSource):
    """INA3221 channels through the Linux hwmon driver (JetPack 5 and 6)."""

    name = "ina3221 sysfs"

    def __init__(self, channels: dict[str, tuple[Path, Path]]) -> None:
        self.rails = _pick_rails(list(channels))
        self._channels = [channels[r] for r in self.rails]

    @classmethod
    def find(cls, sysfs: Path) -> Ina3221Hwmon | None:
        channels: dict[str, tuple[Path, Path]] = {}
        for label in sorted(sysfs.glob("bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label")):
            m = re.fullmatch(r"in(\d+)_label", label.name)
            volts, amps = (
                label.parent / f"in{m.group(1)}_input",
                label.parent / f"curr{m.group(1)}_input",
            )
            if volts.is_file() and amps.is_file():  # in7 (sum of shunt voltages) has no current
                channels[label.read_text().strip()] = (volts, amps)
        return cls(channels) if channels else None

    def read_w(self) -> float:
        return sum(_read_int(v) * _read_int(a) for v, a in self._channels) / 1e6  # mV * mA


class Ina3221Iio(PowerSource):
    """INA3221 channels through NVIDIA's older ina3221x iio driver (JetPack 4)."""

    name = "ina3221 sysfs"

    def __init__(self, channels: dict[str, Path]) -> None:
        self.rails = _pick_rails(list(channels))
        self._paths = [channels[r] for r in self.rails]

    @classmethod
    def find(cls, sysfs: Path) -> Ina3221Iio | None:
        channels: dict[str, Path] = {}
        for rail in sorted(sysfs.glob("bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
            n = rail.name.rsplit("_", 1)[1]
            power = rail.parent / f"in_power{n}_input"
            if power.is_file():
                channels[rail.read_text().strip()] = power
        return cls(channels) if channels else None

    def read_w(self) -> float:
        return sum(_read_int(p) for p in self._paths) / 1e3  # mW


_TEGRA_RAIL = re.compile(r"\b((?:VDD|VIN|POM)[A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def parse_tegrastats(line: str) -> dict[str, float]:
    """Rail -> instantaneous watts from one tegrastats line (both the mW and the bare format)."""
    return {m.group(1): int(m.group(2)) / 1e3 for m in _TEGRA_RAIL.finditer(line)}


class Tegrastats(PowerSource):
    """tegrastats in a subprocess; the latest line it printed gives the power."""

    name = "tegrastats"

    def __init__(self, interval_ms: int = 50, command: str = "tegrastats") -> None:
        self._proc = subprocess.Popen(
            [command, "--interval", str(interval_ms)], stdout=subprocess.PIPE, text=True
        )
        self._latest: dict[str, float] = {}
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + max(2.0, 5 * interval_ms / 1e3)
        while not self._latest and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._latest:
            self.close()
            raise ConfigError(
                "tegrastats printed no power rails",
                "run as root, or check that tegrastats works on this board",
            )
        self.rails = _pick_rails(list(self._latest))

    def _read_lines(self) -> None:
        for line in self._proc.stdout:
            rails = parse_tegrastats(line)
            if rails:
                self._latest = rails

    def read_w(self) -> float:
        return sum(self._latest.get(r, 0.0) for r in self.rails)

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()


class Nvml(PowerSource):
    """NVML (nvidia-ml-py): GPU board power, and the energy counter on Volta and newer."""

    name = "nvml"

    def __init__(self, pynvml: ModuleType, index: int = 0) -> None:
        self.nv = pynvml
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(self.handle)
        self.rails = [name.decode() if isinstance(name, bytes) else str(name)]
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self._has_counter = True
        except pynvml.NVMLError:
            self._has_counter = False

    def read_w(self) -> float:
        return self.nv.nvmlDeviceGetPowerUsage(self.handle) / 1e3  # mW

    def energy_j(self) -> float | None:
        if not self._has_counter:
            return None
        return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3  # mJ

    def close(self) -> None:
        self.nv.nvmlShutdown()


class NvidiaSmi(PowerSource):
    """nvidia-smi's power.draw, one process per reading (slow: sample at 100 ms or more)."""

    name = "nvidia-smi"

    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.rails = [f"gpu{index}"]
        self.read_w()  # fails here, not in the sampling thread

    def read_w(self) -> float:
        out = subprocess.run(
            [
                "nvidia-smi",
                "-i",
                str(self.index),
                "--query-gpu=power.draw",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])


def _pynvml() -> ModuleType | None:
    try:
        import pynvml  # provided by nvidia-ml-py
    except ImportError:
        return None
    return pynvml


def find_power_source(
    sysfs: Path = Path("/sys"), *, pynvml: ModuleType | None = None, use_tools: bool = True
) -> PowerSource | None:
    """The best power source on this machine, or None. `use_tools=False` skips subprocesses."""
    for finder in (Ina3221Hwmon.find, Ina3221Iio.find):
        try:
            found = finder(Path(sysfs))
            if found is not None:
                found.read_w()
                return found
        except (OSError, ValueError) as exc:  # unreadable without root on some releases
            log.debug("power sensors in sysfs not readable: %s", exc)
    if use_tools and shutil.which("tegrastats"):
        try:
            return Tegrastats()
        except (OSError, ConfigError) as exc:
            log.debug("tegrastats unusable: %s", exc)
    nv = pynvml if pynvml is not None else _pynvml()
    if nv is not None:
        try:
            return Nvml(nv)
        except Exception as exc:  # pynvml.NVMLError and driver-less failures
            log.debug("NVML unusable: %s", exc)
    if use_tools and shutil.which("nvidia-smi"):
        try:
            return NvidiaSmi()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.debug("nvidia-smi power unusable: %s", exc)
    return None


class PowerSampler:
    """Samples power in a background thread while its `with` block runs.

    with PowerSampler() as power:
        run n inferences
    record.energy = power.energy(n)   # None where no source exists
    """

    def __init__(
        self,
        source: PowerSource | str | None = "auto",
        *,
        interval_s: float = 0.05,
        sysfs: Path = Path("/sys"),
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(
                f"power sampling interval must be > 0, got {interval_s}", "e.g. 0.05 s"
            )
        self._owns_source = source == "auto"  # a source found here is closed on exit
        self.source = find_power_source(sysfs) if source == "auto" else source
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (seconds since start, watts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self._e0 = self._e1 = None

    def __enter__(self) -> PowerSampler:
        self.samples.clear()
        self._stop.clear()
        self._t0 = time.perf_counter()
        if self.source is not None:
            self._e0 = self.source.energy_j()
            self._sample()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._t1 = time.perf_counter()
        if self.source is not None:
            self._sample()
            self._e1 = self.source.energy_j()
            if self._owns_source:
                self.source.close()

    def _sample(self) -> None:
        try:
            self.samples.append((time.perf_counter() - self._t0, self.source.read_w()))
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.debug("power reading failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    @property
    def duration_s(self) -> float:
        return self._t1 - self._t0

    @property
    def energy_j(self) -> float | None:
        """Energy over the window: the hardware counter if any, else the integral of samples."""
        if self._e0 is not None and self._e1 is not None and self._e1 >= self._e0:
            return self._e1 - self._e0
        if len(self.samples) < 2:
            return None
        total = 0.0
        for (t0, w0), (t1, w1) in zip(self.samples, self.samples[1:], strict=False):
            total += (t1 - t0) * (w0 + w1) / 2
        return total

    @property
    def avg_power_w(self) -> float | None:
        e = self.energy_j
        return e / self.duration_s if e is not None and self.duration_s > 0 else None

    def energy(self, inferences: int) -> dict[str, Any] | None:
        """A bench record's `energy` (source, average watts, joules per inference), or None."""
        e = self.energy_j
        if e is None or inferences < 1 or self.duration_s <= 0:
            return None
        rails = "+".join(self.source.rails)
        return {
            "source": f"{self.source.name} ({rails})",
            "avg_power_w": round(e / self.duration_s, 3),
            "joules_per_inference": e / inferences,
        }
