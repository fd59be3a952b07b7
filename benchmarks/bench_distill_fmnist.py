"""Issue 4 measurements: a ViT teacher on Fashion-MNIST, pruned 50%, recovered by distillation.

Steps, all on the real Fashion-MNIST (train on the 55k 'train' split, 5k 'val' held out of the
60k training images for per-epoch validation and choosing the KD setting, report on the 10k test):
1. train the teacher (a plain ViT, tvc's `vit_fmnist`: patch 4 on 32 px, 6 blocks, width 192);
2. prune it 50% (whole attention heads + MLP hidden width; the embedding width is kept) with
   tvc.compress.prune;
3. recover at the same epoch budget: nothing, plain fine-tuning on the labels, distillation from
   the unpruned teacher (soft KD at two settings, hard-label KD), all without augmentation so the
   teacher logits can be cached; one KD run again with a live teacher for the cost per epoch;
4. write benchmarks/results/distill_fmnist.{json,md} (with the environment) and the teacher and
   best student (by val accuracy) as tvc model artifacts.

    # full run (GPU; see the results file for the exact command and machine)
    PYTHONPATH=. python benchmarks/bench_distill_fmnist.py --artifacts benchmarks/artifacts
    # cost per epoch on this machine's CPU, 1 epoch on a subset, reusing the trained teacher
    .venv/bin/python benchmarks/bench_distill_fmnist.py --cost-probe --limit 2000 \
        --teacher benchmarks/artifacts/fmnist_teacher
    # smoke run on synthetic data (seconds)
    .venv/bin/python benchmarks/bench_distill_fmnist.py --tiny
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import common

from tvc.compress.distill import DistillConfig, distill
from tvc.compress.prune import PruneConfig, prune
from tvc.compress.report import summarize
from tvc.data import load_images
from tvc.eval import evaluate
from tvc.models import load_model
from tvc.models.load import LoadedModel, build_from_info, save_model
from tvc.models.structure import describe_structure
from tvc.stages.train import save_trained
from tvc.tasks.classification import ClassificationTask
from tvc.train.dist import pick_device
from tvc.train.loop import TrainConfig, amp_dtype, fit, torch_predict
from tvc.train.train import checkpoint_path, train_model

log = logging.getLogger("tvc")
# (name, kd, alpha, temperature): the settings compared; the best on val becomes the artifact
KD_SETTINGS = [
    ("kd_soft_a0.5_T4", "soft", 0.5, 4.0),
    ("kd_soft_a0.9_T4", "soft", 0.9, 4.0),
    ("kd_hard_a0.5", "hard", 0.5, 1.0),
]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--teacher-model", default="vit_fmnist")
    ap.add_argument("--teacher", default=None, help="reuse this teacher artifact (skip training)")
    ap.add_argument("--teacher-epochs", type=int, default=100)
    ap.add_argument("--teacher-budget-s", type=float, default=None,
                    help="cap the teacher's epochs to fit this many seconds")  # fmt: skip
    ap.add_argument("--teacher-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--recovery-epochs", type=int, default=15)
    ap.add_argument("--recovery-lr", type=float, default=5e-4)
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="shorten the recovery budget so the whole run ends in time")  # fmt: skip
    ap.add_argument("--limit", type=int, default=None, help="train on a subset (quick runs)")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--artifacts", default=None, help="write the teacher and student here")
    ap.add_argument("--results-dir", default=str(common.RESULTS))
    ap.add_argument("--name", default=None, help="results file name (default by mode)")
    ap.add_argument("--cost-probe", action="store_true", help="seconds per epoch of each run")
    ap.add_argument("--probe-epochs", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="synthetic data, tiny models")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args()


class Bench:
    """Shared state: data views, the device, the test/val evaluators."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = pick_device(args.device)
        self.dtype = amp_dtype(self.device, None)
        self.workdir = Path(tempfile.mkdtemp(prefix="tvc-distill-"))
        self._sets: dict[tuple, Any] = {}

    def images(self, info, split: str, limit: int | None):
        key = (split, limit, tuple(info.input_size), tuple(info.mean), tuple(info.std))
        if key not in self._sets:
            self._sets[key] = load_images(self.args.data, split, input_size=info.input_size,
                                          mean=info.mean, std=info.std, limit=limit)  # fmt: skip
        return self._sets[key]

    def top1(self, model, info, split: str) -> float:
        model.to(self.device).eval()
        data = self.images(info, split, self.args.eval_limit)
        res = evaluate(torch_predict(model, self.device, self.dtype), data, batch_size=512)
        model.cpu()
        return round(res["top1"], 2)

    def recovery_config(self, epochs: int) -> dict[str, Any]:
        a = self.args
        return {"epochs": epochs, "lr": a.recovery_lr, "batch_size": a.batch_size,
                "warmup_epochs": 0.25, "label_smoothing": 0.1, "augment": False,
                "device": a.device, "progress": False}  # fmt: skip


