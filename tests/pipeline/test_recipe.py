"""Recipe validation: errors name the key and line; stage order and references are checked first."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.errors import ConfigError
from tvc.pipeline.recipe import load_recipe, parse_recipe, plan, shipped_recipes
from tvc.pipeline.runner import Runner

GOOD = """\
name: pico
model: vit_pico
data: fashion-mnist
stages:
  - export:
      id: base
      dynamic_batch: true
  - compress:
      prune: 0.5
      distill: "@model"
  - export:
      int8: static
  - bench:
      batch: "1,8"
      backend: ort
  - report:
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        plan(parse_recipe(text, "r.yaml"))
    return info.value.message


def test_a_good_recipe_plans_ids_inputs_and_data_defaults():
    steps = plan(parse_recipe(GOOD, "r.yaml"))
    assert [(s.kind, s.id, s.inputs) for s in steps] == [
        ("export", "base", ["@model"]),
        ("compress", "compress", ["@model"]),
        ("export", "export-2", ["@compress"]),
        ("bench", "bench", ["@base", "@export-2"]),
        ("report", "report", ["@bench"]),
    ]
    compress, int8, bench = steps[1], steps[2], steps[3]
    assert compress.options == {"prune": 0.5, "distill": "@model", "data": "fashion-mnist"}
    assert compress.refs == {"distill": "@model"}
    assert int8.options == {"int8": "static", "calib": "fashion-mnist"}
    assert bench.options == {"backend": ["ort"], "batch": [1, 8], "data": "fashion-mnist"}
    assert steps[4].formats == ["html", "md"]
    # --data on the command line wins over the recipe's
    assert plan(parse_recipe(GOOD, "r.yaml"), data="/imgs")[2].options["calib"] == "/imgs"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("prune: 0.5", "prune: 0.5\n      prnue: 0.3"),
            "r.yaml line 10: stages[1].compress.prnue: unknown key; did you mean 'prune'?",
        ),
        (
            ("prune: 0.5", "prune: 1.5"),
            "r.yaml line 9: stages[1].compress.prune: Input should be less than 1 (got 1.5)",
        ),
        (
            ("int8: static", "int8: yes"),
            "r.yaml line 12: stages[2].export.int8: Input should be 'static' or 'dynamic'",
        ),
        (
            ("dynamic_batch: true", "dynamic_batch: 'true'"),
            "r.yaml line 7: stages[0].export.dynamic_batch: Input should be a valid boolean",
        ),
        (
            ('batch: "1,8"', "batch: [1, eight]"),
            "r.yaml line 14: stages[3].bench.batch[1]: Input should be a valid integer",
        ),
        (
            ("  - report:\n", "  - reprot:\n"),
            "r.yaml line 16: stages[4].reprot: unknown key; did you mean 'report'?",
        ),
        (
            ("model: vit_pico", "model: {name: vit_pico, wieghts: w.safetensors}"),
            "r.yaml line 2: model.wieghts: unknown key; did you mean 'weights'?",
        ),
        (
            ("stages:", "stagse:"),
            "r.yaml line 4: stagse: unknown key (and 1 more problem(s)); did you mean 'stages'?",
        ),
        (("name: pico\n", ""), "r.yaml line 1: name: required key is missing"),
        (("name: pico", "name: pico\nname: other"), "r.yaml line 2: key 'name' appears twice"),
        (
            ("  - report:\n", "  - report: {}\n    bench: {}\n"),
            "r.yaml line 16: stages[4]: one stage has several kinds (report, bench)",
        ),
        (("id: base", "id: base\n  - oops"), "r.yaml line 8: not valid YAML"),
    ],
)
def test_mistakes_name_the_key_and_the_line(change, expected):
    message = error_of(GOOD.replace(*change))
    assert message.startswith(expected), message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("  - bench:\n", "  - report:\n  - bench:\n"), "line 13: report needs a bench stage"),
        (('"@model"', '"@export-2"'), "line 10: distill '@export-2' names a later stage"),
        (('"@model"', '"@base"'), "distill '@base' names the export stage 'base'"),
        (("      id: base\n", "      id: bench\n"), "stage id 'bench' is used twice"),
        (("data: fashion-mnist\n", ""), "compress needs `data:` and the recipe sets no `data:`"),
        (
            ('      prune: 0.5\n      distill: "@model"\n', "      id: c\n"),
            "compress has nothing to do",
        ),
    ],
)
def test_stage_order_and_references_are_checked_before_any_work(change, expected):
    message = error_of(GOOD.replace(*change))
    assert expected in message, message


def test_bench_without_an_export_is_an_order_error():
    text = "name: x\nmodel: vit_pico\nstages:\n  - bench: {}\n  - export: {}\n"
    assert error_of(text).startswith("r.yaml line 4: bench needs an export stage before it")


def test_unknown_keys_and_bad_values_are_caught_before_work(tmp_path):
    # a recipe written for a newer tvc: its bench has a key this one lacks
    message = error_of(GOOD.replace("backend: ort", "backend: ort\n      frobnicate: 5"))
    assert "r.yaml line 16: stages[3].bench.frobnicate: unknown key" in message
    assert "valid keys here:" in message and "limit" in message
    # values are checked by the stage's own config, with its bounds
    message = error_of(GOOD.replace("prune: 0.5", "prune: 1.5"))
    assert "stages[1].compress.prune" in message and "1.5" in message


