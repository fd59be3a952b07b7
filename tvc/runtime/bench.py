"""Latency measurement: warm up, then time a minimum count and duration; report percentiles.

Timing wraps `Runner.infer` from the outside, so every backend is measured the same way and
the runner's own overhead (input validation) is included, as a user would see it.

Variants that will be compared are timed interleaved (`time_interleaved`): in rounds, each
variant a short block of calls per round, in a rotating order, so a burst of other work on a
shared machine lands on all of them alike instead of on whichever ran at that minute.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tvc.records import Latency
from tvc.runtime.base import Runner


def time_calls(
    fn,
    *,
    warmup_s: float = 1.0,
    min_runs: int = 50,
    min_time_s: float = 3.0,
    max_runs: int = 100_000,
) -> Latency:
    """Time `fn()` after a warm-up: at least `min_runs` calls and `min_time_s` seconds."""
    end = time.perf_counter() + warmup_s
    warm = 0
    while warm < 3 or time.perf_counter() < end:
        fn()
        warm += 1
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (
        len(samples) < min_runs or time.perf_counter() - start < min_time_s
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Latency.from_samples(samples)


@dataclass
class Interleaved:
    """The outcome of one interleaved run: latency per call, and the rounds it took."""

    latencies: list[Latency]
    rounds: int
    seconds: float


def time_interleaved(
    fns: list[Callable[[], Any]],
    *,
    warmup_s: float = 1.0,
    min_runs: int = 50,
    min_time_s: float = 3.0,
    max_time_s: float = 10.0,
    min_rounds: int = 10,
    ci_half: float = 0.02,
    on_round: Callable[[int], None] | None = None,
) -> Interleaved:
    """Time every `fns[i]()` in rounds until each has `min_runs` calls, `min_rounds` rounds and
    `min_time_s` seconds of timing, and the median's 95% interval is within +-`ci_half` of it
    (or `max_time_s` seconds of timing per function have passed). `on_round(r)` runs between
    rounds (sampling machine load). Each round times a block of about 0.1 s per function."""
    blocks = []
    for fn in fns:  # warm-up, and how many calls make one block of ~0.1 s
        end = time.perf_counter() + warmup_s
        calls, t0 = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() < end:
            fn()
            calls += 1
        per_call = (time.perf_counter() - t0) / calls
        blocks.append(max(1, min(int(0.1 / max(per_call, 1e-9)), 1000)))
    samples: list[list[float]] = [[] for _ in fns]
    rounds_of: list[list[int]] = [[] for _ in fns]
    spent = [0.0] * len(fns)
    start, r = time.perf_counter(), 0
    while True:
        for k in range(len(fns)):
            i = (r + k) % len(fns)  # rotate who goes first
            fn = fns[i]
            for _ in range(blocks[i]):
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                samples[i].append(dt)
                rounds_of[i].append(r)
                spent[i] += dt
        r += 1
        if on_round is not None:
            on_round(r)
        enough = r >= min_rounds and all(
            len(s) >= min_runs and t >= min_time_s for s, t in zip(samples, spent, strict=True)
        )
        if enough and (min(spent) >= max_time_s or all(_tight(s, ci_half) for s in samples)):
            break
        if r >= 100_000:
            break
    lats = [Latency.from_samples(s, b) for s, b in zip(samples, rounds_of, strict=True)]
    return Interleaved(lats, r, time.perf_counter() - start)


def _tight(samples: list[float], ci_half: float) -> bool:
    """The median's order-statistic interval is within +-ci_half of the median (cheap to check
    each round; the record's own interval is bootstrapped over rounds at the end)."""
    from tvc.records import median_ci

    a = np.asarray(samples)
    lo, hi = median_ci(a)
    med = float(np.median(a))
    return lo is not None and med > 0 and (hi - lo) / 2 <= ci_half * med


def time_runner(runner: Runner, batch: int, **kwargs) -> Latency:
    feeds = runner.sample_feeds(batch)
    return time_calls(lambda: runner.infer(feeds), **kwargs)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------------------------------------
# Benchmarking variants into bench records


def make_record(variant, runner: Runner, batch: int, stats: Latency, command: str, **fields):
    """A BenchRecord for one timed (variant, backend, batch)."""
    from tvc.records import BenchRecord, ModelRef
    from tvc.runtime.device import board_name, environment

    env = environment()
    art = variant.artifact
    metrics = art.meta.get("metrics", {}) if art else {}
    model = ModelRef(
        name=variant.model_name,
        path=str(variant.path) if variant.path else None,
        artifact_id=art.id if art else None,
        lineage=[
            *art.meta.get("lineage", []),
            {"id": art.id, "kind": art.kind, "spec": art.meta.get("spec", {})},
        ]
        if art
        else [],
        params=metrics.get("params"),
        macs=metrics.get("macs"),
    )
    desc = runner.describe()
    return BenchRecord(
        variant=variant.label,
        model=model,
        precision=variant.precision,
        backend=desc["backend"],
        provider=desc["provider"],
        threads=desc.get("threads"),
        batch=batch,
        latency_ms=stats,
        throughput_ips=batch * 1e3 / stats.mean,
        size_bytes=variant.size_bytes,
        peak_rss_mb=round(peak_rss_mb(), 1),
        board=board_name(env),
        environment=env,
        command=command,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        extra=variant.extra,
        **fields,
    )


def device_measurements(runner: Runner, batch: int, n: int, power: Any) -> dict[str, Any]:
    """GPU compute time (TensorRT, from CUDA events) and energy per image where measurable."""
    from tvc.records import Energy
    from tvc.runtime.power import PowerSampler

    fields: dict[str, Any] = {}
    if hasattr(runner, "gpu_time_ms"):
        fields["gpu_compute_ms"] = Latency(**runner.gpu_time_ms(batch)["gpu_compute_ms"])
    if power is not None:
        feeds = runner.sample_feeds(batch)
        with PowerSampler(power) as sampler:
            for _ in range(n):
                runner.infer(feeds)
        energy = sampler.energy(n * batch)
        if energy:
            fields["energy"] = Energy(**energy)
    return fields
