"""Stage configs: one validated pydantic model per stage, the single place an option is declared.

A field's name is the option's name everywhere: `--calib-size` on the command line (the CLI is
generated from the fields by `tvc.cli.options.options_from`), `calib_size:` in a recipe stage
(the recipe models are generated from the same fields), `calib_size=` in Python. Its description
is the `--help` text; its type and bounds are checked once, here, for all three.

`option(...)` attaches what only the command line needs (a short flag, a metavar, a flag that
takes an optional value) without declaring the option a second time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tvc.errors import ConfigError


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are never silently coerced
    (`epochs: "2"` is a type error), and a config is read-only once validated."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @classmethod
    def parse(cls, values: dict[str, Any], *, origin: str = "option") -> StageConfig:
        """Validate `values`; the first problem becomes one ConfigError naming the option."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise config_error(exc, cls, origin) from exc


def option(default: Any = None, help: str = "", **cli: Any) -> Any:
    """A config field with its `--help` text; `cli` holds command-line-only presentation:
    `flag` (the option's spelling, e.g. "--no-simplify" or "-o/--output"), `metavar`,
    `flag_value` (the value of a bare `--distill`), `multiple`, `hidden`, `show_default`."""
    extra = {"cli": cli} if cli else None
    if callable(default) and not isinstance(default, type):
        return Field(default_factory=default, description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra)


def cli_flag(name: str, field: Any) -> str:
    """The long command-line spelling of config field `name` (`calib_size` -> `--calib-size`)."""
    extra = (field.json_schema_extra or {}).get("cli", {})
    spelled = extra.get("flag")
    if spelled:
        return next(p for p in spelled.split("/") if p.startswith("--"))
    return "--" + (field.alias or name).replace("_", "-")


def interval(field: Any) -> str:
    """A numeric field's valid range as text: '(0, 1)', '>= 1', '(0, 1]'."""
    import annotated_types as at

    lo = hi = None
    for m in field.metadata:
        if isinstance(m, at.Ge):
            lo = ("[", m.ge)
        elif isinstance(m, at.Gt):
            lo = ("(", m.gt)
        elif isinstance(m, at.Le):
            hi = ("]", m.le)
        elif isinstance(m, at.Lt):
            hi = (")", m.lt)
    if lo and hi:
        return f"{lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def config_error(exc: ValidationError, cls: type[BaseModel], origin: str) -> ConfigError:
    """The first validation error as one line: which option, what was wrong, the valid range."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    name = loc[0] if loc else ""
    field = cls.model_fields.get(name)
    shown = cli_flag(name, field) if field is not None and origin == "option" else name
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        valid = ", ".join(sorted(cls.model_fields))
        return ConfigError(f"unknown {origin} '{name}'", f"valid ones: {valid}")
    where = f"{shown}" if shown else origin
    got = err.get("input")
    bound = interval(field) if field is not None else ""
    if bound and err.get("type", "").endswith(("_than", "_than_equal")):
        return ConfigError(
            f"{where} must be {'in ' if ',' in bound else ''}{bound}, got {got}",
            f"pass a value {'in ' if ',' in bound else ''}{bound}",
        )
    got_text = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return ConfigError(f"{where}: {msg.lower()}{got_text}", f"see the help of {where}")


class ModelOptions(StageConfig):
    """The MODEL a stage starts from, and how to build it."""

    model: str = option(..., "", argument=True)
    weights: str | None = option(
        None, "Weights for a named architecture (.safetensors or .pth state dict)."
    )
    num_classes: int | None = Field(
        None, ge=1, description="Classifier size (default: the model's or the weights')."
    )
    pretrained: bool = option(False, "Require pretrained weights (error if none are on disk).")

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "num_classes": self.num_classes,
            "pretrained": self.pretrained,
        }


def default_output(model: str, suffix: str) -> str:
    """The artifact a stage writes when -o is left out: MODEL's last path part (or name) plus
    `-suffix`, in the current directory (`vit_b16` -> `vit_b16-compressed`)."""
    from pathlib import Path

    stem = Path(model.rstrip("/")).name or "model"
    return f"{stem}-{suffix}"


class OutputOptions(StageConfig):
    """Where a stage writes its artifact, and whether it may replace one."""

    output: str = option(..., "Artifact directory to write.", flag="-o/--output")
    force: bool = option(False, "Replace an existing artifact at OUTPUT (never the input).")


def _cli(field: Any) -> dict[str, Any]:
    return (field.json_schema_extra or {}).get("cli", {})


def argument_fields(config: type[StageConfig]) -> list[str]:
    """The config fields that are positional arguments on the command line (MODEL, TARGET)."""
    return [n for n, f in config.model_fields.items() if _cli(f).get("argument")]


def field_with_flag(config: type[StageConfig], flag: str) -> str | None:
    """The config field spelled `flag` on the command line (`--json` -> "json_out")."""
    return next((n for n, f in config.model_fields.items() if cli_flag(n, f) == flag), None)


def command_text(kind: str, config: type[StageConfig], values: dict[str, Any]) -> str:
    """The `tvc KIND ...` command that runs a stage with `values`, as a person would type it:
    arguments first, then the options in the order of `values`."""
    import shlex

    fields = config.model_fields
    by_alias = {f.alias: n for n, f in fields.items() if f.alias}
    args = ["tvc", kind]
    for name in argument_fields(config):
        value = values.get(name)
        if value is not None:
            args += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    for key, value in values.items():
        name = by_alias.get(key, key)
        field = fields.get(name)
        if field is None or _cli(field).get("argument") or value is None:
            continue
        spelled = _cli(field).get("flag") or cli_flag(name, field)
        on, _, off = spelled.partition("/") if spelled.startswith("--") else (spelled, "", "")
        if not spelled.startswith("--"):  # "-o/--output": the short form
            on = spelled.split("/")[0]
        if value is True:
            args.append(on)
        elif value is False:
            if off:
                args.append(off)
        elif isinstance(value, list):
            args += [on, ",".join(str(v) for v in value)]
        else:
            args += [on, str(value)]
    return shlex.join(args)