def test_rules_between_options_are_the_stages_own(tmp_path):
    """A combination the command line refuses (here --global without --prune) is refused for
    the recipe too, before any stage runs, at the stage's line."""
    text = GOOD.replace("      prune: 0.5\n", "      global: true\n")
    with pytest.raises(ConfigError) as info:
        Runner(parse_recipe(text, "r.yaml"), tmp_path / "run")
    assert "r.yaml line 8: compress: --global only applies with --prune" in info.value.message
    assert not (tmp_path / "run").exists()


def test_shipped_recipes_are_valid_and_listed():
    names = shipped_recipes()
    assert {"vit-edge-int8", "deit-prune30-distill", "fmnist-demo"} <= set(names)
    res = CliRunner().invoke(cli, ["recipes"])
    assert res.exit_code == 0
    for name, description in names.items():
        assert description and f"{name}" in res.output and description in res.output
        from tvc.pipeline.recipe import load_recipe

        steps = plan(load_recipe(name), data="/some/images")
        assert steps[-1].kind == "report"
    res = CliRunner().invoke(cli, ["recipes", "--show", "fmnist-demo"])
    assert res.exit_code == 0 and "name: fmnist-demo" in res.output
    res = CliRunner().invoke(cli, ["run", "fmnist-dmeo"])
    assert res.exit_code == 2 and "did you mean: fmnist-demo" in res.output


def test_shipped_recipes_make_valid_stage_configs(tmp_path):
    """Every shipped recipe's stages are valid stage configs (the runner checks all of them
    before any stage runs)."""
    for name in shipped_recipes():
        runner = Runner(load_recipe(name), tmp_path / name, data="/some/images")
        assert runner.steps[-1].kind == "report"


def test_run_dry_run_prints_every_command(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: pico\nmodel: vit_pico\nstages:\n  - export: {dynamic_batch: true}\n"
        "  - bench: {batch: [1, 2]}\n  - report: {formats: [md]}\n"
    )
    res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    assert f"tvc export vit_pico -o {run}/export --dynamic-batch" in res.output
    bench = f"tvc bench {run}/export --names vit_pico --json {run}/bench/bench.json --batch 1,2"
    assert bench in res.output
    assert f"tvc report {run}/bench/records.json -o {run}/report/report.md" in res.output
    assert not run.exists()  # nothing ran


def test_detection_recipe_compresses_and_benches_the_kept_detr(tmp_path):
    from tvc.pipeline.recipe import load_recipe

    recipe = load_recipe("fmnist-det")
    steps = Runner(recipe, tmp_path / "check").steps
    assert recipe.model.name == "benchmarks/artifacts/detr_teacher"
    assert [(s.kind, s.id) for s in steps] == [
        ("export", "teacher-onnx"),
        ("compress", "student"),
        ("export", "student-onnx"),
        ("bench", "bench"),
        ("report", "report"),
    ]
    compress, int8, bench = steps[1], steps[2], steps[3]
    assert compress.refs == {"distill": "@model"} and compress.options["prune"] == 0.5
    assert int8.options["int8"] == "static" and int8.options["calib"] == "fashion-mnist-det"
    assert bench.options["data"] == "fashion-mnist-det" and bench.options["batch"] == [1]
    # detector exports have a fixed batch: a dynamic batch would be refused
    assert not any(s.options.get("dynamic_batch") for s in steps)

    res = CliRunner().invoke(cli, ["run", "fmnist-det", "-o", str(tmp_path / "r"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "tvc compress benchmarks/artifacts/detr_teacher -o " in res.output
    assert "--distill benchmarks/artifacts/detr_teacher" in res.output
    assert not (tmp_path / "r").exists()


def test_demo_runs_a_builtin_recipe_for_each_task(tmp_path, monkeypatch):
    """`tvc demo` reuses the kept teacher when it is there; --detection runs fmnist-det."""
    from tvc import demo

    monkeypatch.setattr(demo, "TRAINED_TEACHER", tmp_path / "absent")
    assert demo.demo_recipe() == "fmnist-demo"
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "artifact.json").write_text("{}")
    monkeypatch.setattr(demo, "TRAINED_TEACHER", tmp_path / "kept")
    assert demo.demo_recipe() == "fmnist-reuse"
    assert demo.demo_recipe(detection=True) == "fmnist-det"
    for task in (False, True):
        load_recipe(demo.demo_recipe(task))  # each names a recipe that exists and validates


def test_recorded_commands_name_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A run inside the working directory records no absolute machine path."""
    monkeypatch.chdir(tmp_path)
    recipe = parse_recipe(
        "name: pico\nmodel: vit_pico\nstages:\n  - export: {}\n  - bench: {}\n", "r.yaml"
    )
    text = "\n".join(Runner(recipe, tmp_path / "run").plan_text())
    assert "tvc export vit_pico -o run/export" in text
    assert "tvc bench run/export --names vit_pico --json run/bench/bench.json" in text
    commands = [line for line in text.splitlines() if line.strip().startswith("tvc ")]
    assert len(commands) == 2 and not any(str(tmp_path) in c for c in commands)


def test_a_compress_stage_may_prune_to_a_parameter_target_or_merge_tokens_alone():
    for option in ("prune_params: 0.3", "merge_tokens: '2'"):
        text = f"name: p\nmodel: vit_pico\nstages:\n  - compress: {{{option}}}\n  - export: {{}}\n"
        steps = plan(parse_recipe(text, "r.yaml"))
        assert steps[0].kind == "compress" and option.split(":")[0] in steps[0].options
