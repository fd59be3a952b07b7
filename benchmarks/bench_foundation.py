"""Issue 2 measurements: export time and FP32 latency (ORT vs PyTorch eager), runtime overhead.

    .venv/bin/python benchmarks/bench_foundation.py            # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench_foundation.py --quick    # smoke run on vit_pico

For each model, batch (1, 8) and thread count (1, 2), ONNX Runtime and PyTorch eager are timed in
alternating rounds in the same process, so drift of the machine hits both equally. The overhead
check compares tvc's timed path (Runner.infer with input validation, via time_runner) with a bare
InferenceSession.run loop on the same session, also interleaved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result

from tvc.export.onnx import OnnxExportConfig
from tvc.models import load_model
from tvc.records import Latency
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import export_loaded


def interleaved(fns: dict[str, callable], rounds: int, per_round_s: float, min_per_round: int):
    """Time each fn in turn, round after round; return name -> Latency."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            n = 0
            while n < min_per_round or time.perf_counter() - start < per_round_s:
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
                n += 1
    return {k: Latency.from_samples(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    models = ["vit_pico"] if args.quick else ["vit_tiny", "deit_small", "vit_base"]
    per_round_s = 0.2 if args.quick else 1.0
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="tvc-bench-"))
    for name in models:
        loaded = load_model(name, warn_random=False)
        t0 = time.perf_counter()
        art = export_loaded(loaded, workdir / name, OnnxExportConfig(dynamic_batch=True))
        export_s = time.perf_counter() - t0
        params = art.meta["metrics"]["params"]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runner = OrtRunner(art.path / "model.onnx", threads=threads)
            for batch in (1, 8):
                x = (
                    np.random.default_rng(0)
                    .standard_normal((batch, *loaded.info.input_size))
                    .astype(np.float32)
                )
                xt = torch.from_numpy(x)

                def torch_fn(xt=xt, model=loaded.model):
                    with torch.inference_mode():
                        model(xt)

                feeds = {"input": x}
                stats = interleaved(
                    {
                        "ort": lambda feeds=feeds, runner=runner: runner.infer(feeds),
                        "torch": torch_fn,
                    },
                    args.rounds,
                    per_round_s,
                    2,
                )
                row = {
                    "model": name,
                    "params": params,
                    "threads": threads,
                    "batch": batch,
                    "export_s": round(export_s, 2),
                    "ort": stats["ort"].as_dict(),
                    "torch": stats["torch"].as_dict(),
                    "ort_speedup_p50": stats["torch"].p50 / stats["ort"].p50,
                }
                rows.append(row)
                print(
                    f"{name:12s} t={threads} b={batch}: ort p50 {stats['ort'].p50:8.2f} ms, "
                    f"torch p50 {stats['torch'].p50:8.2f} ms",
                    flush=True,
                )
            runner.close()

    # Overhead of tvc's runner vs a bare InferenceSession.run loop, same session, interleaved.
    oh_model = "vit_pico" if args.quick else "deit_small"
    runner = OrtRunner(workdir / oh_model / "model.onnx", threads=1)
    feeds = runner.sample_feeds(1)
    session, out_names = runner.session, [o.name for o in runner.session.get_outputs()]
    stats = interleaved(
        {"tvc": lambda: runner.infer(feeds), "bare": lambda: session.run(out_names, feeds)},
        args.rounds * 2,
        per_round_s,
        5,
    )
    overhead = stats["tvc"].p50 / stats["bare"].p50 - 1
    runner.close()

    md = [
        "| model | params | threads | batch | export s | ORT p50 ms | ORT p90 ms | torch p50 ms "
        "| torch p90 ms | ORT speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['threads']} | {r['batch']} | "
            f"{r['export_s']} | {r['ort']['p50']:.2f} | {r['ort']['p90']:.2f} | "
            f"{r['torch']['p50']:.2f} | {r['torch']['p90']:.2f} | "
            f"{r['ort_speedup_p50']:.2f}x |"
        )
    md.append("")
    md.append(
        f"Runtime overhead ({oh_model}, batch 1, 1 thread, interleaved): tvc Runner.infer "
        f"p50 {stats['tvc'].p50:.3f} ms vs bare InferenceSession.run p50 "
        f"{stats['bare'].p50:.3f} ms: {overhead:+.2%} (target: within 3%)."
    )
    write_result(
        "foundation",
        {
            "rows": rows,
            "overhead": {
                "model": oh_model,
                "tvc": stats["tvc"].as_dict(),
                "bare": stats["bare"].as_dict(),
                "overhead_p50": overhead,
            },
        },
        "\n".join(md),
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
