"""Fixed bench records from three machines, with numbers chosen so the comparisons are exact."""

from __future__ import annotations

import pytest

from tvc.records import Accuracy, BenchRecord, Conditions, Detection, Energy, Latency, ModelRef

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


def timed(rec: BenchRecord, lo: float, hi: float, *, run: str | None = "run-1",
          reasons: list[str] | None = None, **model) -> BenchRecord:  # fmt: skip
    """`rec` with a median interval lo..hi and, where `run` is given, the conditions of an
    interleaved run (noisy when `reasons` are given)."""
    lat = rec.latency_ms.model_copy(update={"ci_low": lo, "ci_high": hi, "mad": 0.01})
    cond = (
        Conditions(cpu_count=2, load_before=1.0, load_during=4.5 if reasons else 1.2,
                   rounds=12, run_id=run, noisy=bool(reasons), reasons=reasons or [])
        if run
        else None
    )  # fmt: skip
    return rec.model_copy(
        update={"latency_ms": lat, "conditions": cond, "model": rec.model.model_copy(update=model)}
    )


TEACHER = [{"id": "t0", "kind": "model"}, {"id": "t1", "kind": "onnx"}]
STUDENT = [
    {"id": "t0", "kind": "model"},
    {"id": "s0", "kind": "model"},
    {"id": "s1", "kind": "onnx"},
]


@pytest.fixture
def noisy_records() -> list[BenchRecord]:
    """An interleaved run as old benches labelled it: every variant by its architecture
    ('vit_fmnist ...'), given in no particular order; the INT8 student was timed under load;
    the teacher also ran on torch."""

    def arch(variant, path, lineage, **kw):
        r = record(variant, CPU, **kw)
        return r.model_copy(update={"model": r.model.model_copy(
            update={"name": "vit_fmnist", "path": path, "lineage": lineage,
                    "artifact_id": lineage[-1]["id"]})})  # fmt: skip

    teacher = "runs/demo/teacher-onnx/model.onnx"
    student = "runs/demo/student-onnx/model.onnx"
    int8 = "runs/demo/student-onnx/model.int8.onnx"
    noisy = ["load average 4.5 on 2 CPU(s): other work competed"]
    return [
        timed(arch("vit_fmnist int8-qdq", int8, STUDENT, p50=1.0, precision="int8-qdq",
                   size=1_090_000, top1=90.26), 0.95, 1.0, reasons=noisy, macs=63_000_000),
        timed(arch("vit_fmnist fp32", student, STUDENT, p50=1.6, size=3_730_000, top1=90.33),
              1.55, 1.65, macs=63_000_000),
        timed(arch("vit_fmnist fp32", teacher, TEACHER, p50=3.0, size=7_280_000, top1=92.01),
              2.9, 3.1, params=1_800_000),
        timed(arch("vit_fmnist fp32", teacher, TEACHER, p50=4.0, backend="torch"), 3.8, 4.2,
              params=1_800_000),
        timed(arch("vit_fmnist fp32", student, STUDENT, p50=3.9, backend="torch"), 3.7, 4.1),
    ]  # fmt: skip
