"""`tvc report`."""

from __future__ import annotations

import logging

import click

log = logging.getLogger("tvc")

# ------------------------------------------------------------------------------------- report


@click.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="report.html (one self-contained page) or report.md.",
)
@click.option(
    "--baseline", default=None, help="Variant to compare against (default: the first fp32 variant)."
)
@click.option("--title", default=None, help="Report title.")
def report(records, out, baseline, title) -> None:
    """Render bench RECORDS (files from 'tvc bench --json', any boards) as HTML or Markdown."""
    from tvc.report.render import analyse, headline, write_report
    from tvc.report.schema import read_records

    recs = [r for path in records for r in read_records(path)]
    path = write_report(recs, out, baseline=baseline, title=title)
    a = analyse(recs, baseline)
    click.echo(
        f"wrote {path} ({len(recs)} records, {len(a.boards)} board(s), baseline {a.baseline})"
    )
    head = headline(a)
    if head:
        click.echo(f"headline: {head}")


COMMANDS = [report]
