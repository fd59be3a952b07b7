"""How close a model runs to this CPU's GEMM limit (used by bench_cpu_int8.py).

- `gemm_limits`: one large MatMul in FP32 and one MatMulInteger (uint8 x int8) on ONNX Runtime,
  1 thread; the best of a few timings is the machine's GEMM peak (the best, not the median,
  because other work on a shared machine only ever slows a run down).
- `mac_split`: a PyTorch model's multiply-accumulates at batch 1, split into the Linear/Conv
  GEMMs that INT8 covers and the attention matmuls (Q.K^T, attention.V) that stay in float.
- `op_groups`: an ORT profile by op type (profile_ort_ops.profile) folded into GEMM kernels and
  the rest.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GEMM_OPS = frozenset(
    {"MatMul", "FusedMatMul", "Gemm", "Conv", "DynamicQuantizeMatMul", "MatMulInteger",
     "MatMulIntegerToFloat", "QGemm", "QLinearMatMul", "QLinearConv", "ConvInteger",
     "Attention", "QAttention", "MultiHeadAttention"}
)  # fmt: skip


def _matmul_model(path: Path, n: int, integer: bool) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        b = numpy_helper.from_array(rng.integers(-127, 127, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type = y_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def gemm_limits(n: int = 1024, repeats: int = 15) -> dict[str, Any]:
    """GFLOP/s (FP32 MatMul) and GOP/s (uint8 x int8 MatMulInteger) of an n^3 GEMM, 1 thread."""
    import onnxruntime as ort

    out: dict[str, Any] = {"n": n, "threads": 1, "repeats": repeats}
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for key, integer in (("fp32_gflops", False), ("int8_gops", True)):
            path = Path(tmp) / f"{key}.onnx"
            _matmul_model(path, n, integer)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            a = (
                rng.integers(0, 255, (n, n), dtype=np.uint8)
                if integer
                else rng.standard_normal((n, n)).astype(np.float32)
            )
            sess.run(None, {"A": a})
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(None, {"A": a})
                times.append(time.perf_counter() - t0)
            out[key] = round(2 * n**3 / min(times) / 1e9, 1)
            out[key.replace("_g", "_median_g")] = round(2 * n**3 / float(np.median(times)) / 1e9, 1)
    out["int8_features"] = int8_features()
    return out


INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2")


def int8_features() -> list[str]:
    """The CPU's integer-GEMM instruction sets (from /proc/cpuinfo): which of ORT's MLAS
    kernels can run, e.g. AMX tiles on recent Xeons vs VNNI on AMD EPYC (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    return [f for f in INT8_FLAGS if f in flags]


def mac_split(model, input_size: tuple[int, int, int]) -> dict[str, int]:
    """MACs at batch 1: `linear` (Linear and Conv GEMMs, what INT8 quantizes) and `attention`
    (the batched matmuls of attention, kept in float), counted by FlopCounterMode."""
    from tvc.compress.report import flop_counts

    linear = attention = 0
    for name, flops in flop_counts(model, input_size).items():
        if "bmm" in name or "baddbmm" in name:
            attention += flops // 2
        else:  # mm, addmm, convolution
            linear += flops // 2
    return {"linear": int(linear), "attention": int(attention)}


def op_groups(profile: dict[str, Any]) -> dict[str, float]:
    """An ORT profile (µs per run by op type) as the share spent in GEMM kernels vs the rest."""
    ops = profile["ops_us_per_run"]
    total = profile["kernel_us_per_run"] or 1.0
    gemm = sum(v for k, v in ops.items() if k in GEMM_OPS)
    return {
        "gemm_us": round(gemm, 1),
        "other_us": round(total - gemm, 1),
        "gemm_share": round(gemm / total, 3),
    }


def limit_ms(macs: dict[str, int], limits: dict[str, Any], int8: bool, batch: int = 1) -> float:
    """The time the model's GEMMs alone would take at the machine's peak: Linear/Conv MACs at
    the INT8 rate for an INT8 variant (FP32 otherwise), attention MACs always at FP32."""
    fp32 = limits["fp32_gflops"] * 1e9
    lin_rate = limits["int8_gops"] * 1e9 if int8 else fp32
    return 1e3 * batch * (2 * macs["linear"] / lin_rate + 2 * macs["attention"] / fp32)
