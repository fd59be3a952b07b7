"""`tvc eval`: the eval stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.stages.evaluate import Config


@click.command("eval")
@options_from(Config)
@click.pass_context
def eval_cmd(ctx: click.Context, **options) -> None:
    """Top-1/top-5 of TARGET (model, model artifact, ONNX file or export artifact) on DATA;
    COCO mAP of a detector on detection DATA."""
    from tvc.stages import get_stage
    from tvc.stages.evaluate import describe

    cfg = config_from(Config, ctx, options)
    results = get_stage("eval").run(cfg)
    for result in results:
        click.echo(describe(result))
    baselines = {r["baseline"]["line"] for r in results if (r.get("baseline") or {}).get("line")}
    for line in sorted(baselines):  # one per task and data, however many variants
        click.echo(line)
    if cfg.json_out:
        click.echo(f"wrote {cfg.json_out}")


COMMANDS = [eval_cmd]
