"""Issue 19's variants table: params, MACs, latency ratio and fidelity to the parent, for the
trained Fashion-MNIST ViT as it is and with activation outliers like real pretrained ViTs carry.

    .venv/bin/python benchmarks/bench_variants_fmnist.py        # ~6 min on 2 cores

No pretrained ViT can be fetched here (no model hub), so the parent is tvc's teacher trained on
the real Fashion-MNIST, once as it is and once with outliers made on purpose (three channels of
every LayerNorm x50, the next Linear's input columns /50: the same function, the activation
outliers of real pretrained ViTs). Variants: 30% of each width pruned with magnitude, data (the
label-free feature Fisher) and random importance, no recovery training; static INT8 naive
(--smooth-alpha 0) and smoothed (0.5, the default); dynamic INT8. Fidelity is measured against
the parent's FP32 ONNX on 1000 test images (top-1 agreement, logit cosine); all ONNX variants
are timed together in one interleaved run (ORT CPU, 1 thread, batch 1).
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_int8_smooth import TEACHER, teacher_and_data, with_outliers
from common import rel, write_result

from tvc.compress.prune import PruneConfig, prune
from tvc.compress.report import count_macs, count_params
from tvc.export.onnx import OnnxExportConfig
from tvc.export.quantize import QuantConfig, quantize_dynamic, quantize_static
from tvc.export.quantize.graph import load_onnx
from tvc.export.quantize.scoring import logit_errors, predict_all, session
from tvc.runtime.bench import time_interleaved
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import export_loaded

RATIO = 0.3


def _batches(data, n: int) -> list:
    """A few labelled batches for the data-driven importance (labels are not read)."""
    out = []
    for x, y in data.batches(64):
        out.append((torch.from_numpy(x), torch.from_numpy(np.asarray(y))))
        if len(out) * 64 >= n:
            break
    return out


def variants_of(parent, calib, work: Path) -> list[dict]:
    """Every variant as {name, onnx, params, macs}; the parent's FP32 first."""
    info = parent.info
    rows = []

    def add(name: str, model, onnx: Path) -> None:
        rows.append({"name": name, "onnx": onnx, "params": count_params(model),
                     "macs": count_macs(model, info.input_size)})  # fmt: skip

    fp32 = export_loaded(parent, work / "fp32", OnnxExportConfig()).path / "model.onnx"
    add("FP32 (parent)", parent.model, fp32)
    for importance, seed in (("magnitude", 0), ("data", 0), ("random", 0)):
        pruned = copy.deepcopy(parent)
        cfg = PruneConfig(ratio=RATIO, importance=importance, seed=seed)
        batches = _batches(calib, 256) if importance == "data" else None
        prune(pruned.model, cfg, example_input=torch.zeros(1, *info.input_size), batches=batches)
        out = export_loaded(pruned, work / f"prune_{importance}", OnnxExportConfig())
        name = f"pruned {RATIO:.0%} of each width, {importance}"
        add(name, pruned.model, out.path / "model.onnx")
    for alpha in (0.0, 0.5):
        path = work / f"int8_static_{alpha}.onnx"
        quantize_static(fp32, path, calib, QuantConfig(calib_size=256, smooth_alpha=alpha))
        add(f"static INT8, smooth-alpha {alpha}", parent.model, path)
    path = work / "int8_dynamic.onnx"
    quantize_dynamic(fp32, path, QuantConfig())
    add("dynamic INT8", parent.model, path)
    return rows


def measure(name: str, parent, calib, test) -> list[dict]:
    y = np.asarray(test.labels)
    with tempfile.TemporaryDirectory() as tmp:
        rows = variants_of(parent, calib, Path(tmp))
        ref = predict_all(session(load_onnx(rows[0]["onnx"])), test)
        for r in rows:
            got = predict_all(session(load_onnx(r["onnx"])), test)
            err = logit_errors(ref, got)
            r.update(top1=round(100 * float((got.argmax(1) == y).mean()), 2),
                     agreement=err["agreement"], cosine_mean=err["cosine_mean"],
                     cosine_min=err["cosine_min"])  # fmt: skip
        runners = [OrtRunner(r["onnx"], threads=1) for r in rows]
        feeds = [rn.sample_feeds(1) for rn in runners]
        timed = time_interleaved(
            [lambda rn=rn, f=f: rn.infer(f) for rn, f in zip(runners, feeds, strict=True)],
            min_time_s=2.0, max_time_s=6.0,
        )  # fmt: skip
        base = timed.latencies[0].p50
        for r, lat in zip(rows, timed.latencies, strict=True):
            r.update(p50_ms=round(lat.p50, 3), ci_ms=[round(lat.ci_low, 3), round(lat.ci_high, 3)],
                     speedup=round(base / lat.p50, 2), parent=name)  # fmt: skip
            del r["onnx"]
            print(r, flush=True)
    return rows


def main() -> None:
    loaded, calib, test = teacher_and_data()
    rows = measure("teacher", loaded, calib, test)
    rows += measure("teacher + outliers x50", with_outliers(loaded), calib, test)
    md = ["# Variants of the trained Fashion-MNIST ViT: size, speed, fidelity\n",
          "| parent | variant | params | MACs | p50 ms (95% CI) | speed-up | top-1 | "
          "agreement | logit cosine mean / min |",
          "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        md.append(
            f"| {r['parent']} | {r['name']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.1f} M "
            f"| {r['p50_ms']:.3f} ({r['ci_ms'][0]:.3f}-{r['ci_ms'][1]:.3f}) | {r['speedup']:.2f}x "
            f"| {r['top1']:.2f}% | {r['agreement']:.1f}% "
            f"| {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} |"
        )
    md.append(
        "\nPruning here has no recovery training (fidelity of the importance alone; distillation "
        "wins accuracy back, see prune_lowrank_trained.md). INT8 rows keep the parent's params "
        "and MACs (their weights are 8-bit). Latency: ORT CPU, 1 thread, batch 1, all variants of "
        "one parent in one interleaved run; the machine was shared with other jobs, so speed-ups "
        "are indicative."
    )
    payload = {"model": rel(TEACHER), "ratio": RATIO, "eval": {"split": "test", "n": len(test)},
               "calibration": {"split": "train", "n": len(calib)}, "rows": rows}  # fmt: skip
    print(write_result("variants_fmnist", payload, "\n".join(md)))


if __name__ == "__main__":
    main()
