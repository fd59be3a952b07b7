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
from tvc.boundary import as_user_error, internal_error_line
from tvc.errors import TvcError

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
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:  # `tvc --bad-option`
            _usage_error(ctx, exc)

    def invoke(self, ctx: click.Context):
        from tvc.artifact import forget_command, record_command
        from tvc.cli.options import command_line

        token = record_command(command_line())
        try:
            return self._invoke_guarded(ctx)
        finally:
            forget_command(token)

    def _invoke_guarded(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvcError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # an option click itself refused (type, range, missing)
            _usage_error(ctx, exc)
        except click.ClickException as exc:
            click.echo(f"error: {_flat(exc.format_message())}; see 'tvc --help'", err=True)
            ctx.exit(2)
        except BrokenPipeError:  # output piped into `head` and friends: not an error
            sys.stderr.close()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted; earlier results are left intact", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            err = as_user_error(exc)  # a missing optional package, a full disk, a permission
            if err is None:
                _internal(ctx, exc)
            click.echo(f"error: {err.message}", err=True)
            ctx.exit(err.exit_code)


def _flat(text: str) -> str:
    """click's multi-line messages as one line, without a trailing full stop."""
    return " ".join(text.split()).rstrip(".")


def _usage_error(ctx: click.Context, exc: click.UsageError):
    """click's three-line usage error as tvc's one line, with where to find the options."""
    path = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    msg = _flat(exc.format_message())
    click.echo(f"error: {msg[:1].lower()}{msg[1:]}; run '{path} --help' for the options", err=True)
    ctx.exit(2)


def _internal(ctx: click.Context, exc: BaseException):
    if os.environ.get("TVC_DEBUG"):
        traceback.print_exc()
    click.echo(internal_error_line(exc), err=True)
    ctx.exit(70)


@click.group(cls=TvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tvc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """tvc: compress, export and benchmark vision transformers for edge hardware."""
    _setup_logging(verbose)


def _register() -> None:
    from tvc.cli import bench, compress, evaluate, export, generate, info, report, run, train

    for module in (info, export, compress, bench, train, evaluate, report, run, generate):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="tvc")
