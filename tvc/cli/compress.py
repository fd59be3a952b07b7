"""`tvc compress`: the compress stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.stages.compress import Config


@click.command()
@options_from(Config)
@click.pass_context
def compress(ctx: click.Context, **options) -> None:
    """Prune, factorize and/or distil MODEL into a smaller model artifact.

    Without MODEL, --distill MODEL compresses that model and distils it from its uncompressed
    self: `tvc compress --prune 0.3 --distill vit_b16 --weights W.safetensors --data D`.

    Detectors (DETR, Deformable DETR) lose attention heads and FFN channels (--prune), get
    low-rank projections (--lowrank), and are distilled on detection --data from their
    uncompressed source (--distill) or another detector (--distill TEACHER).
    """
    from tvc.compress.report import print_compression_report
    from tvc.stages import get_stage

    art = get_stage("compress").run(config_from(Config, ctx, options))
    print_compression_report(art.meta["metrics"]["compression"])
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB)")


COMMANDS = [compress]
