"""The `tvc` command group: logging, the one error boundary, and the registered commands.

Commands parse options, call into the packages, and print. Every `TvcError` raised below ends as
one line on stderr (`error: what went wrong; how to fix it`) and a non-zero exit code.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from tvc import __version__
from tvc.errors import TvcError, first_line

log = logging.getLogger("tvc")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class TvcGroup(click.Group):
    """The one error boundary: user errors become one line and an exit code, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["tvc.argv"] = list(args)  # kept for records: the exact command that ran
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvcError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # output piped into `head` and friends: not an error
            sys.stderr.close()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted; earlier results are left intact", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("TVC_DEBUG"):
                traceback.print_exc()
            first = first_line(exc)
            click.echo(
                f"error: internal error {type(exc).__name__}: {first}; this is a bug in tvc, "
                "re-run with TVC_DEBUG=1 for the traceback and report it",
                err=True,
            )
            ctx.exit(70)


@click.group(cls=TvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tvc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """tvc: compress, export and benchmark vision transformers for edge hardware."""
    _setup_logging(verbose)


def _register() -> None:
    from tvc.cli import bench, compress, evaluate, export, info, report, run, train

    for module in (info, export, compress, bench, train, evaluate, report, run):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="tvc")
