"""Issue 17, the scheme for the CPU it runs on: dynamic INT8 weights as full-range int8, 7-bit
int8 and uint8 with zero points (`tvc export --int8 dynamic --int8-weight-range
full|reduced|unsigned`), against FP32, on ONNX Runtime CPU with 1 thread.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_int8_weights.py \
        --teacher benchmarks/artifacts/fmnist_teacher --name int8_weights_epyc_avx2

Without VNNI, ORT multiplies uint8 activations by int8 weights with VPMADDUBSW, whose int16
pair sums saturate at full range (hence 7-bit weights, tvc's auto there); uint8 weights go
through a 16-bit kernel that cannot saturate. Which is faster depends on how many pipes run the
CPU's integer multiplies, so this measures it: deit_small (random weights with trained-like
biases and norms) for speed and the worst output error on noise images, the trained Fashion-MNIST
teacher for speed and top-1 on its test images. Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_cpu_int8 import FP32, timed, timing_args
from bench_int8 import like_trained
from common import load_note, write_result

from tvc.export.onnx import OnnxExportConfig
from tvc.export.quantize import QuantConfig, quantize_dynamic
from tvc.models import load_model
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import export_loaded

log = logging.getLogger("tvc")

RANGES = {"int8 full": "full", "int8 7-bit": "reduced", "uint8": "unsigned"}


def variants(loaded, work: Path) -> dict[str, Path]:
    """FP32 and one dynamic INT8 per weight range, from one exported model.onnx."""
    fp32 = export_loaded(loaded, work / "fp32", OnnxExportConfig(dynamic_batch=True)).path
    files = {FP32: fp32 / "model.onnx"}
    for label, weight_range in RANGES.items():
        out = work / f"{weight_range}.onnx"
        quantize_dynamic(files[FP32], out, QuantConfig(mode="dynamic", weight_range=weight_range))
        files[label] = out
    return files


def worst_error(files: dict[str, Path], x: np.ndarray) -> dict[str, float]:
    """Each variant's largest |output - FP32 output| on `x`, over FP32's largest |output|."""
    outs = {}
    for k, p in files.items():
        with OrtRunner(p, threads=1) as r:
            outs[k] = next(iter(r.infer(x).values()))  # the logits
    ref = outs[FP32]
    return {k: round(float(np.abs(y - ref).max() / np.abs(ref).max()), 4) for k, y in outs.items()}


def run_model(name: str, args, work: Path) -> dict[str, Any]:
    loaded = like_trained(load_model(name, warn_random=False))
    files = variants(loaded, work / name)
    x = np.random.default_rng(0).standard_normal((8, *loaded.info.input_size)).astype(np.float32)
    return {"model": name, "worst_error": worst_error(files, x), "batch1": timed(files, 1, args),
            "batch8": timed(files, 8, args)}  # fmt: skip


def run_teacher(spec: str, args, work: Path) -> dict[str, Any]:
    from tvc.data import load_images
    from tvc.eval.classification import evaluate
    from tvc.runtime.predict import runner_predict

    loaded = load_model(spec)
    info = loaded.info
    files = variants(loaded, work / "teacher")
    test = load_images(args.data, "test", input_size=info.input_size, mean=info.mean,
                       std=info.std, limit=args.eval_limit, seed=0)  # fmt: skip
    accuracy = {}
    for k, path in files.items():  # batches of 64, as `tvc eval` reads them
        with OrtRunner(path, threads=args.threads) as r:
            res = evaluate(runner_predict(r), test, batch_size=64)
        accuracy[k] = {"top1": round(res["top1"], 2), "n": res["n"]}
    x = test.take(list(range(64)))[0]
    return {"model": spec, "worst_error": worst_error(files, x), "accuracy": accuracy,
            "data": f"{args.data} test", "batch1": timed(files, 1, args),
            "batch8": timed(files, 8, args)}  # fmt: skip


def markdown(runs: list[dict[str, Any]], args) -> str:
    lines = [
        "# Dynamic INT8 weights for the CPU it runs on (issue 17)",
        "",
        f"ONNX Runtime CPU, {args.threads} thread; the variants of a model are timed in one "
        f"interleaved run at batch 1, then batch 8; {args.load_note}. Worst error: the largest "
        "|output - FP32 output| over FP32's largest |output| (deit_small on 8 noise images, the "
        "teacher on 64 test images).",
    ]
    for run in runs:
        acc = run.get("accuracy")
        lines += ["", f"## {run['model']}", ""]
        head = "| variant | batch 1 p50 ms [95% CI] | vs FP32 | batch 8 img/s | worst error |"
        lines += [
            head + (" top-1 % |" if acc else ""),
            "|---|---:|---:|---:|---:|" + ("---:|" if acc else ""),
        ]
        for k, v in run["batch1"]["variants"].items():
            lat = v["latency_ms"]
            b8 = run["batch8"]["variants"][k]["images_per_s"]
            err = run["worst_error"][k]
            row = (f"| {k} | {lat['p50']:.2f} [{lat['ci_low']:.2f}, {lat['ci_high']:.2f}] | "
                   f"{v['speedup_vs_tvc_fp32']:.2f}x | {b8:.1f} | {err:.4f} |")  # fmt: skip
            lines.append(row + (f" {acc[k]['top1']:.2f} |" if acc else ""))
        if acc:
            lines += ["", f"Top-1 on {acc[FP32]['n']} {run['data']} images."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit_small")
    ap.add_argument("--teacher", default=None, help="trained Fashion-MNIST model artifact")
    timing_args(ap)
    ap.add_argument("--eval-limit", type=int, default=10000)
    ap.add_argument("--name", default="int8_weights", help="results file name (one per board)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    args.load_note = load_note()
    work = Path(tempfile.mkdtemp(prefix="tvc-bench-int8-weights-"))
    runs = [run_model(m.strip(), args, work) for m in args.models.split(",") if m.strip()]
    if args.teacher:
        runs.append(run_teacher(args.teacher, args, work))
    text = markdown(runs, args)
    out = write_result(args.name, {"config": vars(args), "runs": runs}, text)
    print(text)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
