"""`tvc compress`."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from tvc.cli.options import artifact_output, command_line, given_options, is_detector, model_options
from tvc.errors import ConfigError

log = logging.getLogger("tvc")

# ----------------------------------------------------------------------------------- compress

_PRUNE_ONLY = ("importance", "global_pruning", "prune_heads", "keep", "steps")
_DISTILL_ONLY = (
    "teacher_weights",
    "epochs",
    "kd",
    "temperature",
    "alpha",
    "limit",
    "lr",
    "batch_size",
    "device",
)
# Classification pruning and distillation settings that DETR-style detectors have no use for.
_CLASSIFIER_COMPRESS_ONLY = (
    "global_pruning",
    "prune_heads",
    "keep",
    "steps",
    "kd",
    "temperature",
    "alpha",
)


def _lowrank_config(energy: float | None, rank: float | None, round_to: int):
    from tvc.compress.lowrank import LowRankConfig

    if energy is not None and rank is not None:
        raise ConfigError(
            "--lowrank and --lowrank-rank choose the rank in two ways", "pass only one of them"
        )
    if rank is not None and rank >= 1:
        if rank != int(rank):
            raise ConfigError(
                f"--lowrank-rank {rank} is neither a whole rank nor a fraction below 1",
                "e.g. --lowrank-rank 64 or --lowrank-rank 0.25",
            )
        return LowRankConfig(rank=int(rank), round_to=round_to)
    if rank is not None:
        return LowRankConfig(rank_ratio=rank, round_to=round_to)
    return LowRankConfig(energy=energy, round_to=round_to)


@click.command()
@click.argument("model")
@artifact_output("Model artifact directory to write.")
@model_options
@click.option(
    "--prune",
    "prune_ratio",
    type=float,
    default=None,
    help="Structured pruning: fraction of each width to remove, in (0, 1).",
)
@click.option(
    "--importance",
    type=click.Choice(["magnitude", "taylor", "random"]),
    default="magnitude",
    show_default=True,
    help="Channel importance; taylor uses a few batches of --data.",
)
@click.option(
    "--global",
    "global_pruning",
    is_flag=True,
    help="Rank channels and heads across blocks (default: per block).",
)
@click.option(
    "--prune-heads",
    is_flag=True,
    help="Remove whole attention heads (default: dimensions of every head).",
)
@click.option(
    "--round-to",
    type=int,
    default=8,
    show_default=True,
    help="Kept widths and low-rank ranks are multiples of this (alignment).",
)
@click.option(
    "--keep",
    multiple=True,
    default=("head",),
    show_default=True,
    help="Leave unpruned: head (the classifier's outputs, always kept), embed (the "
    "residual width), attn, mlp, or a block such as blocks.0; repeat or use "
    "commas.",
)
@click.option(
    "--steps",
    type=int,
    default=1,
    show_default=True,
    help="Iterative pruning: reach the ratio in this many steps.",
)
@click.option(
    "--lowrank",
    "lowrank_energy",
    type=float,
    default=None,
    help="Low-rank: spectral energy to keep per layer, in (0, 1].",
)
@click.option(
    "--lowrank-rank",
    type=float,
    default=None,
    help="Low-rank: a fixed rank (64) or a fraction of full rank (0.25).",
)
@click.option(
    "--distill",
    "teacher",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[TEACHER]",
    help="Distil from this teacher MODEL after pruning / factorizing; alone, from the "
    "uncompressed MODEL itself.",
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Weights for a teacher given by architecture name.",
)
@click.option(
    "--data",
    default=None,
    help="Images: distillation data, taylor importance, agreement samples; for detectors "
    "detection data (fashion-mnist-det, COCO): distillation scenes and mAP on its test split.",
)
@click.option("--epochs", type=int, default=None, help="Distillation epochs (default 1).")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Distillation peak learning rate (default 5e-4).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Distillation batch (default 128; detectors 16).",
)
@click.option("--device", default=None, help="Distillation device: auto (default), cpu, cuda:N.")
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on this many test images (default: the whole test split).",
)
@click.option(
    "--kd",
    type=click.Choice(["soft", "hard", "token"]),
    default=None,
    help="Distillation loss (default soft).",
)
@click.option("--temperature", type=float, default=None, help="Soft KD temperature (default 4).")
@click.option("--alpha", type=float, default=None, help="Weight of the KD loss (default 0.5).")
@click.option("--limit", type=int, default=None, help="Use at most N training images to distil.")
@click.pass_context
def compress(
    ctx,
    model,
    out,
    weights,
    num_classes,
    pretrained,
    prune_ratio,
    importance,
    global_pruning,
    prune_heads,
    round_to,
    keep,
    steps,
    lowrank_energy,
    lowrank_rank,
    teacher,
    teacher_weights,
    data,
    epochs,
    lr,
    batch_size,
    device,
    eval_limit,
    kd,
    temperature,
    alpha,
    limit,
) -> None:
    """Prune, factorize and/or distil MODEL into a smaller model artifact.

    Detectors (DETR, Deformable DETR) lose attention heads and FFN channels (--prune), get
    low-rank projections (--lowrank), and are distilled on detection --data from their
    uncompressed source (--distill) or another detector (--distill TEACHER).
    """
    from tvc.compress.pipeline import CompressConfig, compress_model
    from tvc.compress.prune import PruneConfig
    from tvc.compress.report import print_compression_report

    detector = is_detector(model, "compression")  # first: it says when torch is missing
    from tvc.models import load_model
    from tvc.train.detection import check_task

    check_task(model, detector, data)
    if detector:
        stray = given_options(ctx, _CLASSIFIER_COMPRESS_ONLY)
        if importance != "magnitude":
            stray.insert(0, f"--importance {importance}")
        if stray:
            why = (
                "detectors distil with DETR's set loss on matched queries"
                if stray[0] in ("--kd", "--temperature", "--alpha")
                else "detectors prune heads and FFN channels of every layer by weight magnitude"
            )
            raise ConfigError(
                f"{stray[0]} applies to classifiers only, not to the detector {model}",
                f"drop {stray[0]} ({why})",
            )
    if prune_ratio is None and (stray := given_options(ctx, _PRUNE_ONLY)):
        raise ConfigError(
            f"{stray[0]} only applies with --prune", "add --prune RATIO or drop the option"
        )
    if teacher is None and (stray := given_options(ctx, _DISTILL_ONLY)):
        raise ConfigError(
            f"{stray[0]} only applies with --distill", "add --distill TEACHER or drop the option"
        )
    if detector:
        _compress_detector(
            model,
            out,
            model_kwargs={"weights": weights, "num_classes": num_classes},
            prune_ratio=prune_ratio,
            round_to=round_to,
            lowrank=(lowrank_energy, lowrank_rank),
            teacher=teacher,
            teacher_weights=teacher_weights,
            data=data,
            distill={"epochs": epochs, "lr": lr, "batch_size": batch_size, "device": device},
            limit=limit,
            eval_limit=eval_limit,
        )
        return
    if teacher is None and eval_limit is not None:
        raise ConfigError(
            "--eval-limit only applies with --distill", "add --distill TEACHER or drop the option"
        )
    if teacher == "":  # a bare --distill: the uncompressed MODEL teaches
        teacher, teacher_weights = model, teacher_weights or weights
    prune_cfg = lowrank_cfg = distill_cfg = None
    if prune_ratio is not None:
        keep_parts = tuple(k.strip() for item in keep for k in item.split(",") if k.strip())
        prune_cfg = PruneConfig(
            ratio=prune_ratio,
            importance=importance,
            global_pruning=global_pruning,
            prune_heads=prune_heads,
            round_to=round_to,
            keep=keep_parts,
            steps=steps,
        )
    if lowrank_energy is not None or lowrank_rank is not None:
        lowrank_cfg = _lowrank_config(lowrank_energy, lowrank_rank, round_to)
    if teacher is not None:
        if data is None:
            raise ConfigError("--distill needs --data to train on", "e.g. --data fashion-mnist")
        from tvc.compress.distill import DistillConfig

        given = {
            "epochs": epochs,
            "kd": kd,
            "temperature": temperature,
            "alpha": alpha,
            "limit": limit,
            "teacher_weights": teacher_weights,
            "lr": lr,
            "batch_size": batch_size,
            "device": device,
            "eval_limit": eval_limit,
        }
        given = {k: v for k, v in given.items() if v is not None}
        distill_cfg = DistillConfig(teacher=teacher, data=data, **given)
        distill_cfg.validate()
    cfg = CompressConfig(prune=prune_cfg, lowrank=lowrank_cfg, distill=distill_cfg)
    loaded = load_model(model, weights=weights, num_classes=num_classes, pretrained=pretrained)
    art = compress_model(loaded, cfg, Path(out), data_spec=data)
    print_compression_report(art.meta["metrics"]["compression"])
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB)")


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _compress_detector(model, out, *, model_kwargs, prune_ratio, round_to, lowrank, teacher,
                       teacher_weights, data, distill, limit, eval_limit) -> None:  # fmt: skip
    """`tvc compress` for DETR-style detectors: tvc.compress.detection_pipeline does the work."""
    from tvc.compress.detection import DetPruneConfig
    from tvc.compress.detection_pipeline import (
        DetCompressConfig,
        compress_detector_model,
        summary_lines,
    )
    from tvc.compress.report import print_compression_report
    from tvc.models import load_model
    from tvc.train.detection import DetDistillConfig

    if eval_limit is not None and data is None:
        raise ConfigError("--eval-limit needs --data", "e.g. --data fashion-mnist-det")
    distill_cfg = None
    if teacher is not None:
        # lr 5e-4 with clip 1.0: what distils tvc's detectors (benchmarks/bench_detection.py)
        defaults = {"epochs": 1, "lr": 5e-4, "batch_size": 16, "device": "auto"}
        given = {k: v for k, v in distill.items() if v is not None}
        distill_cfg = DetDistillConfig(grad_clip=1.0, **{**defaults, **given})
    energy, rank = lowrank
    cfg = DetCompressConfig(
        prune=DetPruneConfig(ratio=prune_ratio, round_to=round_to)
        if prune_ratio is not None
        else None,
        lowrank=_lowrank_config(energy, rank, round_to)
        if energy is not None or rank is not None
        else None,
        distill=distill_cfg,
        data=data,
        limit=limit,
        eval_limit=eval_limit,
    )
    cfg.validate()  # before loading anything
    loaded = load_model(model, **model_kwargs)
    teacher_loaded = None
    # The uncompressed source teaches unless another model is named: reusing it (rather than
    # loading MODEL again) also keeps a randomly initialised config's exact weights.
    if teacher and not (
        _same_model(teacher, model) and teacher_weights in (None, model_kwargs["weights"])
    ):
        teacher_loaded = load_model(teacher, weights=teacher_weights)
    art = compress_detector_model(
        loaded, out, cfg, teacher=teacher_loaded, spec={"command": command_line()}
    )
    report = art.meta["metrics"]["compression"]
    print_compression_report({"before": report["before"], "after": report["after"]})
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB)")


COMMANDS = [compress]
