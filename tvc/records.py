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
    """Latency of one inference call in milliseconds, over `n` timed runs.

    `ci_low`..`ci_high` is a 95% confidence interval of the median (p50) and `mad` the median
    absolute deviation; records written before they existed leave them out (None).
    """

    model_config = ConfigDict(extra="forbid")
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    mad: float | None = None

    @classmethod
    def from_samples(
        cls, samples_s: list[float] | np.ndarray, blocks: list[int] | np.ndarray | None = None
    ) -> Latency:
        """Percentiles, mean and spread of call times given in seconds. `blocks` numbers the
        round each sample was timed in; with it the median's interval is bootstrapped over
        whole rounds, so a burst of load during one round widens it as it should."""
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        lo, hi = median_ci(ms, blocks)
        return cls(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(ms.mean()),
                   std=float(ms.std(ddof=1)) if ms.size > 1 else 0.0, min=float(ms.min()),
                   max=float(ms.max()), n=int(ms.size), ci_low=lo, ci_high=hi,
                   mad=float(np.median(np.abs(ms - p50))))  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        return self.model_dump()

    @property
    def has_ci(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None

    def ci_text(self) -> str:
        """'1.52-1.61' (the median's 95% interval), or '' for a record without one."""
        return f"{self.ci_low:.3g}-{self.ci_high:.3g}" if self.has_ci else ""


def median_ci(
    values: np.ndarray, blocks: list[int] | np.ndarray | None = None
) -> tuple[float | None, float | None]:
    """A 95% confidence interval of the median of `values`.

    Without blocks: the distribution-free order-statistic interval (binomial ranks). With
    blocks (the round of each value): a seeded bootstrap that resamples whole rounds, which
    keeps the correlation of calls timed back to back. Fewer than 6 values give (None, None).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n < 6:
        return None, None
    if blocks is not None and len(set(np.asarray(blocks).tolist())) >= 5:
        b = np.asarray(blocks)
        groups = [v[b == k] for k in np.unique(b)]
        rng = np.random.default_rng(0)
        meds = np.empty(400)
        for i in range(meds.size):
            pick = rng.integers(0, len(groups), len(groups))
            meds[i] = np.median(np.concatenate([groups[j] for j in pick]))
        lo, hi = np.percentile(meds, [2.5, 97.5])
        return float(lo), float(hi)
    s = np.sort(v)
    half = 1.959964 * np.sqrt(n) / 2  # ranks n/2 -+ z*sqrt(n)/2 of a Binomial(n, 1/2)
    j = max(int(np.floor(n / 2 - half)), 0)
    k = min(int(np.ceil(n / 2 + half)), n - 1)
    return float(s[j]), float(s[k])


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


class Pixels(BaseModel):
    """Image GPT on pixel data: bits per dimension (lower is better) and, where the images are
    labelled, linear-probe and fine-tuned accuracy in percent."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    split: str = "test"
    n: int
    bpd: float
    probe_accuracy: float | None = None
    class_top1: float | None = None
    agreement: float | None = None  # next-token agreement with a reference model (0-1)


class Generation(BaseModel):
    """Whole images generated greedily at batch 1 by a token model's single-step decoder with
    its key/value cache, against re-running the full-sequence graph for every token."""

    model_config = ConfigDict(extra="forbid")
    decoder: str  # the decoder graph's file, beside the timed model
    tokens: int  # tokens generated per image
    tokens_per_s: float  # with the cache
    ms_per_image: float  # with the cache
    no_cache_tokens_per_s: float
    speedup: float  # cache over no cache
    same_tokens: bool  # both ways generated the same images


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


class Conditions(BaseModel):
    """What the machine was doing while a record was timed, and whether to trust it.

    Load is the 1-minute load average (os.getloadavg); CPU frequency comes from cpufreq in
    /sys, else /proc/cpuinfo's "cpu MHz", else it is unknown (`freq_source` says which).
    `noisy` is the verdict and `reasons` say why, in words a user can act on.
    """

    model_config = ConfigDict(extra="forbid")
    cpu_count: int
    load_before: float | None = None  # 1-min load average just before timing
    load_during: float | None = None  # highest 1-min load average seen while timing
    freq_source: str = "unknown"
    mhz_before: float | None = None  # mean over the CPUs
    mhz_during_min: float | None = None  # lowest / highest mean seen while timing
    mhz_during_max: float | None = None
    pinned_cpus: list[int] | None = None  # the CPUs the process was pinned to, if it was
    rounds: int = 1  # timing rounds (each variant timed once per round)
    interleaved: list[str] = Field(default_factory=list)  # variants timed in the same rounds
    run_id: str | None = None  # records from one interleaved run share it
    noisy: bool = False
    reasons: list[str] = Field(default_factory=list)

    def freq_text(self, which: str = "during") -> str:
        if which == "before":
            return f"{self.mhz_before:.0f} MHz" if self.mhz_before else "unknown"
        lo, hi = self.mhz_during_min, self.mhz_during_max
        if lo is None or hi is None:
            return "unknown"
        return f"{lo:.0f} MHz" if abs(hi - lo) < 1 else f"{lo:.0f}-{hi:.0f} MHz"


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
    pixels: Pixels | None = None  # Image GPT benched with pixel --data
    generation: Generation | None = None  # Image GPT: completing images with its decoder
    energy: Energy | None = None
    conditions: Conditions | None = None  # load, CPU clock, rounds and the noise verdict
    board: str  # human label of the machine
    environment: dict[str, Any]
    command: str
    created: str
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def quality(self) -> Quality | None:
        """Top-1 of a classifier, COCO mAP of a detector, TuSimple accuracy of a lane model, the
        fine-tuned or probe accuracy of an Image GPT; None when benched without data."""
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
        px = self.pixels
        if px is not None and (px.class_top1 is not None or px.probe_accuracy is not None):
            # the accuracy its features give (higher is better, as the plots expect); bits/dim
            # has its own column
            data = (px.dataset, px.split, px.n)
            if px.class_top1 is not None:
                return Quality("fine-tuned top-1", px.class_top1, "%", "fine-tuned top-1 (%)", data)
            return Quality("probe", px.probe_accuracy, "%", "linear-probe accuracy (%)", data)
        return None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def write_records(records: list[BenchRecord], path: str | Path) -> None:
    """Write records as a JSON list, atomically."""
    from tvc.safe_io import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps([r.to_json() for r in records], indent=2) + "\n")


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
