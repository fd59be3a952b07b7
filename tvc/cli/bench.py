"""`tvc bench`: the bench stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.cli.options import command_line
from tvc.stages.bench import Config


@click.command()
@options_from(Config)
@click.pass_context
def bench(ctx: click.Context, **options) -> None:
    """Measure latency, throughput, size and memory of TARGET (ONNX, artifact or model)."""
    from tvc.report.table import print_records
    from tvc.runtime.compare import summary_lines
    from tvc.stages import get_stage

    cfg = config_from(Config, ctx, options, command=command_line())
    records = get_stage("bench").run(cfg)
    print_records(records)
    for line in summary_lines(records):
        click.echo(line)
    if cfg.json_out:
        click.echo(f"wrote {len(records)} record(s) to {cfg.json_out}")


COMMANDS = [bench]
