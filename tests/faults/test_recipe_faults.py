"""`tvc run` faults: stale or tampered state must not be trusted, bad recipes end in one line.

The stages are stood in for by a fake that writes small artifacts the way the real commands do
(replacing an existing one only with --force), so each row takes milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import tvc.pipeline.runner as runner_mod
from tests.faults.conftest import assert_one_line_error, leftovers, tvc
from tvc.artifact import allow_overwrite, load_artifact, write_artifact
from tvc.pipeline.recipe import parse_recipe
from tvc.pipeline.runner import Runner

RECIPE = """\
name: faults
model: vit_pico
stages:
  - export: {id: a, dynamic_batch: true}
  - export: {id: b, opset: 18}
"""


class FakeStages:
    """Stands in for a stage's child process (`python -m tvc.stages KIND CONFIG TEXT`, or the
    older `python -m tvc KIND ARGS`); records the output of each call."""

    def __init__(self) -> None:
        self.outputs: list[str] = []

    def __call__(self, argv: list[str]) -> int:
        if argv[2] == "tvc.stages":
            values = json.loads(argv[4])
            out, force = values.pop("output"), bool(values.pop("force", False))
            payload = json.dumps(values, sort_keys=True)
        else:
            args = argv[3:]
            out, force = args[args.index("-o") + 1], "--force" in args
            payload = " ".join(a for a in args if a != "--force")
        self.outputs.append(Path(out).name)
        with allow_overwrite(force), write_artifact(out, "onnx") as w:
            w.path_for("model.onnx").write_text(payload)
        return 0


@pytest.fixture
def fake(monkeypatch) -> FakeStages:
    fake = FakeStages()
    monkeypatch.setattr(runner_mod, "_call", fake)
    return fake


def _run(run_dir: Path, text: str = RECIPE) -> list[str]:
    lines: list[str] = []
    Runner(parse_recipe(text, "r.yaml"), run_dir, echo=lines.append).run()
    return lines


@dataclass
class Resume:
    name: str
    damage: Callable[[Path], None]  # what happens to the run directory between two runs
    reran: list[str]  # stages that must run again
    says: str = ""  # a line the second run must print


def _flip(p: Path) -> None:
    p.write_text(p.read_text() + " edited")


def _stale_staging(run: Path) -> None:
    (run / ".a.staging-999999999").mkdir()
    (run / ".a.staging-999999999" / "model.onnx").write_text("half")
    (run / "a" / "model.onnx").unlink()  # and the stage's output lost its payload


RESUMES = [
    Resume("tampered-payload", lambda r: _flip(r / "a" / "model.onnx"), ["a"]),
    Resume("deleted-payload", lambda r: (r / "b" / "model.onnx").unlink(), ["b"]),
    Resume("deleted-artifact-json", lambda r: (r / "a" / "artifact.json").unlink(), ["a"]),
    Resume("deleted-output", lambda r: shutil.rmtree(r / "b"), ["b"]),
    Resume(
        "payload-renamed-out-of-reach",
        lambda r: (r / "a" / "model.onnx").rename(r / "model.onnx"),
        ["a"],
    ),
    Resume("stale-staging", _stale_staging, ["a"], "removed .a.staging-999999999"),
    Resume(
        "corrupt-run-json",
        lambda r: (r / "run.json").write_text("{half"),
        ["a", "b"],
    ),
    Resume(
        "stale-run-json-temp",
        lambda r: (r / ".run.json.tmp-999999999").write_text("{half"),
        [],
    ),
    Resume(
        "stale-lock-of-a-dead-run",
        lambda r: (r / ".lock").write_text("999999999"),
        [],
    ),
    Resume("nothing", lambda r: None, []),
]


@pytest.mark.parametrize("c", RESUMES, ids=[c.name for c in RESUMES])
def test_resume_reverifies_what_it_skips(c: Resume, fake: FakeStages, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run(run)
    fake.outputs.clear()
    c.damage(run)
    lines = _run(run)
    assert fake.outputs == c.reran
    for sid in ("a", "b"):
        load_artifact(run / sid)  # every output is whole again, hashes verified
        skipped = any(f"'{sid}': unchanged, skipped" in ln for ln in lines)
        assert skipped == (sid not in c.reran), lines
    if c.says:
        assert any(c.says in ln for ln in lines), lines
    assert not leftovers(tmp_path)
    assert not (run / ".lock").exists()
    assert not any("re-run the step" in ln for ln in lines)


def test_a_live_run_holds_its_directory(fake: FakeStages, tmp_path: Path) -> None:
    from tvc.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(ConfigError, match="another 'tvc run'"):
        _run(run)
    assert fake.outputs == []


# --------------------------------------------------------------------- bad recipes, one line


def _recipe(tmp_path: Path, text: str) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return str(p)


BAD_RECIPES = [
    ("missing-file", None, r"r.yaml|not found|does not exist|no recipe"),
    ("not-yaml", "name: x\nstages: [\n", r""),
    ("not-a-mapping", "- just\n- a list\n", r""),
    ("unknown-stage", "name: x\nmodel: vit_pico\nstages:\n  - deploy: {}\n", r"deploy"),
    (
        "unknown-option",
        "name: x\nmodel: vit_pico\nstages:\n  - export: {turbo: true}\n",
        r"turbo",
    ),
    (
        "missing-weights",
        "name: x\nmodel: {name: vit_pico, weights: /nope/w.safetensors}\nstages:\n  - export: {}\n",
        r"/nope/w.safetensors",
    ),
    ("no-stages", "name: x\nmodel: vit_pico\nstages: []\n", r"stage"),
    (
        "unknown-reference",
        "name: x\nmodel: vit_pico\nstages:\n  - export: {input: '@nope'}\n",
        r"nope",
    ),
]


@pytest.mark.parametrize("name,text,pattern", BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_bad_recipe_is_one_line(name: str, text: str | None, pattern: str, tmp_path: Path) -> None:
    path = _recipe(tmp_path, text) if text is not None else str(tmp_path / "r.yaml")
    res = tvc("run", path, "-o", tmp_path / "run")
    assert_one_line_error(res, 2, pattern)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_run_json_written_on_a_full_disk_is_a_storage_error(tmp_path: Path, monkeypatch) -> None:
    import errno

    from tvc.errors import StorageError
    from tvc.pipeline.runner import RunState

    state = RunState(tmp_path)
    state.save()
    before = (tmp_path / "run.json").read_text()

    def full(self, *a, **k):
        Path.write_bytes(self, b"{half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    state.data["stages"]["a"] = {"status": "done"}
    with pytest.raises(StorageError, match="no space left"):
        state.save()
    monkeypatch.undo()
    assert (tmp_path / "run.json").read_text() == before
    assert json.loads(before) == {"stages": {}}
    assert not leftovers(tmp_path)
