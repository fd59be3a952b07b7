"""Click options generated from a stage config's fields: an option is declared once, in the config.

`@options_from(Config)` adds one click option (or argument) per field: the name, `--help` text,
type, bounds, choices and default all come from the field. `config_from(Config, ctx, kwargs)`
builds the config from only the options the user typed, so the config's own defaults apply and
its validators can tell a typed option from a default one (`model_fields_set`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click
from click.core import ParameterSource
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tvc.errors import ConfigError
from tvc.stages.config import StageConfig, cli_flag, interval


def _unwrap_optional(tp: Any) -> Any:
    """`X | None` -> X (an option left out is None anyway)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _comma_list(item: type, flag: str) -> Callable[[click.Context, Any, Any], Any]:
    """A callback turning '1,8' (or repeated options) into a list of `item`."""

    def parse(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return None if value is None else []
        texts = value if isinstance(value, tuple) else (value,)
        if all(not str(text).strip() for text in texts):
            return []  # `--backend ''`: the config says what an empty list means
        parts = [p.strip() for text in texts for p in str(text).split(",")]
        if any(p == "" for p in parts):
            raise ConfigError(
                f"{flag} has an empty item in '{','.join(texts)}'",
                f"give comma-separated values, e.g. {flag} a,b",
            )
        try:
            return [item(p) for p in parts]
        except ValueError as exc:
            raise ConfigError(
                f"{flag} takes comma-separated {item.__name__} values, got '{','.join(texts)}'",
                f"e.g. {flag} 1,8",
            ) from exc

    return parse


def _param(name: str, field: FieldInfo) -> click.Parameter:
    cli = dict((field.json_schema_extra or {}).get("cli", {}))
    tp = _unwrap_optional(field.annotation)
    default = None if field.default is PydanticUndefined else field.default
    if field.default_factory is not None:
        default = field.default_factory()
    required = field.is_required()
    if cli.pop("argument", False):
        return click.Argument([name], required=required, nargs=cli.pop("nargs", 1), **cli)
    flags = cli.pop("flag", None) or cli_flag(name, field)
    # "-o/--output" is two spellings; "--augment/--no-augment" is one on/off flag pair
    decls = [flags, name] if flags.startswith("--") else [*flags.split("/"), name]
    kw: dict[str, Any] = {"help": field.description or None, "required": required}
    kw["show_default"] = cli.pop("show_default", default not in (None, False, ()))
    origin = typing.get_origin(tp)
    if tp is bool:
        kw.update(is_flag=True, default=bool(default))
    elif origin is Literal:
        kw.update(type=click.Choice([str(a) for a in typing.get_args(tp)]), default=default)
    elif origin in (tuple, list):
        item = typing.get_args(tp)[0]
        long = next(d for d in decls if d.startswith("--"))
        kw.update(callback=_comma_list(item, long), multiple=cli.pop("multiple", False))
        kw["default"] = (
            (default if kw["multiple"] else ",".join(map(str, default))) if default else None
        )
    elif tp in (int, float):
        # Bounds are checked by the config (one message for CLI, recipes and Python); the help
        # shows them.
        kw.update(type=click.INT if tp is int else click.FLOAT, default=default)
        if interval(field):
            kw["help"] = f"{kw['help'] or ''}  [{interval(field)}]".strip()
    else:
        kw.update(type=click.STRING, default=default)
    if "flag_value" in cli:  # `--distill` alone, or `--distill TEACHER`
        kw.update(is_flag=False, flag_value=cli.pop("flag_value"))
    kw.update(cli)
    return click.Option(decls, **kw)


def options_from(config: type[StageConfig], *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorate a click command with one parameter per field of `config` (in field order)."""

    def decorate(f: Callable) -> Callable:
        params = [_param(n, fi) for n, fi in config.model_fields.items() if n not in skip]
        for p in reversed(params):
            click.decorators._param_memo(f, p)
        return f

    return decorate


def config_from(
    config: type[StageConfig], ctx: click.Context, kwargs: dict[str, Any], **extra: Any
) -> StageConfig:
    """The stage config from the options the user typed (defaults stay the config's own)."""
    typed = {
        k: v
        for k, v in kwargs.items()
        if k in config.model_fields
        and ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)
    }
    return config.parse({**typed, **extra})
