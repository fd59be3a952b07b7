"""Is a latency measurement trustworthy? Machine load, CPU clock, pinning, and the verdict.

A benchmark on a shared machine measures the other work as much as the model: a 1-minute load
average above the CPU count, a clock that changes between rounds, or a median whose interval is
wide all mean the numbers may not repeat. This module samples those facts (stdlib only, no torch)
and turns them into a `noisy` verdict with reasons a user can act on.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from tvc.records import Conditions, Latency

# Thresholds of the verdict, each a reason on its own.
MAX_CI_HALF = 0.05  # the median's 95% interval wider than +-5% of it
MAX_TAIL = 1.5  # p90 more than 1.5x p50: many calls were interrupted
MAX_CLOCK_CHANGE = 0.05  # the CPU clock moved by more than 5% while timing


def cpu_mhz() -> tuple[float | None, str]:
    """Mean current clock of the CPUs in MHz and where it was read; (None, 'unknown') where
    neither cpufreq nor /proc/cpuinfo says (containers, some VMs, non-Linux)."""
    freqs = []
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            with open(path) as f:
                freqs.append(int(f.read().strip()) / 1000)  # kHz
        except (OSError, ValueError):
            pass
    if freqs:
        return sum(freqs) / len(freqs), "cpufreq"
    try:
        with open("/proc/cpuinfo") as f:
            freqs = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except (OSError, ValueError, IndexError):
        freqs = []
    if freqs:
        return sum(freqs) / len(freqs), "/proc/cpuinfo"
    return None, "unknown"


def load_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


def cpu_count() -> int:
    """The machine's CPUs, the scale of its load average (not this process's affinity: the
    benchmark pins itself to --threads CPUs before it samples the load)."""
    return os.cpu_count() or 1


@dataclass
class MachineWatch:
    """Load and clock before timing and at each round while timing."""

    threads: int | None
    load_before: float | None = None
    mhz_before: float | None = None
    source: str = "unknown"
    loads: list[float] = field(default_factory=list)
    mhz: list[float] = field(default_factory=list)
    pinned: list[int] | None = None

    def start(self) -> MachineWatch:
        self.load_before = load_1min()
        self.mhz_before, self.source = cpu_mhz()
        return self

    def sample(self) -> None:
        load = load_1min()
        if load is not None:
            self.loads.append(load)
        mhz, _ = cpu_mhz()
        if mhz is not None:
            self.mhz.append(mhz)

    def conditions(self, lat: Latency, *, rounds: int, interleaved: list[str],
                   run_id: str) -> Conditions:  # fmt: skip
        """This record's conditions with the verdict on its latency."""
        c = Conditions(
            cpu_count=cpu_count(),
            load_before=_r(self.load_before),
            load_during=_r(max(self.loads)) if self.loads else None,
            freq_source=self.source,
            mhz_before=_r(self.mhz_before),
            mhz_during_min=_r(min(self.mhz)) if self.mhz else None,
            mhz_during_max=_r(max(self.mhz)) if self.mhz else None,
            pinned_cpus=self.pinned,
            rounds=rounds,
            interleaved=interleaved,
            run_id=run_id,
        )
        c.reasons = noise_reasons(lat, c)
        c.noisy = bool(c.reasons)
        return c


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def noise_reasons(lat: Latency, c: Conditions) -> list[str]:
    """Why a measurement may not repeat; empty when nothing says so."""
    reasons = []
    loads = [x for x in (c.load_before, c.load_during) if x is not None]
    if loads and max(loads) > c.cpu_count:
        reasons.append(
            f"load average {max(loads):.1f} on {c.cpu_count} CPU(s): other work competed"
        )
    if lat.has_ci and lat.p50 > 0:
        half = (lat.ci_high - lat.ci_low) / 2 / lat.p50
        if half > MAX_CI_HALF:
            reasons.append(f"the median is uncertain by +-{half * 100:.0f}%")
    if lat.p50 > 0 and lat.p90 > MAX_TAIL * lat.p50:
        reasons.append(f"p90 is {lat.p90 / lat.p50:.1f}x p50: calls were interrupted")
    clocks = [x for x in (c.mhz_before, c.mhz_during_min, c.mhz_during_max) if x]
    if clocks and (max(clocks) - min(clocks)) / max(clocks) > MAX_CLOCK_CHANGE:
        reasons.append(f"CPU clock moved {min(clocks):.0f}-{max(clocks):.0f} MHz (throttling "
                       "or power saving)")  # fmt: skip
    return reasons


def pin_cpus(threads: int | None) -> tuple[list[int] | None, set[int] | None]:
    """Pin this process (and the thread pools it creates from now on) to `threads` CPUs, so
    the scheduler does not move the timed work between cores. Returns (pinned CPUs, the
    previous set to restore); nothing is pinned when threads is None or covers every CPU."""
    if threads is None or not hasattr(os, "sched_setaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if threads >= len(allowed):
        return None, None
    pinned = allowed[-threads:]  # the last CPUs: CPU 0 takes most interrupts
    os.sched_setaffinity(0, pinned)
    return pinned, set(allowed)


def unpin(previous: set[int] | None) -> None:
    if previous is not None:
        os.sched_setaffinity(0, previous)
