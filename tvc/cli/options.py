"""What every `tvc` command shares beyond its generated options (see tvc/cli/fields.py)."""

from __future__ import annotations

import shlex
import sys

import click


def command_line() -> str:
    """The command as typed, for records that say how each number was produced."""
    ctx = click.get_current_context(silent=True)
    args = ctx.find_root().meta.get("tvc.argv", sys.argv[1:]) if ctx else sys.argv[1:]
    return shlex.join(["tvc", *args])
