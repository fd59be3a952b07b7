"""Stage configs are the one declaration of every option: the CLI, recipes and Python agree."""

from __future__ import annotations

import shlex

import click
import pytest

from tvc.cli import cli
from tvc.errors import ConfigError
from tvc.stages import get_stage, stage_names
from tvc.stages.config import cli_flag, command_text


def _command(name: str) -> click.Command:
    return cli.commands[name]


@pytest.mark.parametrize("name", ["train", "compress", "export", "bench", "report"])
def test_every_config_field_is_an_option_of_its_command_with_its_help(name):
    config = get_stage(name).config
    command = _command("eval" if name == "eval" else name)
    params = {p.name: p for p in command.params}
    for field_name, field in config.model_fields.items():
        if (field.json_schema_extra or {}).get("cli", {}).get("hidden"):
            continue
        assert field_name in params, f"{name}: {field_name} has no command-line option"
        param = params[field_name]
        if isinstance(param, click.Option):
            assert cli_flag(field_name, field) in param.opts + param.secondary_opts
            assert (field.description or "") in (param.help or "")


def test_unknown_stage_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'compress'"):
        get_stage("compres")
    assert set(stage_names()) == {"train", "compress", "export", "eval", "bench", "report"}


def test_config_errors_name_the_option_and_its_range():
    config = get_stage("compress").config
    base = {"model": "vit_pico", "output": "x"}
    with pytest.raises(ConfigError, match=r"--prune must be in \(0, 1\), got 1.5"):
        config.parse({**base, "prune": 1.5})
    with pytest.raises(ConfigError, match="unknown option 'prunee'"):
        config.parse({**base, "prunee": 0.5})
    with pytest.raises(ConfigError, match="--epochs only applies with --distill"):
        config.parse({**base, "prune": 0.5, "epochs": 2})
    with pytest.raises(ConfigError, match="--round-to"):  # strict: no silent "8" -> 8
        config.parse({**base, "prune": 0.5, "round_to": "8"})


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("compress", {"model": "vit_pico", "output": "o", "prune": 0.5, "global": True,
                      "keep": ["head", "embed"], "distill": "", "data": "fashion-mnist"}),
        ("train", {"model": "vit_pico", "output": "o", "data": "fashion-mnist", "epochs": 2,
                   "augment": False, "resume": True}),
        ("bench", {"target": "art", "backend": ["ort", "torch"], "batch": [1, 8],
                   "json_out": "b.json"}),
        ("report", {"records": ["a.json", "b.json"], "output": "r.md", "title": "x y"}),
    ],
)  # fmt: skip
def test_the_recorded_command_parses_back_to_the_same_config(name, values, monkeypatch):
    """What the recipe runner records as the `tvc` command of a stage is that stage, exactly."""
    import tvc.stages

    stage = get_stage(name)
    text = command_text(name, stage.config, values)

    class Captured(Exception):
        pass

    def capture(cfg):
        raise Captured(cfg)

    fake = tvc.stages.Stage(name, stage.config, capture, stage.summary)
    monkeypatch.setattr(tvc.stages, "get_stage", lambda n: fake)
    with pytest.raises(Captured) as got:
        _command(name).main(shlex.split(text)[2:], standalone_mode=False)
    # (bench also records the command line it was given, which here is pytest's)
    assert got.value.args[0].model_dump(exclude={"command"}) == stage.config.parse(
        values
    ).model_dump(exclude={"command"})


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("lstr_pico", "/nonexistent"),
        ("vit_pico", "/nonexistent"),
        ("vit_pico", "fashion-mnist:/no"),
    ],
)
def test_data_that_does_not_exist_is_named_as_missing_for_every_task(model, data):
    """Not 'is classification data': the fallback task owns any spec, so a missing path must be
    reported as missing whatever the model's task."""
    from tvc.stages.common import check_data_task, task_of_model

    with pytest.raises(ConfigError, match=f"dataset '{data}' not found"):
        check_data_task(task_of_model(model, "test"), model, data)
