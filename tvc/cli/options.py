"""Options and helpers shared by the `tvc` commands."""

from __future__ import annotations

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
    """The required -o/--output option of commands that write an artifact directory."""
    return click.option(
        "-o", "--output", "out", required=True, type=click.Path(file_okay=False), help=help
    )


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
