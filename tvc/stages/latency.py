"""`tvc compress MODEL --target-latency MS [--on ort:THREADS] [--latency-table FILE]`.

Above compress/, export/ and runtime/, this module joins them: candidates are built and scored by
tvc.compress.latency_target, a few of them are exported to ONNX and timed with ONNX Runtime on
this machine to fit a latency table (tvc.compress.latency_table) unless a table file is given,
the chosen prune ratio and mode, low-rank energy and merge schedule become the compress config,
and after compression the compressed model is exported and timed again, interleaved with its
parent, so the report holds predicted and measured latency side by side.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.errors import ConfigError

if TYPE_CHECKING:
    from tvc.compress.latency_table import LatencyTable
    from tvc.models.load import LoadedModel
    from tvc.stages.compress import Config

log = logging.getLogger("tvc")

BACKENDS = ("ort",)
SCORE_INPUTS = 256  # images whose top-1 agreement with the parent scores a candidate
WITHIN = 0.10  # "meets the target" allows measured latency up to 10% over it
FINAL_TIME_S = (2.0, 5.0)  # min and max seconds of timing per model, compressed vs parent


def clock_of(threads: int) -> str:
    """What the reported milliseconds are."""
    if threads == 1:
        return "CPU time of the calling thread per call (1 ORT thread; excludes preemption)"
    return "wall-clock p50 per call"


def parse_on(text: str | None) -> tuple[str, int]:
    """'ort:1' or 'ort/2' -> ('ort', threads); None -> ('ort', 1)."""
    if text is None:
        return "ort", 1
    backend, sep, threads = text.replace("/", ":").partition(":")
    if backend not in BACKENDS:
        raise ConfigError(f"--on {text}: unknown backend '{backend}'",
                          f"use one of {', '.join(BACKENDS)}, e.g. --on ort:1")  # fmt: skip
    try:
        n = int(threads) if sep else 1
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"--on {text}: the thread count must be a whole number >= 1",
                          "e.g. --on ort:1 or --on ort:4")  # fmt: skip
    return backend, n


def time_onnx(models: list[Any], info, threads: int, *, min_time_s: float = 1.0,
              max_time_s: float = 3.0) -> list[dict[str, float]]:  # fmt: skip
    """Export every model to ONNX (parity checked) and time them interleaved with ONNX Runtime
    on the CPU, batch 1 (tvc.runtime.bench.time_interleaved). Per model: `wall_ms`, the median
    wall-clock latency, and `cpu_ms`, the median CPU time of the calling thread per call, which
    with one ORT thread (the caller computes) is the latency without the time the process
    spent preempted by other work on a shared machine; `ms` is what --target-latency uses:
    cpu_ms with 1 thread, wall_ms with more (other threads' work is not in cpu_ms)."""
    import statistics
    import time

    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.runtime.bench import time_interleaved
    from tvc.runtime.ort import OrtRunner
    from tvc.stages.export import export_loaded

    cpu: list[list[float]] = [[] for _ in models]

    def call(runner, feeds, into: list[float]) -> None:
        c0 = time.thread_time()
        runner.infer(feeds)
        into.append(time.thread_time() - c0)

    with tempfile.TemporaryDirectory(prefix="tvc-latency-") as tmp:
        fns = []
        for i, m in enumerate(models):
            art = export_loaded(
                LoadedModel(m, info), Path(tmp) / f"m{i}", OnnxExportConfig(batch=1)
            )
            runner = OrtRunner(art.file("model.onnx"), threads=threads)
            feeds = runner.sample_feeds(1)
            fns.append(lambda runner=runner, feeds=feeds, i=i: call(runner, feeds, cpu[i]))
        timed = time_interleaved(fns, warmup_s=0.5, min_runs=20, min_time_s=min_time_s,
                                 max_time_s=max_time_s, min_rounds=5)  # fmt: skip
    out = []
    for lat, samples in zip(timed.latencies, cpu, strict=True):
        cpu_ms = statistics.median(samples[-lat.n :]) * 1e3  # the timed calls, not the warm-up
        wall = round(lat.p50, 4)
        out.append({"wall_ms": wall, "cpu_ms": round(cpu_ms, 4),
                    "ms": round(cpu_ms, 4) if threads == 1 else wall})  # fmt: skip
    return out


def measure_table(
    info, models: dict, points: list[tuple], cands: dict, threads: int
) -> LatencyTable:
    """Time the `points` (Candidate.key: ratio, global, energy, r) of `models` and fit a
    LatencyTable."""
    from tvc.compress.latency_table import Measured, make_table
    from tvc.runtime.device import environment

    log.info("measuring a latency table: %d configurations on ort with %d thread(s)",
             len(points), threads)  # fmt: skip
    ms = time_onnx([models[p] for p in points], info, threads)
    measured = [Measured(prune=p[0], lowrank=p[2], merge=cands[p].schedule,
                         macs=cands[p].macs, lowrank_macs=cands[p].lowrank_macs,
                         tokens=cands[p].tokens, ms=t["ms"])
                for p, t in zip(points, ms, strict=True)]  # fmt: skip
    clock = "cpu" if threads == 1 else "wall"
    return make_table(info.arch, info.input_size, "ort", threads, measured, environment(),
                      clock=clock)  # fmt: skip


def plan_for_target(task, loaded: LoadedModel, cfg: Config) -> tuple[Config, Callable]:
    """Choose the widths and merging for cfg.target_latency; the updated config and the
    hook that measures the compressed model (tvc.compress.pipeline calls it)."""
    from tvc.compress.latency_table import load_table, save_table
    from tvc.compress.latency_target import (
        build_candidates,
        calibration_points,
        choose,
        describe_choice,
        refine_schedule,
    )
    from tvc.compress.lowrank import LowRankConfig
    from tvc.compress.merge import merging_suspended
    from tvc.compress.pipeline import DATA_BATCHES, TAYLOR_BATCH_SIZE, TAYLOR_BATCHES

    backend, threads = parse_on(cfg.on)
    info, parent = loaded.info, loaded.model.eval()
    table: LatencyTable | None = None
    path = Path(cfg.latency_table) if cfg.latency_table else None
    if path is not None and path.exists():
        table = load_table(path)
        table.check_fits(info.arch, info.input_size)
        if cfg.on is not None and (table.backend, table.threads) != (backend, threads):
            raise ConfigError(
                f"--on {cfg.on} but the latency table {path} was measured on "
                f"{table.backend}:{table.threads}",
                f"drop --on or pass --on {table.backend}:{table.threads}",
            )
        threads = table.threads
    settings = cfg.model_dump(exclude_unset=True)
    settings.setdefault("round_to", cfg.round_to)
    samples, source = task.sample_inputs(info, cfg.data, SCORE_INPUTS)
    batches = None
    if cfg.importance in ("taylor", "data"):
        n = TAYLOR_BATCHES if cfg.importance == "taylor" else DATA_BATCHES
        batches = task.taylor_batches(info, cfg.data, n, TAYLOR_BATCH_SIZE)

    def prune(m, ratio: float, global_prune: bool) -> None:
        task.prune(m, {**settings, "prune": ratio, "global_": global_prune},
                   example=samples[:1], batches=batches)  # fmt: skip

    # per-block and globally ranked widths, unless the user chose one with --global
    modes = (settings["global_"],) if "global_" in settings else (False, True)

    def factorize(m, energy: float) -> None:
        task.factorize(m, LowRankConfig(energy=energy, round_to=cfg.round_to), samples=samples)

    with merging_suspended(parent):
        # a carried table from before factorized layers had their own cost cannot price them
        lowrank = factorize if table is None or table.knows_lowrank else None
        cands, models = build_candidates(parent, info.input_size, prune, metric=cfg.merge_metric,
                                         factorize=lowrank, prune_modes=modes)  # fmt: skip
    by_key = {c.key: c for c in cands}
    if table is None:
        ratios = tuple(sorted({c.prune for c in cands}))
        merges = sorted({c.merge for c in cands})
        energies = tuple({c.lowrank for c in cands})
        points = [p for p in calibration_points(ratios, merges, energies) if p in models]
        table = measure_table(info, models, points, by_key, threads)
        log.info("latency table fitted: worst error %.1f%% on its %d measurements",
                 table.fit_max_rel_error * 100, len(table.measured))  # fmt: skip
        if path is not None:
            save_table(table, path)
            log.info("wrote the latency table %s", path)
    reference = task.outputs(parent, samples)

    def agreement(m) -> float:
        return task.agreement(reference, task.outputs(m, samples))["agreement"]

    best, front = choose(cands, table, cfg.target_latency, lambda c: agreement(models[c.key]))
    parent_predicted = by_key[(0.0, modes[0], None, 0)].predicted_ms
    uniform, sensitivity = best, []
    if best.merge:  # spread the merging where it costs least
        base = models.base(best.width)
        refined, sensitivity = refine_schedule(
            best, base, info.input_size, table, cfg.target_latency, agreement, cfg.merge_metric
        )
        best = refined or best
    if cfg.distill is not None:
        log.info("the candidates were ranked by agreement before training; after distillation "
                 "a more pruned, less merged one may come out ahead "
                 "(benchmarks/results/pareto.md)")  # fmt: skip
    models.clear()  # the candidates' copies are no longer needed
    log.info("latency target %.3g ms: %s, predicted %.3f ms, agreement %.1f%% on %s",
             cfg.target_latency, describe_choice(best.as_dict()), best.predicted_ms,
             best.agreement * 100, source)  # fmt: skip
    update: dict[str, Any] = {"prune": best.prune or None, "merge_tokens": best.merge_option,
                              "lowrank": best.lowrank, "global_": best.global_prune}  # fmt: skip
    new_cfg = cfg.model_copy(update=update)
    plan = {
        "target_ms": cfg.target_latency,
        "on": {"backend": backend, "threads": threads},
        "table": str(path) if path is not None else "measured here",
        "table_fit_max_rel_error": table.fit_max_rel_error,
        "coefficients": table.coefficients,
        "measured_configurations": [m.model_dump() for m in table.measured],
        "scored_on": f"{len(samples)} {source}",
        "score": "top-1 agreement with the parent before any training",
        "merge_metric": cfg.merge_metric,  # what every candidate's matching compared
        "chosen": best.as_dict(),
        "frontier": [c.as_dict() for c in front],
        "uniform_choice": uniform.as_dict(),
        "merge_sensitivity": sensitivity,
        "predicted_ms": best.predicted_ms,
    }

    def measure(student: LoadedModel) -> dict[str, Any]:
        log.info("timing the compressed model against its parent (ort, %d thread(s))", threads)
        with merging_suspended(parent):
            lo, hi = FINAL_TIME_S
            p, s = time_onnx([parent, student.model.eval()], info, threads,
                             min_time_s=lo, max_time_s=hi)  # fmt: skip
        p_ms, s_ms = p["ms"], s["ms"]
        # The parent timed beside the student tells whether this machine still runs at the
        # speed the table was measured at: a shared or throttled CPU drifts by tens of %.
        drift = p_ms / parent_predicted - 1
        out = {**plan, "measured_ms": round(s_ms, 4), "parent_measured_ms": round(p_ms, 4),
               "measured": {"compressed": s, "parent": p, "clock": clock_of(threads)},
               "speedup": round(p_ms / s_ms, 3),
               "prediction_error": round(s_ms / best.predicted_ms - 1, 4),
               "meets_target": s_ms <= cfg.target_latency * (1 + WITHIN),
               "parent_predicted_ms": parent_predicted, "machine_drift": round(drift, 4),
               "meets_target_at_table_speed":
                   s_ms / (1 + drift) <= cfg.target_latency * (1 + WITHIN)}  # fmt: skip
        if abs(drift) > WITHIN:
            log.warning("the parent ran %.3f ms where the latency table predicts %.3f ms (%+.0f%%):"
                        " this machine's speed changed since the table was measured (or the "
                        "table is from another machine); at the table's speed the compressed "
                        "model would take %.3f ms", p_ms, parent_predicted, drift * 100,
                        s_ms / (1 + drift))  # fmt: skip
        log.info("latency: predicted %.3f ms, measured %.3f ms (parent %.3f ms), target %.3g ms"
                 " %s", best.predicted_ms, s_ms, p_ms, cfg.target_latency,
                 "met" if out["meets_target"] else "MISSED (by more than 10%)")  # fmt: skip
        return out

    return new_cfg, measure