def train_teacher(b: Bench) -> tuple[Path, dict[str, Any]]:
    a = b.args
    out = Path(a.artifacts or b.workdir) / "fmnist_teacher"
    cfg = TrainConfig(epochs=a.teacher_epochs, lr=a.teacher_lr, batch_size=a.batch_size,
                      warmup_epochs=min(5.0, a.teacher_epochs / 10), augment=True,
                      device=a.device, progress=False)  # fmt: skip
    probe = None
    if a.teacher_budget_s:
        # time 2 epochs of a throwaway copy (the 2nd without start-up costs), then cap the epochs
        torch.manual_seed(0)
        scratch = load_model(a.teacher_model, warn_random=False)
        train = b.images(scratch.info, "train", a.limit)
        res = fit(scratch.model, train, dataclasses.replace(cfg, epochs=2))
        probe = res["history"][-1]["train_s"]
        fit_epochs = int(a.teacher_budget_s // (probe * 1.05))
        cfg.epochs = max(1, min(a.teacher_epochs, fit_epochs))
        cfg.warmup_epochs = min(5.0, cfg.epochs / 10)
        log.info("teacher: %.2f s per epoch -> %d epochs", probe, cfg.epochs)
    torch.manual_seed(0)
    loaded = load_model(a.teacher_model, warn_random=False)
    t0 = time.perf_counter()
    metrics = train_model(loaded, a.data, out, cfg, limit=a.limit, eval_limit=a.eval_limit)
    art = save_trained(ClassificationTask(), loaded, a.data, metrics, out,
                       spec={"benchmark": "bench_distill_fmnist"})  # fmt: skip
    wall = time.perf_counter() - t0
    shutil.rmtree(checkpoint_path(out).parent, ignore_errors=True)  # the artifact is what counts
    tr = art.meta["metrics"]["training"]
    return art.path, {
        "name": "teacher",
        "model": a.teacher_model,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "augment": True,
        "wall_s": round(wall, 1),
        "epoch_s_mean": round(float(np.mean([h["train_s"] for h in tr["history"]])), 3),
        "probe_epoch_s": probe,
        "val_top1_last": art.meta["metrics"]["val_top1"],
        "history": tr["history"],
    }


def prune_teacher(b: Bench, teacher: LoadedModel) -> tuple[LoadedModel, dict[str, Any]]:
    info = teacher.info
    model = copy.deepcopy(teacher.model).cpu().eval()
    cfg = PruneConfig(ratio=b.args.prune, prune_heads=True, keep=("head", "embed"))
    x = torch.from_numpy(b.images(info, "val", 8).take(range(8))[0])
    t0 = time.perf_counter()
    summary = prune(model, cfg, example_input=x)
    wall = time.perf_counter() - t0
    base = dataclasses.replace(info, structure=None)
    new_info = dataclasses.replace(
        info, structure=describe_structure(model, build_from_info(base)), extra=dict(info.extra)
    )
    return LoadedModel(model, new_info, teacher.artifact), {
        "config": dataclasses.asdict(cfg),
        "wall_s": round(wall, 2),
        "summary": summary,
    }


def run_finetune(b: Bench, pruned: LoadedModel) -> dict[str, Any]:
    model = copy.deepcopy(pruned.model)
    cfg = TrainConfig(**b.recovery_config(b.args.recovery_epochs))
    train = b.images(pruned.info, "train", b.args.limit)
    t0 = time.perf_counter()
    res = fit(model, train, cfg)
    wall = time.perf_counter() - t0
    return {
        "name": "finetune",
        "method": "plain fine-tuning on the labels (CE, label smoothing 0.1)",
        "wall_s": round(wall, 1),
        "epoch_s": [round(h["train_s"], 3) for h in res["history"]],
        "val_top1": b.top1(model, pruned.info, "val"),
        "test_top1": b.top1(model, pruned.info, "test"),
        "history": res["history"],
    }


def run_kd(b: Bench, pruned: LoadedModel, teacher_path: Path, name: str, kd: str, alpha: float,
           temperature: float, *, cache: bool, epochs: int):  # fmt: skip
    """One distillation run; returns its result row and the student."""
    student = LoadedModel(copy.deepcopy(pruned.model), copy.deepcopy(pruned.info), None)
    rc = b.recovery_config(epochs)
    cfg = DistillConfig(str(teacher_path), b.args.data, kd=kd, alpha=alpha,
                        temperature=temperature, limit=b.args.limit, cache_logits=cache,
                        cache_dir=str(b.workdir / "cache"), eval_split="val",
                        eval_limit=b.args.eval_limit, **rc)  # fmt: skip
    t0 = time.perf_counter()
    m = distill(student, cfg)
    wall = time.perf_counter() - t0
    row = {
        "name": name if cache else f"{name}_live_teacher",
        "method": f"distillation from the unpruned teacher: kd={kd}, alpha={alpha}, T={temperature}"
        + ("" if cache else " (teacher run live every step)"),
        "wall_s": round(wall, 1),
        "epoch_s": [round(h["train_s"], 3) for h in m["training"]["history"]],
        "cache": {k: v for k, v in m["cache"].items() if k != "file"},
        "val_top1": round(m["accuracy"]["top1"], 2),
        "val_agreement_with_teacher": round(m["accuracy"]["agreement"], 2),
        "test_top1": b.top1(student.model, student.info, "test"),
        "history": m["training"]["history"],
        "distill_metrics": {k: v for k, v in m.items() if k not in ("training",)},
    }
    return row, student


def save_student(b: Bench, student: LoadedModel, teacher_path: Path, row: dict, extra: dict):
    from tvc.artifact import load_artifact, write_artifact

    out = Path(b.args.artifacts) / "fmnist_student_p50_kd"
    info = student.info
    info.weights = f"pruned from {teacher_path.name}, recovered by {row['name']}"
    spec = {"stage": "compress", "benchmark": "bench_distill_fmnist", "prune": extra["prune"],
            "distill": row["distill_metrics"]["config"]}  # fmt: skip
    test = evaluate(torch_predict(student.model.to(b.device), b.device, b.dtype),
                    b.images(info, "test", b.args.eval_limit), batch_size=512)  # fmt: skip
    student.model.cpu()
    with write_artifact(out, "model", parent=load_artifact(teacher_path), spec=spec) as w:
        save_model(w, student)
        w.meta["metrics"].update({"accuracy": test, "val_top1": row["val_top1"],
                                  "params": extra["after"]["params"],
                                  "macs": extra["after"]["macs"],
                                  "distill": row["distill_metrics"]})  # fmt: skip
    return out


def full_run(b: Bench) -> tuple[dict[str, Any], str]:
    a = b.args
    t_all = time.perf_counter()
    rows = []
    if a.teacher:
        teacher_path, teacher_row = Path(a.teacher), {"name": "teacher", "reused": a.teacher}
    else:
        teacher_path, teacher_row = train_teacher(b)
    teacher = load_model(str(teacher_path))
    teacher_row["test_top1"] = b.top1(teacher.model, teacher.info, "test")
    teacher_row["val_top1"] = b.top1(teacher.model, teacher.info, "val")
    rows.append(teacher_row)
    before = summarize(teacher.model, teacher.info.input_size)
    if a.deadline_s and "epoch_s_mean" in teacher_row:
        # 5 recovery runs (one with a live teacher) of at most a teacher epoch each
        left = a.deadline_s - (time.perf_counter() - t_all) - 60
        fits = min(a.recovery_epochs, max(3, int(left // (5.5 * teacher_row["epoch_s_mean"]))))
        if fits < a.recovery_epochs:
            log.warning("recovery budget cut from %d to %d epochs to meet --deadline-s",
                        a.recovery_epochs, fits)  # fmt: skip
            a.recovery_epochs = fits
    pruned, prune_row = prune_teacher(b, teacher)
    after = summarize(pruned.model, pruned.info.input_size)
    rows.append({"name": "pruned_no_recovery", "method": "pruned, no recovery", "wall_s":
                 prune_row["wall_s"], "val_top1": b.top1(pruned.model, pruned.info, "val"),
                 "test_top1": b.top1(pruned.model, pruned.info, "test")})  # fmt: skip
    rows.append(run_finetune(b, pruned))
    best = None
    for name, kd, alpha, temp in KD_SETTINGS:
        row, student = run_kd(b, pruned, teacher_path, name, kd, alpha, temp, cache=True,
                              epochs=a.recovery_epochs)  # fmt: skip
        rows.append(row)
        if best is None or row["val_top1"] > best[0]["val_top1"]:
            best = (row, student)
    name, kd, alpha, temp = KD_SETTINGS[0]
    live, _ = run_kd(b, pruned, teacher_path, name, kd, alpha, temp, cache=False,
                     epochs=a.recovery_epochs)  # fmt: skip
    rows.append(live)
    extra = {"prune": prune_row, "before": before, "after": after}
    student_path = save_student(b, best[1], teacher_path, best[0], extra) if a.artifacts else None

    cached = rows[[r["name"] for r in rows].index(KD_SETTINGS[0][0])]
    cost = {
        "teacher_pass_s": cached["cache"].get("teacher_pass_s"),
        "cached_epoch_s": round(float(np.median(cached["epoch_s"])), 3),
        "live_epoch_s": round(float(np.median(live["epoch_s"])), 3),
        "finetune_epoch_s": round(float(np.median(rows[2]["epoch_s"])), 3),
    }
    data = {
        "device": str(b.device),
        "amp": str(b.dtype).replace("torch.", "") if b.dtype else None,
        "settings": {k: v for k, v in vars(a).items() if k not in ("tiny", "cost_probe")},
        "kd_selected_by_val": best[0]["name"],
        "teacher_artifact": teacher_path.name,
        "student_artifact": student_path.name if student_path else None,
        "train_images": len(b.images(teacher.info, "train", a.limit)),
        "val_images": len(b.images(teacher.info, "val", a.eval_limit)),
        "test_images": len(b.images(teacher.info, "test", a.eval_limit)),
        "model_before": before,
        "model_after": after,
        "prune": prune_row,
        "epoch_cost": cost,
        "runs": rows,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
    }
    return data, markdown(data)


def markdown(d: dict[str, Any]) -> str:
    runs = {r["name"]: r for r in d["runs"]}
    t = runs["teacher"]["test_top1"]
    env = common_env()
    gpu = env.get("gpus", [{}])[0].get("name") if env.get("gpus") else None
    s = d["settings"]
    lines = [
        "# Distillation after pruning on Fashion-MNIST",
        "",
        f"Measured on **{gpu or 'CPU'}** (device `{d['device']}`, autocast {d['amp']}). "
        f"Teacher: `{s['teacher_model']}` (plain ViT, patch 4, 32 px). Pruned "
        f"{s['prune']:.0%}: whole heads + MLP width, embedding kept. Recovery budget "
        f"{s['recovery_epochs']} epochs, lr {s['recovery_lr']}, batch {s['batch_size']}, no "
        f"augmentation. Images: {d['train_images']} train, {d['val_images']} val (held out of "
        f"the training files), {d['test_images']} test.",
        "",
        f"Params {d['model_before']['params'] / 1e6:.2f} M -> "
        f"{d['model_after']['params'] / 1e6:.2f} M, MACs {d['model_before']['macs'] / 1e6:.1f} M"
        f" -> {d['model_after']['macs'] / 1e6:.1f} M.",
        "",
        "| run | val top-1 | test top-1 | vs teacher | wall-clock s | s/epoch (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in d["runs"]:
        per = f"{np.median(r['epoch_s']):.2f}" if r.get("epoch_s") else (
            f"{r['epoch_s_mean']:.2f}" if r.get("epoch_s_mean") else "")  # fmt: skip
        wall = f"{r['wall_s']:.1f}" if "wall_s" in r else "(reused)"
        lines.append(f"| {r['name']} | {r.get('val_top1', '')} | {r['test_top1']:.2f} | "
                     f"{r['test_top1'] - t:+.2f} | {wall} | {per} |")  # fmt: skip
    c = d["epoch_cost"]
    lines += [
        "",
        f"Cost per epoch: cached teacher logits {c['cached_epoch_s']:.2f} s, live teacher "
        f"{c['live_epoch_s']:.2f} s, plain fine-tuning {c['finetune_epoch_s']:.2f} s; the "
        f"one-off teacher pass that fills the cache took {c['teacher_pass_s'] or 0:.2f} s. Later "
        "KD runs on the same teacher and data read the cache (no teacher pass).",
        f"KD setting kept as the student artifact (chosen on val): {d['kd_selected_by_val']}.",
        "",
        "Reproduce these settings (epochs as run; add --data fashion-mnist:DIR for another copy):",
        "",
        "    PYTHONPATH=. python benchmarks/bench_distill_fmnist.py "
        f"--artifacts benchmarks/artifacts --teacher-epochs {runs['teacher'].get('epochs', 'N')} "
        f"--recovery-epochs {s['recovery_epochs']}",
        "",
        "The teacher alone, through the CLI (same recipe):",
        "",
        f"    tvc train {s['teacher_model']} --data fashion-mnist -o fmnist_teacher --epochs "
        f"{runs['teacher'].get('epochs', 'N')} --lr {s['teacher_lr']} --batch-size "
        f"{s['batch_size']} --warmup-epochs {min(5.0, runs['teacher'].get('epochs', 50) / 10)}",
    ]
    return "\n".join(lines)


def common_env() -> dict[str, Any]:
    from tvc.runtime.device import environment

    return environment()


def cost_probe(b: Bench) -> tuple[dict[str, Any], str]:
    """Seconds per epoch of each kind of run (on a --limit subset on slow machines).

    With --probe-epochs N > 1 the first epoch (start-up: allocator, kernels) is left out.
    """
    a = b.args
    if not a.teacher:
        raise SystemExit("--cost-probe needs --teacher ARTIFACT (the trained teacher)")
    teacher = load_model(a.teacher)
    n_train = len(b.images(teacher.info, "train", a.limit))
    full = len(b.images(teacher.info, "train", None))
    n = a.probe_epochs
    rows: dict[str, Any] = {}

    def per_epoch(history):
        times = [h["train_s"] for h in history]
        return round(float(np.median(times[1:] if len(times) > 1 else times)), 3)

    torch.manual_seed(0)
    scratch = load_model(teacher.info.name, warn_random=False)  # the teacher's architecture
    cfg = TrainConfig(epochs=n, lr=a.teacher_lr, batch_size=a.batch_size, augment=True,
                      device=a.device, progress=False)  # fmt: skip
    res = fit(scratch.model, b.images(scratch.info, "train", a.limit), cfg)
    rows["teacher_train_epoch_s"] = per_epoch(res["history"])
    pruned, _ = prune_teacher(b, teacher)
    res = fit(copy.deepcopy(pruned.model), b.images(pruned.info, "train", a.limit),
              TrainConfig(**b.recovery_config(n)))  # fmt: skip
    rows["finetune_epoch_s"] = per_epoch(res["history"])
    for cache in (True, False):
        row, _ = run_kd(b, pruned, Path(a.teacher), "kd_soft_a0.5_T4", "soft", 0.5, 4.0,
                        cache=cache, epochs=n)  # fmt: skip
        rows["kd_cached_epoch_s" if cache else "kd_live_epoch_s"] = per_epoch(row["history"])
        if cache:
            rows["teacher_pass_s"] = row["cache"].get("teacher_pass_s")
    scale = full / n_train
    env = common_env()
    where = env["gpus"][0]["name"] if env.get("gpus") and b.device.type == "cuda" else (
        f"{env['cpu']}, {torch.get_num_threads()} torch threads")  # fmt: skip
    data = {"device": str(b.device), "threads": torch.get_num_threads(), "train_images": n_train,
            "full_train_images": full, "probe_epochs": n, "measured_s": rows,
            "full_epoch_s": {k: round(v * scale, 2) for k, v in rows.items()
                             if v is not None}}  # fmt: skip
    lines = [
        f"# Cost per epoch on {where}: Fashion-MNIST distillation benchmark models",
        "",
        f"{n} epoch(s) of each run on {n_train} training images"
        + (" (first epoch left out)" if n > 1 else "")
        + (f", scaled by {scale:.1f} to the {full}-image train split." if scale != 1 else "."),
        "",
        "| run | measured s | full-train-split epoch s |",
        "| --- | ---: | ---: |",
    ]
    for k, v in rows.items():
        if v is not None:
            lines.append(f"| {k.removesuffix('_s')} | {v:.2f} | {v * scale:.1f} |")
    return data, "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("tvc").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from tvc.data.synthetic import write_fake_fashion_mnist

        d = write_fake_fashion_mnist(Path(tempfile.mkdtemp()) / "fm", n_train=200, n_test=60)
        args.data = f"fashion-mnist:{d}"
        args.teacher_model = args.teacher_model if args.teacher else "vit_pico"
        args.teacher_epochs, args.recovery_epochs, args.batch_size = 4, 2, 20
        args.teacher_lr, args.recovery_lr = 3e-3, 2e-3
        args.artifacts = args.artifacts or tempfile.mkdtemp()
        args.results_dir = tempfile.mkdtemp()
    common.RESULTS = Path(args.results_dir)
    b = Bench(args)
    if args.cost_probe:
        data, md = cost_probe(b)
        name = args.name or f"distill_fmnist_cost_{b.device.type}"
    else:
        data, md = full_run(b)
        name = args.name or ("distill_fmnist_tiny" if args.tiny else "distill_fmnist")
    path = common.write_result(name, data, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
