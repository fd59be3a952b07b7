"""The bench stage: time every variant of TARGET... on every backend and batch; bench records.

Several targets (`tvc bench teacher student student-int8`) and every variant and backend in
them are timed together, interleaved round by round (runtime/bench.py), with the process pinned
to --threads CPUs, so variants compared in one report are measured under the same conditions.
Each record carries its median's interval, the machine's load and CPU clock, and a `noisy`
verdict with its reasons (runtime/noise.py); a noisy record is also warned about on stderr.

Backends come from runtime's registry (ort, trt, and torch from tvc/stages/torch_backend.py).
With --data, each variant's quality on DATA's test split goes into its records, measured by the
eval stage's `measure` through the task adapter (top-1/top-5 of classifiers, COCO mAP of
detectors, TuSimple accuracy of lane models, bits/dim and probe accuracy of Image GPT), into the
record field the task names (`accuracy`, `detection`, `lanes`, `pixels`). A task may add
measurements of its own (`bench_extras`: Image GPT's generation speed with its decoder).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator, model_validator

from tvc.errors import ConfigError
from tvc.stages.config import ModelOptions, StageConfig, cli_flag, option
from tvc.stages.evaluate import Config as EvalConfig

if TYPE_CHECKING:
    from tvc.records import BenchRecord

log = logging.getLogger("tvc")

SUMMARY = "latency, throughput, size, memory (and quality with --data) of every variant"
_MODEL = ModelOptions.model_fields  # MODEL's options, declared once in stages/config.py
_EVAL = EvalConfig.model_fields  # options bench shares with eval, declared there


class Config(StageConfig):
    target: list[str] = option(..., "", argument=True, nargs=-1)
    backend: list[str] = option(
        lambda: ["ort"], "Comma-separated: ort, torch (trt where TensorRT is installed)."
    )
    batch: list[int] = option(lambda: [1], "e.g. 1,8")
    threads: int | None = _EVAL["threads"]
    provider: str = _EVAL["provider"]
    warmup_s: float = Field(1.0, ge=0, description="Seconds of untimed calls first.")
    min_runs: int = Field(50, ge=1, description="Time at least this many calls.")
    min_time_s: float = Field(
        3.0, ge=0, description="Time each variant for at least this many seconds."
    )
    max_time_s: float = Field(
        10.0,
        ge=0,
        description="Keep timing a variant up to this many seconds while its median's 95% "
        "interval is wider than +-2%.",
    )
    rounds: int = Field(
        10, ge=1, description="Interleaved rounds at least (every variant timed in each)."
    )
    pin: bool = option(
        True,
        "Pin the benchmark to --threads CPUs (when fewer than the machine has).",
        flag="--pin/--no-pin",
    )
    names: list[str] | None = option(
        None,
        "Names for the targets in the records, in TARGET order (default: with several "
        "targets, each one's last path part).",
    )
    json_out: str | None = option(
        None, "Write bench records (tvc.bench/1) to this file.", flag="--json"
    )
    data: str | None = option(
        None,
        "Also measure top-1/top-5 on DATA's test split (into the records); COCO mAP for "
        "detectors on detection DATA.",
    )
    limit: int | None = _EVAL["limit"]
    weights: str | None = _MODEL["weights"]
    num_classes: int | None = _MODEL["num_classes"]
    pretrained: bool = _MODEL["pretrained"]
    command: str | None = option(
        None, "The command the records name as their origin (default: this stage's).", hidden=True
    )

    @field_validator("target", mode="before")
    @classmethod
    def _targets(cls, v: object) -> object:
        if isinstance(v, str):  # one target, as recipes and Python callers give it
            return [v]
        if isinstance(v, tuple):  # the command line's TARGET...
            v = list(v)
        if v == []:
            raise ConfigError("no TARGET given", "e.g. tvc bench exported, or tvc bench A B C")
        return v

    @model_validator(mode="after")
    def _names_match(self) -> Config:
        if self.names is not None and len(self.names) != len(self.target):
            raise ConfigError(
                f"--names gives {len(self.names)} name(s) for {len(self.target)} target(s)",
                "give one name per TARGET, in the same order",
            )
        return self

    @field_validator("backend")
    @classmethod
    def _backends(cls, v: list[str]) -> list[str]:
        if not v:  # no backend would time nothing and print an empty table
            raise ConfigError("--backend is empty", "e.g. --backend ort or --backend ort,torch")
        return v

    @field_validator("batch")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            got = ",".join(map(str, v))
            raise ConfigError(f"--batch values must be >= 1, got '{got}'", "e.g. --batch 1,8")
        return v

    model_kwargs = ModelOptions.model_kwargs  # weights, num_classes, pretrained for load_model

    @classmethod
    def _flag_spelling(cls, name: str) -> str | None:
        return (cls.model_fields[name].json_schema_extra or {}).get("cli", {}).get("flag")

    def command_line(self) -> str:
        """The `tvc bench` command this config stands for, for records made without one."""
        args = ["tvc", "bench", *self.target]
        for name in sorted(self.model_fields_set - {"target", "command"}):
            value = getattr(self, name)
            flag = cli_flag(name, type(self).model_fields[name])
            if value is True:
                args.append(flag)
            elif value is False and "/--no-" in str(self._flag_spelling(name)):
                args.append(f"--no-{flag.removeprefix('--')}")
            elif value is not None and value is not False:  # 0 is a value
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                args += [flag, text]
        return shlex.join(args)


def run(cfg: Config) -> list[BenchRecord]:
    """Benchmark every variant of every target on every backend and batch, interleaved;
    return the records (and write them to cfg.json_out when given)."""
    import contextlib
    import uuid

    from tvc.progress import Progress
    from tvc.records import write_records
    from tvc.runtime.backends import check_target, get_backend
    from tvc.runtime.bench import device_measurements, make_record, time_interleaved
    from tvc.runtime.noise import MachineWatch, pin_cpus, unpin
    from tvc.runtime.power import find_power_source
    from tvc.safe_io import check_output_file
    from tvc.stages.evaluate import DataCache

    for target in cfg.target:
        check_target(target)
    if cfg.json_out:  # before any timing: a long measurement must not end in "cannot write"
        check_output_file(cfg.json_out, "--json")
    backends = [get_backend(name) for name in cfg.backend]  # every name checked before timing
    for target in cfg.target:
        _check_model_name(target, cfg.backend)
    command = cfg.command or cfg.command_line()
    data = DataCache(cfg.data, limit=cfg.limit) if cfg.data is not None else None
    found = [
        (target, backend, variant)
        for target in cfg.target
        for backend in backends
        for variant in backend.variants(target, cfg.model_kwargs())
    ]
    _label_by_target(found, cfg.target, cfg.names)
    records = []
    pinned, previous = pin_cpus(cfg.threads) if cfg.pin else (None, None)
    power = find_power_source()  # Jetson rails, NVML; None on a plain CPU host
    try:
        with contextlib.ExitStack() as stack:
            opened = []
            for target, backend, variant in found:
                runner = stack.enter_context(
                    backend.open(variant, threads=cfg.threads, provider=cfg.provider)
                )
                quality = _quality(runner, variant, data) if data else {}
                quality.update(_extras(runner, variant, cfg.threads))
                opened.append((target, backend, variant, runner, quality))
            names = [f"{v.label} ({b.name})" for _, b, v, _, _ in opened]
            bar = stack.enter_context(Progress())  # a bar on a terminal, plain lines in a log
            for batch in cfg.batch:
                log.info("timing %s at batch %d, interleaved in rounds", ", ".join(names), batch)
                feeds = [r.sample_feeds(batch) for _, _, _, r, _ in opened]
                fns = [_call(r, f) for (_, _, _, r, _), f in zip(opened, feeds, strict=True)]
                watch = MachineWatch(cfg.threads, pinned=pinned).start()
                bar.task(f"timing {len(fns)} variant(s) at batch {batch}", None, unit="rounds")

                def on_round(r: int, w: MachineWatch = watch, b: Progress = bar) -> None:
                    w.sample()
                    b.advance()

                done = time_interleaved(fns, warmup_s=cfg.warmup_s, min_runs=cfg.min_runs,
                                        min_time_s=cfg.min_time_s, max_time_s=cfg.max_time_s,
                                        min_rounds=cfg.rounds, on_round=on_round)  # fmt: skip
                bar.done()
                run_id = uuid.uuid4().hex[:12]
                for (target, _, variant, runner, quality), lat in zip(
                    opened, done.latencies, strict=True
                ):
                    cond = watch.conditions(lat, rounds=done.rounds, interleaved=names,
                                            run_id=run_id)  # fmt: skip
                    device = device_measurements(runner, batch, lat.n, power)
                    rec = make_record(variant, runner, batch, lat, command, **quality,
                                      conditions=cond, **device)  # fmt: skip
                    rec.extra = {**rec.extra, "target": target}
                    records.append(rec)
    finally:
        unpin(previous)
        if power is not None:
            power.close()
    warn_noisy(records)
    if cfg.json_out:
        write_records(records, cfg.json_out)
    return records


def _call(runner, feeds):
    return lambda: runner.infer(feeds)


def _check_model_name(target: str, backend: list[str]) -> None:
    if not Path(target).exists() and backend == ["ort"]:
        # a model name with the default backend: say what to do rather than guess. Detector,
        # lane and pixel configs are names of their task (not in the classifier registry).
        from tvc.tasks import task_for_model

        if task_for_model(target).name == "classification":
            from tvc.models.registry import resolve

            resolve(target)  # raises a helpful error for unknown names
        raise ConfigError(
            f"{target} is a model name; ONNX Runtime needs an exported model",
            f"run 'tvc export {target} -o OUT' then 'tvc bench OUT', or use --backend torch",
        )


def _label_by_target(found: list, targets: list[str], names: list[str] | None) -> None:
    """Variants named as the user named them: with --names or several targets, each label
    starts with its target's name ('student int8-qdq'), not with the architecture every variant
    of one model shares ('vit_fmnist int8-qdq' for teacher and student alike)."""
    if names is None and len(targets) < 2:
        return
    names = names or [Path(t.rstrip("/")).name or t for t in targets]
    by_target = dict(zip(targets, names, strict=True))
    for target, _, variant in found:
        suffix = variant.label.removeprefix(f"{variant.model_name} ")
        variant.label = f"{by_target[target]} {suffix}"


def warn_noisy(records: list[BenchRecord]) -> None:
    """One warning per noisy record, with its reasons, so a terminal user sees it."""
    for r in records:
        c = r.conditions
        if c is not None and c.noisy:
            log.warning("%s (%s, batch %d) is noisy: %s", r.variant, r.backend, r.batch,
                        "; ".join(c.reasons))  # fmt: skip


def _extras(runner, variant, threads: int | None) -> dict[str, Any]:
    """What the variant's task measures beyond one forward pass (iGPT: generation speed with
    its decoder graph), for ONNX Runtime variants of an exported artifact."""
    if variant.artifact is None or runner.describe()["backend"] != "ort":
        return {}
    from tvc.stages.evaluate import model_info
    from tvc.tasks import task_for_info

    return task_for_info(model_info(runner, variant)).bench_extras(variant, threads)


def _quality(runner, variant, data) -> dict[str, Any]:
    """The record field the variant's task fills (accuracy, detection) with its quality."""
    from tvc.records import BenchRecord
    from tvc.stages.evaluate import measure

    log.info("evaluating %s on %s", variant.label, data.spec)
    task, quality = measure(runner, variant, data)
    field = BenchRecord.model_fields.get(task.quality_key)
    if field is None:
        raise ConfigError(
            f"bench records have no place for {task.name} quality",
            f"measure {variant.label} with 'tvc eval' instead, or bench it without --data",
        )
    model = next(a for a in field.annotation.__args__ if a is not type(None))  # X | None -> X
    return {
        task.quality_key: model(**{k: v for k, v in quality.items() if k in model.model_fields})
    }
