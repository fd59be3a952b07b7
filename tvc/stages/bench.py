"""The bench stage: time every variant of TARGET on every backend and batch; bench records.

Backends come from runtime's registry (ort, trt, and torch from tvc/stages/torch_backend.py).
With --data, each variant's quality on DATA's test split goes into its records, measured by the
eval stage's `measure` through the task adapter (top-1/top-5 of classifiers, COCO mAP of
detectors), into the record field the task names (`accuracy`, `detection`).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

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
    target: str = option(..., "", argument=True)
    backend: list[str] = option(
        lambda: ["ort"], "Comma-separated: ort, torch (trt where TensorRT is installed)."
    )
    batch: list[int] = option(lambda: [1], "e.g. 1,8")
    threads: int | None = _EVAL["threads"]
    provider: str = _EVAL["provider"]
    warmup_s: float = Field(1.0, ge=0, description="Seconds of untimed calls first.")
    min_runs: int = Field(50, ge=1, description="Time at least this many calls.")
    min_time_s: float = Field(3.0, ge=0, description="Time for at least this many seconds.")
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

    def command_line(self) -> str:
        """The `tvc bench` command this config stands for, for records made without one."""
        args = ["tvc", "bench", self.target]
        for name in sorted(self.model_fields_set - {"target", "command"}):
            value = getattr(self, name)
            flag = cli_flag(name, type(self).model_fields[name])
            if value is True:
                args.append(flag)
            elif value is not None and value is not False:  # 0 is a value
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                args += [flag, text]
        return shlex.join(args)


def run(cfg: Config) -> list[BenchRecord]:
    """Benchmark every variant of cfg.target on every backend and batch; return the records
    (and write them to cfg.json_out when given)."""
    from tvc.records import write_records
    from tvc.runtime.backends import check_target, get_backend
    from tvc.runtime.bench import device_measurements, make_record, time_runner
    from tvc.runtime.power import find_power_source
    from tvc.stages.evaluate import DataCache

    check_target(cfg.target)
    backends = [get_backend(name) for name in cfg.backend]  # every name checked before timing
    if not Path(cfg.target).exists() and cfg.backend == ["ort"]:
        # a model name with the default backend: say what to do rather than guess
        from tvc.models.registry import resolve

        resolve(cfg.target)  # raises a helpful error for unknown names
        raise ConfigError(
            f"{cfg.target} is a model name; ONNX Runtime needs an exported model",
            f"run 'tvc export {cfg.target} -o OUT' then 'tvc bench OUT', or use --backend torch",
        )
    command = cfg.command or cfg.command_line()
    data = DataCache(cfg.data, limit=cfg.limit) if cfg.data is not None else None
    records = []
    power = find_power_source()  # Jetson rails, NVML; None on a plain CPU host
    try:
        for backend in backends:
            for variant in backend.variants(cfg.target, cfg.model_kwargs()):
                with backend.open(variant, threads=cfg.threads, provider=cfg.provider) as runner:
                    quality = _quality(runner, variant, data) if data else {}
                    for batch in cfg.batch:
                        log.info("timing %s on %s, batch %d", variant.label, backend.name, batch)
                        stats = time_runner(runner, batch, warmup_s=cfg.warmup_s,
                                            min_runs=cfg.min_runs,
                                            min_time_s=cfg.min_time_s)  # fmt: skip
                        records.append(
                            make_record(variant, runner, batch, stats, command, **quality,
                                        **device_measurements(runner, batch, stats.n, power))
                        )  # fmt: skip
    finally:
        if power is not None:
            power.close()
    if cfg.json_out:
        write_records(records, cfg.json_out)
    return records


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
