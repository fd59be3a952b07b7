"""Train the Image GPT micro teacher kept in benchmarks/artifacts/igpt_teacher (2 CPU cores).

    .venv/bin/python benchmarks/igpt_teacher.py pretrain --minutes 35
    .venv/bin/python benchmarks/igpt_teacher.py pretrain --resume --minutes 55 --threads 1
    .venv/bin/python benchmarks/igpt_teacher.py finetune --minutes 12
    .venv/bin/python benchmarks/igpt_teacher.py finetune --resume --minutes 50 --threads 1
    .venv/bin/python benchmarks/igpt_teacher.py finetune --resume --minutes 60 --threads 1 \
        --augment --shift 0 --eval-every 500
    .venv/bin/python benchmarks/igpt_teacher.py finetune --resume --minutes 70 --augment \
        --shift 0 --eval-every 500 --soft-targets benchmarks/artifacts/igpt_cnn_soft_targets.npz
    .venv/bin/python benchmarks/igpt_teacher.py finetune --resume --minutes 65 --threads 2 \
        --augment --shift 0 --eval-every 500 --alpha 0.7 --ema 0.9998 --lr 1e-4 \
        --soft-targets benchmarks/artifacts/igpt_cnn4_soft_targets.npz

`pretrain` trains igpt_micro (Fashion-MNIST at 14x14, 16 grey levels, 0.21 M parameters) by
next-pixel NLL for a wall-clock budget and writes benchmarks/artifacts/igpt_teacher (`--resume`
continues that teacher with a fresh schedule and a new data order, and adds to its time);
`finetune` fine-tunes a copy of it for classification (plus the generative loss) into
benchmarks/artifacts/igpt_finetuned (`--resume` continues from that fine-tuned copy, with a
fresh schedule and a new data order, and adds to its time). `--soft-targets` distils a
teacher's logits on the training images into the fine-tuning (written by
`igpt_input_ceiling.py --soft-targets`: a CNN on the same tokens). Each records its history,
held-out bits/dim and settings in the artifact's metrics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tvc.artifact import allow_overwrite, load_artifact, write_artifact  # noqa: E402
from tvc.data.pixels import load_pixels  # noqa: E402
from tvc.models.igpt import count_params, palette_of  # noqa: E402
from tvc.models.load import load_model, save_model  # noqa: E402
from tvc.train.pixels import PixelTrainConfig, finetune, heldout_bpd, pretrain  # noqa: E402

ART = ROOT / "benchmarks" / "artifacts"
DATA = "fashion-mnist-pixels"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["pretrain", "finetune"])
    ap.add_argument("--minutes", type=float, default=35)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue igpt_teacher (pretrain) or igpt_finetuned (finetune)",
    )
    ap.add_argument("--augment", action="store_true", help="finetune: random shifts and mirroring")
    ap.add_argument("--shift", type=int, default=1, help="--augment's largest shift (0: mirror)")
    ap.add_argument("--eval-every", type=int, default=0, help="finetune: steps between checks")
    ap.add_argument("--soft-targets", type=Path, help="finetune: a teacher's logits (.npz)")
    ap.add_argument("--alpha", type=float, default=0.5, help="--soft-targets: weight of KD")
    ap.add_argument("--temperature", type=float, default=2.0, help="--soft-targets: KD's T")
    ap.add_argument("--ema", type=float, default=0.0, help="finetune: keep an EMA of the weights")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    before: dict = {}  # the spec of the artifact a --resume run continues
    resumed_from = None  # pretrain --resume: the teacher's id before this run
    if args.stage == "pretrain":
        src, out = None, ART / "igpt_teacher"
        if args.resume:
            previous = load_artifact(out)
            before, resumed_from = previous.meta["spec"], previous.id
            loaded = load_model(str(out))
        else:
            loaded = load_model("igpt_micro", warn_random=False)
    else:
        out = ART / "igpt_finetuned"
        start = out if args.resume else ART / "igpt_teacher"
        src = load_artifact(ART / "igpt_teacher")
        loaded = load_model(str(start))
        if args.resume:
            before = load_artifact(out).meta["spec"]
    info = loaded.info
    pal, size = palette_of(info), (info.input_size[1], info.input_size[2])
    train = load_pixels(DATA, "train", pal, size)
    val = load_pixels(DATA, "val", pal, size, limit=None if args.stage == "pretrain" else 1000)
    budget = args.minutes * 60
    # a resumed run must not replay an earlier run's batches: each gets its own data order
    seed = 1 + int(before.get("minutes", 0)) if args.resume else 0
    if args.stage == "pretrain":
        cfg = PixelTrainConfig(
            epochs=0,
            time_budget_s=budget,
            batch_size=32,
            lr=args.lr or (1e-3 if args.resume else 2e-3),
            warmup_steps=100,
            log_every=25,
            seed=seed,
        )
        report = pretrain(loaded.model, train.tokens, cfg, val_tokens=val.tokens)
        metrics = {"bpd": round(report["val_bpd"], 4), "bpd_split": "val (5000 images)"}
    else:
        cfg = PixelTrainConfig(
            epochs=0,
            time_budget_s=budget,
            batch_size=64,
            lr=args.lr or 3e-4,
            warmup_steps=50,
            log_every=50,
            gen_weight=0.5,
            seed=seed,
            augment=args.augment,
            augment_shift=args.shift,
            eval_every=args.eval_every,
            ema=args.ema,
        )
        soft = None
        if args.soft_targets:
            cfg.alpha, cfg.temperature = args.alpha, args.temperature
            soft = soft_targets(args.soft_targets, train.labels)
        report = finetune(
            loaded.model,
            train.tokens,
            train.labels,
            cfg,
            val=(val.tokens, val.labels),
            soft_targets=soft,
        )
        metrics = {
            "val_accuracy": round(report["val_accuracy"], 4),
            "bpd": round(heldout_bpd(loaded.model, val.tokens), 4),
        }
    loaded.info.weights = "trained" if src is None else "fine-tuned"
    if src is not None:
        loaded.info.extra["finetuned"] = True  # eval reports its classification accuracy
    spec = {
        "stage": f"igpt-{args.stage}",
        "data": DATA,
        "threads": args.threads,
        "minutes": args.minutes + float(before.get("minutes", 0)),  # a resumed run adds on
        "params": count_params(loaded.model),
    }
    if args.augment:
        spec["augmented_minutes"] = args.minutes + float(before.get("augmented_minutes", 0))
        spec["augment_shift"] = args.shift
    if args.soft_targets:
        spec["distilled_minutes"] = args.minutes + float(before.get("distilled_minutes", 0))
        spec["soft_targets"] = {"file": args.soft_targets.name, "alpha": args.alpha,
                                "temperature": args.temperature}  # fmt: skip
    if args.ema:
        spec["ema_minutes"] = args.minutes + float(before.get("ema_minutes", 0))
        spec["ema"] = args.ema
    if resumed_from is not None:
        spec["resumed_from"] = resumed_from
    with allow_overwrite(), write_artifact(out, "model", parent=src, spec=spec) as w:
        save_model(w, loaded)
        w.meta["metrics"].update(metrics)
        w.meta["metrics"]["train"] = {k: v for k, v in report.items() if k != "history"}
        w.meta["metrics"]["history"] = report["history"]
    print(f"wrote {out.relative_to(ROOT)}: {metrics}")


def soft_targets(path: Path, labels) -> np.ndarray:
    """The teacher logits in `path`, checked to be for these training images (same labels, in
    the same order)."""
    with np.load(path, allow_pickle=False) as f:
        logits, their_labels = f["logits"], f["labels"]
    if not np.array_equal(their_labels, np.asarray(labels)):
        raise SystemExit(f"{path}: its labels are not the training split's; recompute it")
    return logits


if __name__ == "__main__":
    main()
