"""Fixed bench records from three machines, with numbers chosen so the comparisons are exact."""

from __future__ import annotations

import pytest

from tvc.records import Accuracy, BenchRecord, Detection, Energy, Latency, ModelRef

CPU = "AMD EPYC 7B13 x2"
NANO = "NVIDIA Jetson Orin Nano Developer Kit"
AGX = "NVIDIA Jetson AGX Orin Developer Kit"

ENVS = {
    CPU: {"cpu": "AMD EPYC 7B13", "cpu_count": 2, "os": "Linux 6.1", "python": "3.11.7",
          "packages": {"tvc": "0.1.0", "onnxruntime": "1.32.0", "numpy": "2.4.6"}},
    NANO: {"cpu": "ARMv8 Processor rev 1 (v8l)", "cpu_count": 6, "os": "Linux 5.15-tegra",
           "python": "3.10.12", "packages": {"tvc": "0.1.0", "tensorrt": "10.3.0"},
           "jetson": {"board": NANO, "l4t": "36.4", "power_mode": "15W"}},
    AGX: {"cpu": "ARMv8 Processor rev 1 (v8l)", "cpu_count": 12, "os": "Linux 5.15-tegra",
          "python": "3.10.12", "packages": {"tvc": "0.1.0", "tensorrt": "10.3.0"},
          "jetson": {"board": AGX, "l4t": "36.4", "power_mode": "MAXN"}},
}  # fmt: skip


def record(variant: str, board: str, p50: float, *, precision: str = "fp32",
           backend: str = "ort", batch: int = 1, size: int | None = None,
           top1: float | None = None, map_: float | None = None,
           energy_j: float | None = None, command: str | None = None) -> BenchRecord:  # fmt: skip
    lat = Latency(
        p50=p50,
        p90=p50 * 1.1,
        p99=p50 * 1.3,
        mean=p50 * 1.05,
        std=p50 * 0.05,
        min=p50 * 0.9,
        max=p50 * 2,
        n=200,
    )
    return BenchRecord(
        variant=variant,
        model=ModelRef(
            name=variant.split()[0],
            params=1_800_000 if "teacher" in variant else 450_000,
            lineage=[{"id": "abc123", "kind": "onnx", "spec": {"stage": "export-onnx"}}],
        ),
        precision=precision,
        backend=backend,
        provider="CPUExecutionProvider" if backend == "ort" else backend,
        threads=2 if backend == "ort" else None,
        batch=batch,
        latency_ms=lat,
        throughput_ips=batch * 1e3 / lat.mean,
        size_bytes=size,
        peak_rss_mb=120.0,
        accuracy=Accuracy(dataset="fashion-mnist", n=10000, top1=top1) if top1 else None,
        detection=Detection(dataset="fashion-mnist-det", n=200, map=map_, ap50=map_ + 20)
        if map_ is not None
        else None,
        energy=Energy(source="ina3221 sysfs", avg_power_w=7.5, joules_per_inference=energy_j)
        if energy_j
        else None,
        board=board,
        environment=ENVS[board],
        command=command or f"tvc bench runs/{variant.split()[0]}-onnx --batch {batch}",
        created="2026-11-25T10:00:00Z",
    )


@pytest.fixture
def records() -> list[BenchRecord]:
    """teacher fp32 -> student fp32 / int8 on a CPU (batch 1 and 8), and TensorRT on two Orins."""
    return [
        record("teacher fp32", CPU, 4.0, size=7_200_000, top1=90.0),
        record("student fp32", CPU, 2.0, size=3_600_000, top1=89.0),
        record("student int8-qdq", CPU, 1.0, precision="int8-qdq", size=1_000_000, top1=88.5),
        record("teacher fp32", CPU, 24.0, batch=8, size=7_200_000),
        record("student int8-qdq", CPU, 6.0, precision="int8-qdq", batch=8, size=1_000_000),
        record("teacher fp32", NANO, 2.0, backend="trt", size=7_300_000, top1=90.0, energy_j=0.015),
        record(
            "student int8-qdq",
            NANO,
            0.5,
            backend="trt",
            precision="int8-qdq",
            size=1_100_000,
            top1=88.4,
            energy_j=0.004,
        ),
        record("teacher fp32", AGX, 0.8, backend="trt", size=7_300_000),
        record("student int8-qdq", AGX, 0.25, backend="trt", precision="int8-qdq", size=1_100_000),
    ]


@pytest.fixture
def detections() -> list[BenchRecord]:
    """A DETR teacher and its pruned student on a CPU: mAP instead of top-1."""
    return [
        record("detr fp32", CPU, 4.0, size=2_000_000, map_=30.0),
        record("detr-student fp32", CPU, 2.5, size=1_000_000, map_=28.5),
        record("detr-student int8-qdq", CPU, 2.0, precision="int8-qdq", size=500_000, map_=27.25),
    ]
