"""Issue 19: channel importance without recovery, magnitude vs data (feature Fisher) vs random.

    .venv/bin/python benchmarks/bench_prune_importance.py                 # fmnist teacher + student
    .venv/bin/python benchmarks/bench_prune_importance.py --ratio 0.3 --eval 1000

Each model is pruned at the same ratio (classifier kept, no fine-tuning) with each importance, and
compared with its unpruned parent on Fashion-MNIST test images: cosine of the pooled pre-logit
features (in the parent's channel basis: the removed embedding channels count as 0), of the
logits, top-1 agreement of the predictions, and top-1 accuracy. data importance reads 128 train
images (8 batches of 32, as `tvc compress --importance data` does) and never their labels; data
importance (its random projections) and random importance (the control) run with seeds 0, 1, 2.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import rel, write_result

from tvc.compress.pipeline import DATA_BATCHES, TAYLOR_BATCH_SIZE
from tvc.compress.prune import PruneConfig, prune
from tvc.models import load_model
from tvc.tasks import task_for_data

HERE = Path(__file__).parent
MODELS = [HERE / "artifacts" / "fmnist_teacher", HERE / "artifacts" / "fmnist_student_p50_kd"]
RUNS = [("magnitude", 0), *(("data", s) for s in range(3)), *(("random", s) for s in range(3))]


def pooled_and_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), 250):
            f = model.forward_head(model.forward_features(x[i : i + 250]), pre_logits=True)
            feats.append(f.numpy())
            logits.append(model.head(f).numpy())
    return np.concatenate(feats), np.concatenate(logits)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def kept_channels(parent: torch.nn.Module, pruned: torch.nn.Module) -> list[int]:
    """Which of the parent's embedding channels survive: the final norm's weights are a subset."""
    full, kept = parent.norm.weight.detach().tolist(), pruned.norm.weight.detach().tolist()
    where = {v: i for i, v in enumerate(full)}
    if len(where) != len(full) or any(v not in where for v in kept):
        raise SystemExit("cannot map the pruned embedding channels back to the parent's")
    return [where[v] for v in kept]


def in_parent_basis(f: np.ndarray, idx: list[int], width: int) -> np.ndarray:
    """Pruned features in the parent's channel basis (removed channels are 0)."""
    out = np.zeros((len(f), width), dtype=f.dtype)
    out[:, idx] = f
    return out


def measure(path: Path, ratio: float, n_eval: int) -> dict:
    loaded = load_model(str(path))
    task = task_for_data("fashion-mnist")
    info, model = loaded.info, loaded.model.eval()
    test = task.load_data("fashion-mnist", "test", info, limit=n_eval)
    x, y = (np.concatenate(p) for p in zip(*test.batches(250), strict=True))
    x = torch.from_numpy(x)
    batches = task.taylor_batches(info, "fashion-mnist", DATA_BATCHES, TAYLOR_BATCH_SIZE)
    ref_f, ref_l = pooled_and_logits(model, x)
    rows = []
    for importance, seed in RUNS:
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        prune(m, PruneConfig(ratio, importance=importance, seed=seed), example_input=x[:1],
              batches=batches if importance == "data" else None)  # fmt: skip
        seconds = time.perf_counter() - t0
        f, logits = pooled_and_logits(m.eval(), x)
        f = in_parent_basis(f, kept_channels(model, m), ref_f.shape[1])
        cos = cosine(ref_f, f)
        logit_cos = cosine(ref_l, logits)
        rows.append({
            "importance": importance,
            "seed": seed,
            "feature_cosine_mean": round(float(cos.mean()), 4),
            "feature_cosine_min": round(float(cos.min()), 4),
            "logit_cosine_mean": round(float(logit_cos.mean()), 4),
            "top1_agreement": round(float((logits.argmax(1) == ref_l.argmax(1)).mean()), 4),
            "top1": round(float((logits.argmax(1) == y).mean()), 4),
            "params": sum(p.numel() for p in m.parameters()),
            "prune_seconds": round(seconds, 2),
        })  # fmt: skip
        print(path.name, rows[-1], flush=True)
    return {
        "model": rel(path),
        "params": sum(p.numel() for p in model.parameters()),
        "top1": round(float((ref_l.argmax(1) == y).mean()), 4),
        "eval": {"data": "fashion-mnist", "split": "test", "n": len(x)},
        "calibration": {
            "data": "fashion-mnist",
            "split": "train",
            "n": sum(len(b[0]) for b in batches),
            "labels_used": False,
        },
        "runs": rows,
    }


def markdown(results: list[dict], ratio: float) -> str:
    out = [f"# Pruning importance at {ratio:.0%} without recovery (classifier kept)\n"]
    for r in results:
        out.append(f"## {r['model']} ({r['params']:,} params, top-1 {r['top1']:.2%}, "
                   f"{r['eval']['n']} test images)\n")  # fmt: skip
        out.append("| importance | seed | pooled-feature cosine (mean / min) | top-1 agreement "
                   "| logit cosine | top-1 |")  # fmt: skip
        out.append("|---|---|---|---|---|---|")
        for row in r["runs"]:
            out.append(
                f"| {row['importance']} | {row['seed']} | {row['feature_cosine_mean']:.4f} / "
                f"{row['feature_cosine_min']:.4f} | {row['top1_agreement']:.1%} | "
                f"{row['logit_cosine_mean']:.4f} | "
                f"{row['top1']:.1%} |"
            )
        out.append("")
        for imp in ("magnitude", "data", "random"):
            rows = [row for row in r["runs"] if row["importance"] == imp]
            agree = statistics.mean(row["top1_agreement"] for row in rows)
            cos = statistics.mean(row["feature_cosine_mean"] for row in rows)
            out.append(f"- {imp}, mean of {len(rows)} seed(s): top-1 agreement {agree:.1%}, "
                       f"pooled-feature cosine {cos:.4f}")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--eval", type=int, default=1000, help="test images compared")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [measure(p, args.ratio, args.eval) for p in MODELS]
    note = "CPU, 1 thread; machine shared with other jobs (only seconds are affected)"
    data = {"ratio": args.ratio, "keep": ["head"], "results": results, "note": note}
    print(write_result("prune_importance", data, markdown(results, args.ratio)))


if __name__ == "__main__":
    main()
