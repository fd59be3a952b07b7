"""Where ONNX Runtime CPU spends its time, op type by op type, for one or more ONNX files.

    .venv/bin/python benchmarks/profile_ort_ops.py NAME A.onnx [B.onnx ...] [--runs 200]

Runs each model on a random input of its fixed shape (1 thread), with ORT's profiler on, and
sums the kernel time of each op type per run. Written to
benchmarks/results/NAME.json and .md. Used to explain why the detection INT8 variant is slower
than FP32 on the CPU (benchmarks/results/detection_int8_profile.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result


def profile(path: Path, runs: int, warmup: int = 0) -> dict[str, Any]:
    """Kernel time by op type per run; the first `warmup` runs are run but not counted."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        for _ in range(warmup + runs):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    cutoff = starts[warmup] if warmup and len(starts) > warmup else 0
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e["ts"] < cutoff:
            continue
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {
        "file": str(path),
        "runs": runs,
        "kernel_us_per_run": round(total / runs, 1),
        "ops_us_per_run": {k: round(v / runs, 1) for k, v in per_op.most_common()},
    }


def markdown(results: list[dict[str, Any]], top: int = 8) -> str:
    lines = []
    for r in results:
        lines += [
            f"### {r['file']}",
            "",
            f"Kernel time {r['kernel_us_per_run'] / 1000:.2f} ms per run ({r['runs']} runs, "
            "1 thread).",
            "",
            "| op | µs per run | share |",
            "|---|---:|---:|",
        ]
        for op, us in list(r["ops_us_per_run"].items())[:top]:
            lines.append(f"| {op} | {us:.1f} | {us / r['kernel_us_per_run']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="result file name under benchmarks/results/")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    results = [profile(f, args.runs) for f in args.files]
    path = write_result(args.name, {"results": results}, markdown(results))
    print(markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
