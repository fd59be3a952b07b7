"""Options and helpers shared by the `tvc` commands."""

from __future__ import annotations

import functools
import os
import shlex
import sys

import click

from tvc.errors import ConfigError


def command_line() -> str:
    """The command as typed, for records that say how each number was produced."""
    ctx = click.get_current_context(silent=True)
    args = ctx.find_root().meta.get("tvc.argv", sys.argv[1:]) if ctx else sys.argv[1:]
    return shlex.join(["tvc", *args])


def parse_int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(
            f"{option} must be comma-separated integers, got '{value}'", f"e.g. {option} 1,8"
        ) from exc
    if not items or any(i < 1 for i in items):
        raise ConfigError(f"{option} values must be >= 1, got '{value}'", f"e.g. {option} 1,8")
    return items


def artifact_output(help: str):
    """The required -o/--output option of commands that write an artifact directory, and its
    --force. Before the command does any work, the output path is checked: an existing artifact
    needs --force, an input of the command (MODEL, --weights, --data, ...) is never overwritten,
    and a place that cannot be written is refused. --force then holds for every artifact the
    command writes (tvc.artifact.allow_overwrite), so commands need not pass it down."""

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            from tvc.artifact import allow_overwrite, check_output

            force = kwargs.pop("force", False)
            out = kwargs.get("out")
            if out is not None:
                # any other argument that names an existing path is an input of this command
                inputs = tuple(
                    v
                    for k, v in kwargs.items()
                    if k != "out" and isinstance(v, str) and v and os.path.exists(v)
                )
                check_output(out, force=force, inputs=inputs)
            with allow_overwrite(force):
                return f(*args, **kwargs)

        command = click.option(
            "--force",
            is_flag=True,
            help="Replace an existing artifact at -o (never the command's own input).",
        )(command)
        return click.option(
            "-o", "--output", "out", required=True, type=click.Path(file_okay=False), help=help
        )(command)

    return decorate


def model_options(f):
    """Options shared by every command that takes a MODEL."""
    f = click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        default=None,
        help="Weights for a named architecture (.safetensors or .pth state dict).",
    )(f)
    f = click.option(
        "--num-classes",
        type=click.IntRange(min=1),
        default=None,
        help="Classifier size (default: the model's or the weights').",
    )(f)
    f = click.option(
        "--pretrained", is_flag=True, help="Require pretrained weights (error if none are on disk)."
    )(f)
    return f


def given_options(ctx: click.Context, names) -> list[str]:
    """The options (as typed, e.g. --global) among parameters `names` the user passed."""
    from click.core import ParameterSource

    typed = [
        p
        for p in ctx.command.params
        if p.name in names and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    return ["/".join(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")) for p in typed]


def is_detector(model: str, purpose: str) -> bool:
    """MODEL names a DETR-style detector (a config name, HF directory or artifact), decided
    without building it."""
    from tvc.deps import require

    require("torch", purpose)
    from tvc.models.detection import is_detection_spec

    return is_detection_spec(model)
