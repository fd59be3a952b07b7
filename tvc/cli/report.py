"""`tvc report`: the report stage's options, generated from its config."""

from __future__ import annotations

import click

from tvc.cli.fields import config_from, options_from
from tvc.stages.report import Config


@click.command()
@options_from(Config)
@click.pass_context
def report(ctx: click.Context, **options) -> None:
    """Render bench RECORDS (files from 'tvc bench --json', any boards) as HTML or Markdown."""
    from tvc.stages import get_stage

    done = get_stage("report").run(config_from(Config, ctx, options))
    click.echo(f"wrote {done.path} ({done.records} records, {done.boards} board(s), "
               f"baseline {done.baseline})")  # fmt: skip
    if done.headline:
        click.echo(f"headline: {done.headline}")


COMMANDS = [report]
