"""The bench record (schema tvc.bench/1): one JSON object per measured variant, versioned.

Records from any machine (CPU host, desktop GPU, Jetson) share this schema, so `tvc report` can
merge them into one comparison. Bump SCHEMA when a field changes meaning; readers accept older
minor additions because every new field is optional.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tvc.errors import ConfigError

SCHEMA = "tvc.bench/1"


class Latency(BaseModel):
    """Latency of one inference call in milliseconds, over `n` timed runs."""

    model_config = ConfigDict(extra="forbid")
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int

    @classmethod
    def from_samples(cls, samples_s: list[float] | np.ndarray) -> Latency:
        """Percentiles, mean and spread of call times given in seconds."""
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()),
                   std=float(ms.std(ddof=1)) if ms.size > 1 else 0.0, min=float(ms.min()),
                   max=float(ms.max()), n=int(ms.size))  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()


class Accuracy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    n: int
    top1: float  # percent
    top5: float | None = None  # percent
    agreement: float | None = None  # percent top-1 agreement with a reference model


class Detection(BaseModel):
    """COCO box AP of a detector (DETR, Deformable DETR) on a detection dataset, in percent."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    n: int
    map: float  # mAP@[.5:.95]
    ap50: float
    ap75: float | None = None


class Lanes(BaseModel):
    """The TuSimple benchmark of a lane model (LSTR) on lane data, in percent."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    n: int
    accuracy: float  # TuSimple accuracy
    f1: float
    fp: float | None = None
    fn: float | None = None


@dataclass(frozen=True)
class Quality:
    """The model-quality number of a record: top-1 for classifiers, COCO mAP for detectors."""

    name: str  # "top-1" | "mAP": column title and the word in sentences
    value: float  # in points of 100
    unit: str  # what follows the value in text: "%" for top-1, nothing for mAP
    axis: str  # plot axis label
    data: tuple[str, str, int]  # (dataset, split, n): only equal data is compared

    def text(self) -> str:
        return f"{self.value:.2f}{self.unit}"


class Energy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str  # e.g. "ina3221 sysfs", "tegrastats", "nvml"
    avg_power_w: float
    joules_per_inference: float


class ModelRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str | None = None
    artifact_id: str | None = None
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    params: int | None = None
    macs: int | None = None


class BenchRecord(BaseModel):
    """One variant on one backend at one batch size on one machine."""

    model_config = ConfigDict(extra="forbid")
    schema_: str = Field(SCHEMA, alias="schema")
    variant: str  # a short label, e.g. "vit_nano pruned50 int8"
    model: ModelRef
    precision: str  # fp32 | fp16 | int8-qdq | int8-dynamic | mixed
    backend: str  # ort | torch | trt
    provider: str
    threads: int | None = None
    batch: int
    latency_ms: Latency
    throughput_ips: float  # images per second
    gpu_compute_ms: Latency | None = None  # TensorRT: GPU time from CUDA events
    size_bytes: int | None = None
    peak_rss_mb: float | None = None
    accuracy: Accuracy | None = None
    detection: Detection | None = None  # detectors benched with detection --data
    lanes: Lanes | None = None  # lane models benched with lane --data
    energy: Energy | None = None
    board: str  # human label of the machine
    environment: dict[str, Any]
    command: str
    created: str
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def quality(self) -> Quality | None:
        """Top-1 of a classifier, else COCO mAP of a detector, else None (benched without data)."""
        if self.accuracy is not None:
            a = self.accuracy
            return Quality("top-1", a.top1, "%", "top-1 accuracy (%)", (a.dataset, a.split, a.n))
        if self.detection is not None:
            d = self.detection
            return Quality("mAP", d.map, "", "COCO mAP", (d.dataset, d.split, d.n))
        if self.lanes is not None:
            ln = self.lanes
            return Quality("TuSimple acc", ln.accuracy, "%", "TuSimple accuracy (%)",
                           (ln.dataset, ln.split, ln.n))  # fmt: skip
        return None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def write_records(records: list[BenchRecord], path: str | Path) -> None:
    """Write records as a JSON list, atomically."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps([r.to_json() for r in records], indent=2) + "\n")
    os.replace(tmp, path)


def read_records(path: str | Path) -> list[BenchRecord]:
    """Read a JSON file holding one record or a list of them; errors name the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"bench record file {path} does not exist", "check the path") from exc
    except IsADirectoryError as exc:
        raise ConfigError(
            f"{path} is a directory, not a bench record file", "pass files from 'tvc bench --json'"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc})", "pass files from 'tvc bench --json'"
        ) from exc
    items = data if isinstance(data, list) else [data]
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("schema") != SCHEMA:
            raise ConfigError(
                f"{path} record {i} is not a {SCHEMA} bench record",
                "pass files written by 'tvc bench --json'",
            )
        try:
            out.append(BenchRecord.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(
                f"{path} record {i}: field '{loc}': {err['msg']}",
                "pass files written by 'tvc bench --json'",
            ) from exc
    return out
