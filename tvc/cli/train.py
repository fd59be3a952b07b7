"""`tvc train`: the train stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.stages.train import Config


@click.command()
@options_from(Config)
@click.pass_context
def train(ctx: click.Context, **options) -> None:
    """Train or fine-tune MODEL on DATA; write a model artifact with its test accuracy.

    Classifiers report top-1; detectors (detr_pico, deformable_detr_pico, a Hugging Face DETR
    directory or a detector artifact) train with DETR's set loss and report COCO mAP.
    Classifiers run on all GPUs of a node with: torchrun --nproc_per_node N -m tvc train ...
    """
    from tvc.stages import get_stage
    from tvc.tasks import task_named

    art = get_stage("train").run(config_from(Config, ctx, options))
    if art is None:  # another process of a torchrun job writes the artifact
        return
    metrics = art.meta["metrics"]
    task = task_named(art.meta["spec"]["task"])
    training = metrics["training"]
    seconds = training.get("wall_s", training.get("seconds", 0))
    click.echo(
        f"wrote {art.path}: test {task.describe(metrics[task.quality_key])} "
        f"({seconds:.0f} s of training)"
    )


COMMANDS = [train]
