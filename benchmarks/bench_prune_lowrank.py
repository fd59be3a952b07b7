"""Issue 3 measurements: structured pruning and low-rank factorization, MACs vs latency.

    .venv/bin/python benchmarks/bench_prune_lowrank.py                       # deit_small, vit_base
    .venv/bin/python benchmarks/bench_prune_lowrank.py --weights vit_b16=teacher.safetensors \\
        --models deit_small,vit_b16 --data fashion-mnist                     # trained teacher
    .venv/bin/python benchmarks/bench_prune_lowrank.py --quick               # smoke run, vit_nano

For each model the variants (dense, prune 0.3 / 0.5, low-rank energy 0.9 / 0.95, prune 0.3 + low
rank 0.9 by default) are compressed with tvc's own stages, exported with tvc's ONNX exporter
(proven against PyTorch) and timed on ONNX Runtime's CPU provider, FP32, batch 1, with a fixed
thread count. Timing is interleaved: every round times each variant once with
tvc.runtime.bench.time_calls (the start rotates between rounds), so drift of a shared machine hits
all variants alike; the reported latency is the median of the per-round medians.

Recorded per variant: parameters, MACs (FlopCounterMode), ONNX size, p50 latency, the MAC
reduction and the speedup vs dense and their ratio (1.0 = latency falls exactly with MACs), output
error and top-1 agreement vs dense on sample inputs, and top-1 accuracy when --data is given.
Low-rank on random weights keeps almost all spectral energy in every direction, so energy 0.9
factorizes nothing there: pass trained weights (--weights MODEL=FILE, or a model artifact as
MODEL) for those rows to mean something. The weights used are written into the results.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import rel, write_result

from tvc.compress.lowrank import LowRankConfig, factorize
from tvc.compress.prune import PruneConfig, prune
from tvc.compress.report import count_macs, count_params
from tvc.export.onnx import OnnxExportConfig
from tvc.models import load_model
from tvc.models.load import LoadedModel
from tvc.runtime.bench import time_calls
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import export_loaded
from tvc.tasks.classification import ClassificationTask

DEFAULT_VARIANTS = "dense,prune0.3,prune0.5,lowrank0.9,lowrank0.95,prune0.3+lowrank0.9"
STAGES = ("prune", "lowrank", "rank")  # prune<ratio>, lowrank<energy>, rank<fraction of full>


def parse_variant(spec: str) -> list[tuple[str, float]]:
    """'prune0.3+lowrank0.9' -> [('prune', 0.3), ('lowrank', 0.9)]; 'dense' -> []."""
    if spec == "dense":
        return []
    stages = []
    for part in spec.split("+"):
        kind = next((k for k in STAGES if part.startswith(k)), None)
        if kind is None:
            raise SystemExit(f"unknown variant stage '{part}' (use dense, {', '.join(STAGES)})")
        stages.append((kind, float(part[len(kind) :])))
    return stages


def build_variant(loaded: LoadedModel, stages, samples: torch.Tensor) -> tuple[Any, dict]:
    """A compressed copy of the model and what each stage reported."""
    model = copy.deepcopy(loaded.model).eval()
    notes: dict[str, Any] = {}
    for kind, value in stages:
        if kind == "prune":
            notes["prune"] = prune(model, PruneConfig(value), example_input=samples[:1])
        else:
            cfg = LowRankConfig(energy=value) if kind == "lowrank" else LowRankConfig(
                rank_ratio=value)  # fmt: skip
            rep = factorize(model, cfg, sample_inputs=samples)
            done = [e for e in rep["layers"] if e["factorized"]]
            notes["lowrank"] = {
                "factorized": rep["factorized"],
                "skipped": rep["skipped"],
                "mean_energy": statistics.fmean(e["energy"] for e in done) if done else None,
                "mean_layer_rel_error": (
                    statistics.fmean(e["rel_error"] for e in done) if done else None
                ),
            }
    return model, notes


def accuracy(model, info, data_spec: str, limit: int) -> float:
    from tvc.data import load_images
    from tvc.eval.classification import evaluate

    data = load_images(data_spec, "test", input_size=info.input_size, mean=info.mean,
                       std=info.std, limit=limit, seed=0)  # fmt: skip

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return evaluate(predict, data, batch_size=64)["top1"]


def measure_model(spec: str, weights: str | None, args, workdir: Path) -> dict[str, Any]:
    loaded = load_model(spec, weights=weights, warn_random=False)
    info = loaded.info
    source = loaded.artifact.path if loaded.artifact else (weights or "random init")
    print(f"== {spec}: weights {source}", flush=True)
    gen = torch.Generator().manual_seed(0)
    task = ClassificationTask()
    if args.data:
        samples, sample_source = task.sample_inputs(info, args.data, args.samples)
    else:
        samples = torch.randn(args.samples, *info.input_size, generator=gen)
        sample_source = "random inputs"

    rows, runners = [], {}
    for variant in args.variants.split(","):
        model, notes = build_variant(loaded, parse_variant(variant), samples)
        out = workdir / f"{Path(spec).name}-{variant}"
        art = export_loaded(LoadedModel(model, info), out, OnnxExportConfig(batch=1))
        row = {
            "variant": variant,
            "params": count_params(model),
            "macs": count_macs(model, info.input_size),
            "onnx_mb": round(art.file("model.onnx").stat().st_size / 1e6, 2),
            "parity_max_abs_diff": art.meta["metrics"]["parity"]["max_abs_diff"],
            "vs_dense": {
                "inputs": sample_source,
                **task.agreement(task.outputs(loaded.model, samples), task.outputs(model, samples)),
            },
            **notes,
        }
        if args.data:
            row["top1"] = accuracy(model, info, args.data, args.eval_limit)
        print(f"  {variant}: {row['params'] / 1e6:.2f} M params, {row['macs'] / 1e9:.3f} GMACs",
              flush=True)  # fmt: skip
        rows.append(row)
        runners[variant] = OrtRunner(art.file("model.onnx"), threads=args.threads)

    # Interleaved timing: each round times every variant once, starting at a rotating variant.
    names = list(runners)
    feeds = {n: r.sample_feeds(1) for n, r in runners.items()}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runner, feed = runners[name], feeds[name]
            stats = time_calls(lambda runner=runner, feed=feed: runner.infer(feed),
                               warmup_s=args.warmup_s if r == 0 else 0.1,
                               min_runs=args.min_runs, min_time_s=args.min_time_s)  # fmt: skip
            per_round[name].append(stats.p50)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    dense_macs = rows[0]["macs"]
    dense_p50 = statistics.median(per_round[rows[0]["variant"]])
    for row in rows:
        row["p50_ms_rounds"] = [round(v, 3) for v in per_round[row["variant"]]]
        row["p50_ms"] = statistics.median(per_round[row["variant"]])
        row["mac_reduction"] = dense_macs / row["macs"]
        row["speedup"] = dense_p50 / row["p50_ms"]
        row["speedup_per_mac_reduction"] = row["speedup"] / row["mac_reduction"]
    weights = rel(source) if Path(str(source)).exists() else str(source)  # or "random init"
    return {"model": spec, "arch": info.arch, "weights": weights,
            "input_size": list(info.input_size), "variants": rows}  # fmt: skip


def markdown(results: list[dict[str, Any]], args) -> str:
    lines = [
        "# Pruning and low-rank: MACs vs latency (ONNX Runtime CPU, FP32, batch 1, "
        f"{args.threads} thread(s))",
        "",
        "speedup / MAC reduction = 1.0 means latency falls exactly in step with MACs.",
    ]
    for res in results:
        lines += ["", f"## {res['model']} ({res['arch']}, weights: {res['weights']})", ""]
        head = ["variant", "params M", "GMACs", "MAC reduction", "p50 ms", "speedup",
                "speedup / MAC red.", "ONNX MB", "rel. error vs dense", "top-1 agree"]  # fmt: skip
        if "top1" in res["variants"][0]:
            head.append("top-1 %")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in res["variants"]:
            cells = [v["variant"], f"{v['params'] / 1e6:.2f}", f"{v['macs'] / 1e9:.3f}",
                     f"{v['mac_reduction']:.2f}x", f"{v['p50_ms']:.2f}", f"{v['speedup']:.2f}x",
                     f"{v['speedup_per_mac_reduction']:.2f}", f"{v['onnx_mb']:.1f}",
                     f"{v['vs_dense']['rel_error']:.3g}",
                     f"{v['vs_dense']['top1_agreement']:.0%}"]  # fmt: skip
            if "top1" in v:
                cells.append(f"{v['top1']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lowrank = [v for v in res["variants"] if "lowrank" in v]
        for v in lowrank:
            lr = v["lowrank"]
            energy = f", mean energy {lr['mean_energy']:.3f}" if lr["mean_energy"] else ""
            lines.append(f"\n{v['variant']}: {lr['factorized']} layers factorized, "
                         f"{lr['skipped']} kept whole{energy}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit_small,vit_base",
                    help="comma-separated model names or model artifacts")  # fmt: skip
    ap.add_argument("--weights", action="append", default=[], metavar="MODEL=FILE",
                    help="trained weights for a model of --models (repeatable)")  # fmt: skip
    ap.add_argument("--variants", default=None, help=f"default: {DEFAULT_VARIANTS}")
    ap.add_argument("--data", default=None, help="e.g. fashion-mnist: accuracy and real samples")
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=16, help="inputs for output error")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--min-time-s", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="smoke run on vit_nano, short timings")
    ap.add_argument("--name", default=None, help="result file name (default prune_lowrank)")
    args = ap.parse_args()
    if args.quick:
        args.models = "vit_nano" if args.models == ap.get_default("models") else args.models
        args.rounds, args.warmup_s, args.min_runs, args.min_time_s = 2, 0.2, 5, 0.2
        args.samples, args.eval_limit = 4, 200
        args.variants = args.variants or DEFAULT_VARIANTS + ",rank0.25,prune0.3+rank0.25"
    args.variants = args.variants or DEFAULT_VARIANTS
    if not args.variants.startswith("dense"):
        args.variants = "dense," + args.variants  # every ratio is against the dense model
    weights = dict(w.split("=", 1) for w in args.weights)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(weights) - set(models)
    if unknown:
        raise SystemExit(f"--weights for {sorted(unknown)}, which is not in --models")
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="tvc-bench-prune-") as tmp:
        for spec in models:
            results.append(measure_model(spec, weights.get(spec), args, Path(tmp)))
    config = {k: v for k, v in vars(args).items() if k != "weights"} | {"weights": weights}
    name = args.name or ("prune_lowrank_quick" if args.quick else "prune_lowrank")
    path = write_result(name, {"config": config, "results": results}, markdown(results, args))
    print(markdown(results, args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
