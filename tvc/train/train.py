"""`tvc train`: fit a model on a dataset and write it as a model artifact with its accuracy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tvc.errors import UnsupportedModelError
from tvc.eval.classification import evaluate
from tvc.models.info import model_images
from tvc.train import dist
from tvc.train.loop import TrainConfig, amp_dtype, fit, torch_predict

log = logging.getLogger("tvc")


def checkpoint_path(out: str | Path) -> Path:
    """Checkpoints live beside the artifact (OUT.ckpt/last.pt), never inside it."""
    out = Path(out).absolute()
    return out.with_name(out.name + ".ckpt") / "last.pt"


def fit_classes(loaded, num_classes: int) -> None:
    """Give the model a fresh classifier of `num_classes` when the dataset has another count."""
    if loaded.info.num_classes == num_classes:
        return
    model = loaded.model
    if not hasattr(model, "reset_classifier"):
        raise UnsupportedModelError(
            f"{loaded.info.name} predicts {loaded.info.num_classes} classes, the data has "
            f"{num_classes}, and its classifier cannot be replaced",
            f"build the model with --num-classes {num_classes}",
        )
    log.info("replacing the %d-class classifier of %s with a new %d-class one",
             loaded.info.num_classes, loaded.info.name, num_classes)  # fmt: skip
    model.reset_classifier(num_classes)
    loaded.info.num_classes = num_classes
    loaded.info.kwargs["num_classes"] = num_classes


def train_model(
    loaded,
    data_spec: str,
    out: str | Path,
    cfg: TrainConfig,
    *,
    limit: int | None = None,
    eval_limit: int | None = None,
    resume: bool = False,
) -> dict[str, Any] | None:
    """Train `loaded.model` on `data_spec`'s train split and evaluate it on test; returns the
    metrics for the artifact `out` (whose checkpoints live in OUT.ckpt/).

    Returns None on the other processes of a torchrun job: only rank 0 writes.
    """
    cfg.validate()
    info = loaded.info
    # labelled in the model's classes where it names them: a fine-tuned model keeps their meaning
    train_set = model_images(data_spec, "train", info, limit=limit, seed=cfg.seed)
    val_set = model_images(data_spec, "val", info, limit=eval_limit, seed=cfg.seed)
    # read before training: a missing or broken test split must not cost a finished run
    test_set = model_images(data_spec, "test", info, limit=eval_limit, seed=cfg.seed)
    fit_classes(loaded, train_set.num_classes)
    info.extra["class_names"] = list(train_set.class_names)  # what each output means, by name
    ctx = dist.setup(cfg.device)
    if ctx.is_main:
        log.info("training on %s; validating on %d images", train_set.summary(), len(val_set))
    result = fit(loaded.model, train_set, cfg, val_set=val_set, checkpoint=checkpoint_path(out),
                 resume=resume, run_key={"model": info.name, "data": data_spec, "limit": limit},
                 desc="train")  # fmt: skip
    accuracy = None
    if ctx.is_main:
        predict = torch_predict(loaded.model, ctx.device, amp_dtype(ctx.device, cfg.amp))
        accuracy = evaluate(predict, test_set, batch_size=cfg.eval_batch_size)
        log.info("test top-1 %.2f%% on %d images", accuracy["top1"], accuracy["n"])
    loaded.model.cpu().eval()
    if not ctx.is_main:
        return None
    val = [r["val_top1"] for r in result["history"] if "val_top1" in r]
    return {
        "top1": accuracy["top1"],
        "top5": accuracy["top5"],
        "accuracy": accuracy,
        "val_top1": val[-1] if val else None,
        "training": {**result, "unreadable_files_skipped": train_set.skipped,
                     "config": cfg.run_key()},
    }  # fmt: skip
