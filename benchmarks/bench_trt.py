"""TensorRT on a GPU or board: engine build time, FP32/FP16/INT8 latency vs ONNX Runtime, parity.

Run on the machine the engines are for (a Jetson Orin, a desktop GPU), with `pip install
tvc[trt]`, on an export artifact that holds model.onnx and, ideally, model.fp16.onnx and
model.int8.onnx (tvc export MODEL --dynamic-batch --fp16 --int8 static --calib DATA -o OUT):

    python benchmarks/bench_trt.py OUT [--batches 1,8] [--iters 200] [--out benchmarks/results]

For each ONNX variant it builds the engine twice (a cold timing cache, then the warm one),
checks the engine against ONNX Runtime on the same inputs, and times at each batch:
TensorRT end to end as a caller sees it (host clock), GPU compute and end-to-end time from CUDA
events (with and without a CUDA graph), and ONNX Runtime on the same GPU (CUDA provider when
onnxruntime-gpu is installed, else the CPU, said so in the results). Power is sampled during the
TensorRT timing where the board or GPU reports it. Writes bench_trt.json and bench_trt.md.

Without TensorRT or a GPU it prints why and exits 0 without writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvc.errors import TvcError
from tvc.runtime.bench import time_calls
from tvc.runtime.device import board_name, environment

VARIANTS = (("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8"))


def why_not_here() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    try:
        from tvc.export.tensorrt import import_tensorrt
        from tvc.runtime.cuda import cuda_api

        import_tensorrt("bench_trt.py")
        cuda_api()
    except TvcError as exc:
        return exc.message
    return None


def find_variants(target: Path) -> list[tuple[Path, str]]:
    found = [(target / f, p) for f, p in VARIANTS if (target / f).is_file()]
    if not found:
        raise SystemExit(f"error: {target} holds none of {', '.join(f for f, _ in VARIANTS)}")
    return found


def ort_runner(onnx: Path, threads: int):
    from tvc.runtime.ort import OrtRunner

    try:
        return OrtRunner(onnx, provider="cuda")
    except TvcError:
        return OrtRunner(onnx, threads=threads, provider="cpu")


def bench_variant(onnx: Path, precision: str, batches: list[int], args, work: Path) -> dict:
    from tvc.export.parity import compare
    from tvc.export.tensorrt import EngineConfig, build_engine, onnx_input
    from tvc.runtime.power import PowerSampler
    from tvc.runtime.trt import TrtRunner

    _, shape = onnx_input(onnx)
    if isinstance(shape[0], int) and shape[0] > 0:  # a fixed-batch export
        batches = [shape[0]]
    lo, hi = min(batches), max(batches)
    cache = work / f"{precision}.timing.cache"
    cfg = EngineConfig(
        precision=precision,
        min_batch=lo,
        opt_batch=hi,
        max_batch=hi,
        workspace_mb=args.workspace_mb,
        timing_cache=cache,
    )
    engine = work / f"{precision}.engine"
    cold = build_engine(onnx, engine, cfg)  # raises ParityError on a mismatch with ORT
    warm = build_engine(onnx, work / f"{precision}.warm.engine", cfg)
    row = {
        "onnx": onnx.name,
        "precision": precision,
        "engine_bytes": engine.stat().st_size,
        "onnx_bytes": onnx.stat().st_size,
        "build_seconds_cold_cache": cold["build_seconds"],
        "build_seconds_warm_cache": warm["build_seconds"],
        "build_parity_vs_ort": cold["parity"],
        "engine": {k: v for k, v in cold.items() if k != "parity"},
        "batches": [],
    }
    timing = {"warmup_s": args.warmup_s, "min_runs": args.iters, "min_time_s": args.min_time_s}
    with TrtRunner(engine, meta=cold) as trt, ort_runner(onnx, args.threads) as ort:
        row["ort_provider"] = ort.provider
        for batch in batches:
            feeds = ort.sample_feeds(batch, seed=batch)
            out_name = ort.outputs[0].name
            ref, got = ort.infer(feeds)[out_name], trt.infer(feeds)[out_name]
            parity = compare(
                np.asarray(ref, np.float32), np.asarray(got, np.float32), atol=0.0, rtol=0.0
            ).as_dict()
            ort_host = time_calls(lambda f=feeds: ort.infer(f), **timing)
            trt_host = time_calls(lambda f=feeds: trt.infer(f), **timing)
            # energy over a fixed count of warm calls lasting about 2 s
            calls = max(50, int(2.0 / (trt_host.mean / 1e3)))
            with PowerSampler() as power:
                for _ in range(calls):
                    trt.infer(feeds)
            energy = power.energy(calls * batch)  # per image; None without a power sensor
            gpu = trt.gpu_time_ms(batch, iters=args.iters, warmup=10, cuda_graph=False)
            graph = trt.gpu_time_ms(batch, iters=args.iters, warmup=10, cuda_graph=True)
            row["batches"].append(
                {
                    "batch": batch,
                    "parity_vs_ort": {
                        k: parity[k]
                        for k in ("max_abs_diff", "mean_abs_diff", "top1_agreement", "n")
                    },
                    "trt_host_ms": trt_host.as_dict(),
                    "trt_gpu_compute_ms": gpu["gpu_compute_ms"],
                    "trt_gpu_end_to_end_ms": gpu["end_to_end_ms"],
                    "trt_cuda_graph_compute_ms": graph["gpu_compute_ms"],
                    "ort_host_ms": ort_host.as_dict(),
                    "speedup_vs_ort_p50": ort_host.p50 / trt_host.p50,
                    "energy": energy,
                }
            )
    return row


def markdown(result: dict) -> str:
    lines = [
        f"# TensorRT vs ONNX Runtime on {result['board']}",
        "",
        f"TensorRT {result['tensorrt']}; ONNX Runtime provider per row; {result['command']}",
        "",
        "| variant | batch | build s (cold / warm cache) | TRT p50 ms (host) | TRT GPU ms | "
        "TRT graph GPU ms | ORT p50 ms | ORT provider | speedup | max abs diff | top-1 agree | "
        "J / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in result["variants"]:
        if "error" in v:
            lines.append(f"| {v['precision']} | - | failed: {v['error']} |" + " - |" * 9)
            continue
        for b in v["batches"]:
            e = b["energy"]["joules_per_inference"] if b["energy"] else None
            lines.append(
                f"| {v['precision']} | {b['batch']} | {v['build_seconds_cold_cache']:.1f} / "
                f"{v['build_seconds_warm_cache']:.1f} | {b['trt_host_ms']['p50']:.3f} | "
                f"{b['trt_gpu_compute_ms']['p50']:.3f} | "
                f"{b['trt_cuda_graph_compute_ms']['p50']:.3f} | "
                f"{b['ort_host_ms']['p50']:.3f} | {v['ort_provider']} | "
                f"{b['speedup_vs_ort_p50']:.1f}x | {b['parity_vs_ort']['max_abs_diff']:.2e} | "
                f"{b['parity_vs_ort']['top1_agreement']:.0%} | {'-' if e is None else f'{e:.4f}'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", type=Path, nargs="?", help="export artifact (or folder of ONNX)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--min-time-s", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None, help="ORT CPU threads, if on the CPU")
    ap.add_argument("--workspace-mb", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()

    reason = why_not_here()
    if reason:
        print(f"skipped: TensorRT benchmarks need TensorRT and an NVIDIA GPU here. {reason}")
        return 0
    if args.target is None:
        ap.error("give the export artifact to benchmark")
    batches = sorted({int(b) for b in args.batches.split(",")})
    import tensorrt

    result = {
        "board": board_name(environment()),
        "tensorrt": tensorrt.__version__,
        "command": " ".join(["python", *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "variants": [],
    }
    with tempfile.TemporaryDirectory(prefix="tvc-bench-trt-") as tmp:
        for onnx, precision in find_variants(args.target):
            print(f"{precision}: building and timing {onnx.name} ...", flush=True)
            try:
                result["variants"].append(bench_variant(onnx, precision, batches, args, Path(tmp)))
            except TvcError as exc:  # one failing variant (e.g. a parity error) is a result too
                result["variants"].append(
                    {"onnx": onnx.name, "precision": precision, "error": exc.message}
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_trt.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "bench_trt.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'bench_trt.json'} and {args.out / 'bench_trt.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
