"""Latency measurement: warm up, then time a minimum count and duration; report percentiles.

Timing wraps `Runner.infer` from the outside, so every backend is measured the same way and
the runner's own overhead (input validation) is included, as a user would see it.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

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
