"""`tvc train`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tvc.cli.options import artifact_output, command_line, given_options, is_detector, model_options
from tvc.errors import ConfigError

log = logging.getLogger("tvc")

# -------------------------------------------------------------------------------- train, eval


_TRAIN_CLASSIFIER_ONLY = ("label_smoothing", "augment", "resume")


def _refuse_pretrained_detector(model: str, pretrained: bool, weights) -> None:
    from tvc.models.detection import DETECTION_CONFIGS

    if pretrained and weights is None and model in DETECTION_CONFIGS:
        raise ConfigError(
            f"{model} has no pretrained weights on disk and tvc never downloads",
            "pass --weights FILE, or a Hugging Face detection directory as MODEL",
        )


@click.command()
@click.argument("model")
@click.option(
    "--data",
    required=True,
    help="fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors "
    "fashion-mnist-det or a COCO-format directory.",
)
@artifact_output("Model artifact directory to write (checkpoints go to OUT.ckpt/).")
@model_options
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--lr",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate [default: 1e-3; detectors: 1e-3 from random weights, 1e-4 "
    "(DETR's fine-tuning rate) from trained ones].",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Global batch, split over torchrun processes [default: 128; detectors: 32 from "
    "random weights, 16 from trained ones].",
)
@click.option("--input-size", type=int, default=None, help="Input resolution (model names only).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Train on a seeded subset of this many images.",
)
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Validate/test on subsets of this many images.",
)
@click.option(
    "--weight-decay",
    default=None,
    type=click.FloatRange(min=0),
    help="AdamW weight decay [default: 0.05; detectors: 1e-4].",
)
@click.option(
    "--warmup-epochs",
    default=None,
    type=click.FloatRange(min=0),
    help="Linear warm-up [default: 1 epoch; detectors: 50 steps].",
)
@click.option(
    "--grad-clip",
    default=None,
    type=click.FloatRange(min=0),
    help="Max gradient norm, 0 for none [default: 1.0; detectors: 0.1, DETR's, "
    "from random or trained weights].",
)
@click.option(
    "--label-smoothing",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Classifiers only.",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Random crop and horizontal flip (classifiers only).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from OUT.ckpt/ after an interruption (classifiers only).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def train(
    ctx,
    model,
    data,
    out,
    weights,
    num_classes,
    pretrained,
    epochs,
    lr,
    batch_size,
    input_size,
    limit,
    eval_limit,
    weight_decay,
    warmup_epochs,
    grad_clip,
    label_smoothing,
    augment,
    seed,
    device,
    resume,
    no_progress,
) -> None:
    """Train or fine-tune MODEL on DATA; write a model artifact with its test accuracy.

    Classifiers report top-1; detectors (detr_pico, deformable_detr_pico, a Hugging Face DETR
    directory or a detector artifact) train with DETR's set loss and report COCO mAP.
    Classifiers run on all GPUs of a node with: torchrun --nproc_per_node N -m tvc train ...
    """
    detector = is_detector(model, "training")  # first: it says when torch is missing
    from tvc.train.detection import check_task

    check_task(model, detector, data)
    if detector:
        if stray := given_options(ctx, _TRAIN_CLASSIFIER_ONLY):
            raise ConfigError(
                f"{stray[0]} applies to classifiers only, not to the detector {model}",
                f"drop {stray[0]}",
            )
        _refuse_pretrained_detector(model, pretrained, weights)
        _train_detector(
            model,
            data,
            out,
            model_kwargs={"weights": weights, "num_classes": num_classes, "input_size": input_size},
            train_kwargs={
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_size,
                "weight_decay": weight_decay,
                "grad_clip": grad_clip,
                "seed": seed,
                "device": device,
            },
            limit=limit,
            eval_limit=eval_limit,
            warmup_epochs=warmup_epochs,
        )
        return

    from tvc.models import load_model
    from tvc.train.loop import TrainConfig
    from tvc.train.train import train_model

    given = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
             "warmup_epochs": warmup_epochs, "grad_clip": grad_clip}  # fmt: skip
    cfg = TrainConfig(
        epochs=epochs,
        label_smoothing=label_smoothing,
        augment=augment,
        seed=seed,
        device=device,
        progress=not no_progress,
        **{k: v for k, v in given.items() if v is not None},
    )
    if cfg.grad_clip == 0:
        cfg.grad_clip = None
    cfg.validate()
    import torch

    torch.manual_seed(seed)  # the same fresh weights in every process
    is_path = Path(model).exists()
    loaded = load_model(
        model,
        weights=weights,
        num_classes=num_classes,
        pretrained=pretrained,
        input_size=None if is_path else input_size,
        warn_random=False,
    )
    art = train_model(
        loaded,
        data,
        out,
        cfg,
        limit=limit,
        eval_limit=eval_limit,
        resume=resume,
        spec={"command": command_line(), "model": model},
    )
    if art is not None:
        acc = art.meta["metrics"]["accuracy"]
        click.echo(
            f"wrote {art.path}: test top-1 {acc['top1']:.2f}% on {acc['n']} images "
            f"({art.meta['metrics']['training']['wall_s']:.0f} s of training)"
        )


def _train_detector(model, data, out, *, model_kwargs, train_kwargs, limit, eval_limit,
                    warmup_epochs) -> None:  # fmt: skip
    """`tvc train` for DETR-style detectors: tvc.train.detection does the work."""
    import torch

    from tvc.models import load_model
    from tvc.train.detection import det_train_config, train_detector_artifact

    torch.manual_seed(train_kwargs["seed"])  # the same fresh weights for the same --seed
    if Path(model).exists():
        model_kwargs = {**model_kwargs, "input_size": None}  # fixed by the artifact / directory
    loaded = load_model(model, warn_random=False, **model_kwargs)
    cfg = det_train_config(loaded, **train_kwargs)
    art = train_detector_artifact(
        loaded,
        data,
        out,
        cfg,
        limit=limit,
        eval_limit=eval_limit,
        warmup_epochs=warmup_epochs,
        spec={"command": command_line(), "model": model},
    )
    m = art.meta["metrics"]
    det = m["detection"]
    click.echo(
        f"wrote {art.path}: test mAP {det['map']:.2f} (AP50 {det['ap50']:.2f}) on {det['n']} "
        f"images ({m['training']['seconds']:.0f} s of training)"
    )


COMMANDS = [train]
