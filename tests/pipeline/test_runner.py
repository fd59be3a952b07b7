"""`tvc run`: stages skipped when unchanged, re-run when their settings or inputs change, and an
interrupted run (a real process killed mid-stage) resumes where it stopped."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import tvc.pipeline.runner as runner_mod
from tvc.artifact import allow_overwrite, is_artifact, load_artifact, write_artifact
from tvc.cli import cli
from tvc.pipeline.recipe import parse_recipe
from tvc.pipeline.runner import Runner, StageFailedError
from tvc.records import BenchRecord, Latency, ModelRef, read_records, write_records

RECIPE = """\
name: pico
model: vit_pico
stages:
  - export: {id: a, dynamic_batch: true}
  - export: {id: b, dynamic_batch: true, opset: 18}
  - bench: {batch: [1, 2]}
  - report: {formats: [md]}
"""


class FakeTvc:
    """Stands in for `python -m tvc.stages KIND CONFIG COMMAND`: writes a small, deterministic
    output per stage. It reads the `tvc` command the runner records for the stage, so the tests
    also check that command."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.forced: list[bool] = []
        self.fail: dict[str, int] = {}

    def __call__(self, argv: list[str]) -> int:
        assert argv[1:3] == ["-m", "tvc.stages"]  # the stage, not the CLI
        values = json.loads(argv[4])
        args = shlex.split(argv[5])[1:]
        # like the real stages, replace an existing artifact only when told to
        force = "--force" in args
        args = [a for a in args if a != "--force"]
        self.calls.append(args)
        self.forced.append(force)
        kind = args[0]
        if kind in self.fail:
            return self.fail[kind]
        # outputs go where the stage's config says, as with the real stages: bench and report
        # write into a staging directory that the command recorded (args) does not name
        out = values.get("json_out", values.get("output"))
        # what the records name as their origin: the runner's command, else (as `tvc bench`
        # does) one made from the config's values
        self.command = values.get("command") or f"tvc {kind} --json {out}"
        with allow_overwrite(force):
            self._write(kind, args, out)
        return 0

    def _write(self, kind: str, args: list[str], out: str | None) -> None:
        if kind in ("train", "compress"):
            with write_artifact(out, "model") as w:
                w.path_for("weights.safetensors").write_text(" ".join(args[:2] + args[4:]))
        elif kind == "export":
            with write_artifact(out, "onnx") as w:
                # the payload depends on the options and weights, as a real export's does
                payload = " ".join(args[:2] + args[4:])
                if "--weights" in args:
                    payload += Path(args[args.index("--weights") + 1]).read_text()
                w.path_for("model.onnx").write_text(payload)
                w.meta["model"] = {"name": args[1]}
        elif kind == "bench":
            # one interleaved `tvc bench A B ... --names a,b,...` for every target of the stage
            targets = args[1 : next(i for i, a in enumerate(args) if a.startswith("-"))]
            names = args[args.index("--names") + 1].split(",")
            batches = [int(b) for b in args[args.index("--batch") + 1].split(",")]
            lat = Latency(p50=1.0, p90=1.1, p99=1.2, mean=1.0, std=0.1, min=0.9, max=2.0, n=10)
            records = [
                BenchRecord(
                    variant=f"{name} fp32",
                    model=ModelRef(name="vit_pico", artifact_id=load_artifact(target).id),
                    precision="fp32",
                    backend="ort",
                    provider="CPUExecutionProvider",
                    batch=b,
                    latency_ms=lat,
                    throughput_ips=b * 1e3,
                    board="test box",
                    environment={},
                    command=self.command,
                    created="now",
                    extra={"target": target},
                )
                for target, name in zip(targets, names, strict=True)
                for b in batches
            ]
            write_records(records, out)
        elif kind == "report":
            with open(out, "w") as f:
                f.write("report of " + " ".join(args[1 : args.index("-o")]))

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeTvc()
    monkeypatch.setattr(runner_mod, "_call", fake)
    return fake


def run(tmp_path, text=RECIPE, **kwargs):
    lines: list[str] = []
    r = Runner(parse_recipe(text, "r.yaml"), tmp_path / "run", echo=lines.append, **kwargs)
    return r.run(), lines


def test_second_run_skips_every_unchanged_stage(fake, tmp_path):
    results, _ = run(tmp_path)
    assert [r.status for r in results] == ["ran"] * 4
    assert fake.kinds() == ["export", "export", "bench", "report"]  # one interleaved bench
    report = tmp_path / "run/report/report.md"
    first = report.stat().st_mtime_ns

    fake.calls.clear()
    results, lines = run(tmp_path)
    assert [r.status for r in results] == ["skipped"] * 4
    assert fake.calls == []
    assert lines[0] == f"[1/4] export 'a': unchanged, skipped ({tmp_path / 'run/a'})"
    assert report.stat().st_mtime_ns == first


def test_a_failed_remeasurement_keeps_the_previous_records_and_report(fake, tmp_path):
    run(tmp_path)
    records, report = tmp_path / "run/bench/records.json", tmp_path / "run/report/report.md"
    before = records.read_bytes(), report.read_bytes()
    for kind in ("bench", "report"):  # e.g. Ctrl-C in the middle of `tvc demo --force`
        fake.fail[kind] = 130
        with pytest.raises(StageFailedError):
            run(tmp_path, force=True)
        del fake.fail[kind]
        assert (records.read_bytes(), report.read_bytes()) == before
        assert not list((tmp_path / "run").glob(".*staging*"))  # nothing half-written left
    # the records name the stage's own directory, never the staging one they were written in
    assert "staging" not in records.read_text() and "staging" not in report.read_text()
    run(tmp_path, force=True)
    assert records.read_bytes() == before[0] and report.is_file()


def test_a_changed_setting_reruns_that_stage_and_what_depends_on_it(fake, tmp_path):
    run(tmp_path)
    fake.calls.clear()
    run(tmp_path, RECIPE.replace("batch: [1, 2]", "batch: [1]"))
    assert fake.kinds() == ["bench", "report"]  # the exports are unchanged

    fake.calls.clear()
    run(tmp_path, RECIPE.replace("batch: [1, 2]", "batch: [1]").replace("opset: 18", "opset: 19"))
    assert fake.kinds() == ["export", "bench", "report"]  # b changed, so all after it

    # the model's weights file is part of its identity: new weights, everything runs again
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"one")
    text = RECIPE.replace("model: vit_pico", f"model: {{name: vit_pico, weights: {weights}}}")
    run(tmp_path, text)
    fake.calls.clear()
    weights.write_bytes(b"two")
    run(tmp_path, text)
    assert fake.kinds() == ["export", "export", "bench", "report"]  # one interleaved bench


def test_a_damaged_output_or_force_runs_the_stage_again(fake, tmp_path):
    run(tmp_path)
    (tmp_path / "run/report/report.md").write_text("edited")
    fake.calls.clear()
    run(tmp_path)
    assert fake.kinds() == ["report"]
    fake.calls.clear()
    run(tmp_path, force=True)
    assert fake.kinds() == ["export", "export", "bench", "report"]  # one interleaved bench


def test_a_failed_stage_stops_the_run_and_is_retried_next_time(fake, tmp_path):
    fake.fail["bench"] = 3
    with pytest.raises(StageFailedError) as info:
        run(tmp_path)
    assert info.value.exit_code == 3 and "stage bench failed (exit 3)" in info.value.message
    state = json.loads((tmp_path / "run/run.json").read_text())["stages"]
    assert state["a"]["status"] == "done" and state["bench"]["status"] == "failed"
    assert "report" not in state
    del fake.fail["bench"]
    fake.calls.clear()
    run(tmp_path)
    assert fake.kinds() == ["bench", "report"]


def test_an_interrupted_train_stage_continues_from_its_checkpoint(fake, tmp_path):
    text = RECIPE.replace(
        "  - export: {id: a, dynamic_batch: true}\n",
        "  - train: {id: t, data: fashion-mnist, epochs: 2, augment: false}\n"
        "  - export: {id: a, dynamic_batch: true}\n",
    )
    fake.fail["train"] = 130  # e.g. Ctrl-C in the middle of an epoch
    with pytest.raises(StageFailedError):
        run(tmp_path, text)
    (tmp_path / "run/t.ckpt").mkdir()
    (tmp_path / "run/t.ckpt/last.pt").write_bytes(b"epoch 1")  # what the classifier left
    del fake.fail["train"]
    fake.calls.clear()
    _, lines = run(tmp_path, text)
    assert fake.calls[0][:2] == ["train", "vit_pico"]
    assert fake.calls[0][4:] == ["--data", "fashion-mnist", "--epochs", "2", "--no-augment",
                                 "--resume"]  # fmt: skip
    assert "[1/5] train 't': interrupted last time, resuming it" in lines
    # the export after it starts from the trained model
    assert fake.calls[1][:2] == ["export", str(tmp_path / "run/t")]
    # with other settings the checkpoint does not fit: train starts afresh
    fake.fail["train"] = 1
    with pytest.raises(StageFailedError):
        run(tmp_path, text.replace("epochs: 2", "epochs: 3"))
    del fake.fail["train"]
    fake.calls.clear()
    run(tmp_path, text.replace("epochs: 2", "epochs: 4"))
    assert "--resume" not in fake.calls[0]


def test_an_interrupted_train_stage_without_a_checkpoint_starts_again(fake, tmp_path):
    """Detector training keeps no checkpoint (and `tvc train` refuses --resume for detectors),
    so an interrupted detector stage simply runs again."""
    text = RECIPE.replace("model: vit_pico", "model: detr_pico").replace(
        "  - export: {id: a, dynamic_batch: true}\n",
        "  - train: {id: t, data: fashion-mnist-det, epochs: 2}\n  - export: {id: a}\n",
    )
    fake.fail["train"] = 130
    with pytest.raises(StageFailedError):
        run(tmp_path, text)
    del fake.fail["train"]
    fake.calls.clear()
    run(tmp_path, text)
    assert fake.calls[0] == ["train", "detr_pico", "-o", str(tmp_path / "run/t"), "--data",
                             "fashion-mnist-det", "--epochs", "2"]  # fmt: skip


def test_bench_records_are_named_by_stage_and_carry_their_commands(fake, tmp_path):
    text = RECIPE.replace("{id: b, dynamic_batch: true, opset: 18}", "{id: b, opset: 18}")
    run(tmp_path, text)
    records = read_records(tmp_path / "run/bench/records.json")
    # both exports come from vit_pico, so the stage ids tell them apart
    assert [(r.variant, r.batch) for r in records] == [
        ("a fp32", 1),
        ("a fp32", 2),
        ("b fp32", 1),
        ("b fp32", 2),
    ]
    b = records[2]
    assert b.extra["stage"] == "b" and b.extra["recipe"] == "pico"
    assert b.extra["pipeline"] == [
        f"tvc export vit_pico -o {tmp_path}/run/b --opset 18",
        f"tvc bench {tmp_path}/run/a {tmp_path}/run/b --names a,b "
        f"--json {tmp_path}/run/bench/bench.json --batch 1,2",
    ]


def test_cli_run_prints_progress_and_where_the_report_is(fake, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert f"[3/4] bench: tvc bench {tmp_path / 'run/a'} {tmp_path / 'run/b'} --names a,b" in (
        res.output
    )
    # the stage's summary: each variant's p50 and the speed-up of b over a, measured together
    assert "    a fp32 (CPUExecutionProvider, all thread(s), batch 1): p50 1 ms" in res.output
    assert "    b fp32 vs a fp32 (CPUExecutionProvider, all thread(s), batch 2): " in res.output
    assert "pico: 4 stage(s) ran, 0 unchanged" in res.output
    assert f"report: {tmp_path / 'run/report/report.md'}" in res.output
    fake.fail["report"] = 2
    (tmp_path / "run/report/report.md").unlink()
    res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(tmp_path / "run")])
    assert res.exit_code == 2
    assert "error: stage report failed (exit 2)" in res.output


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_where_it_stopped(tmp_path):
    """Real `tvc` processes: kill the whole run while stage 2 writes its artifact, then resume."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        RECIPE.replace("batch: [1, 2]", "batch: [1], min_time_s: 0.05, warmup_s: 0, min_runs: 3")
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tvc", "run", str(recipe), "-o", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        # stage 2 ('b') is mid-way when its artifact is being staged
        while not list(run_dir.glob(".b.staging-*")) and proc.poll() is None:
            assert time.monotonic() < deadline, "stage b never started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its stage, like a power cut
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()
    state = json.loads((run_dir / "run.json").read_text())["stages"]
    assert state["a"]["status"] == "done" and state["b"]["status"] == "running"
    assert is_artifact(run_dir / "a") and not is_artifact(run_dir / "b")
    a_written = (run_dir / "a/artifact.json").stat().st_mtime_ns

    res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "[1/4] export 'a': unchanged, skipped" in res.output
    assert "[2/4] export 'b': interrupted last time, running it again" in res.output
    assert (run_dir / "a/artifact.json").stat().st_mtime_ns == a_written  # not redone
    assert not list(run_dir.glob(".b.*"))  # the killed attempt's staging dir is gone
    assert '"opset": 18' in json.dumps(load_artifact(run_dir / "b").meta["spec"])
    report = (run_dir / "report/report.md").read_text()
    assert "a fp32" in report and "b fp32" in report

    # and once everything is done, a re-run starts no stage at all
    def no_stage(argv):
        raise AssertionError(f"unexpected stage run: {argv}")

    runner_mod_call, runner_mod._call = runner_mod._call, no_stage
    try:
        res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(run_dir)])
    finally:
        runner_mod._call = runner_mod_call
    assert res.exit_code == 0 and "0 stage(s) ran, 4 unchanged" in res.output


def test_demo_reruns_every_stage_only_with_force(fake, tmp_path, monkeypatch):
    """`tvc demo` skips what is done; `tvc demo --force` measures again and replaces it."""
    import tvc.demo

    monkeypatch.setattr(tvc.demo, "load_recipe", lambda name: parse_recipe(RECIPE, "r.yaml"))
    out = str(tmp_path / "demo")
    res = CliRunner().invoke(cli, ["demo", "-o", out])
    assert res.exit_code == 0, res.output
    assert fake.kinds() == ["export", "export", "bench", "report"]
    fake.calls.clear()
    res = CliRunner().invoke(cli, ["demo", "-o", out])
    assert res.exit_code == 0 and fake.calls == []  # unchanged: nothing re-measured
    assert "unchanged, skipped" in res.output
    records = tmp_path / "demo/bench/records.json"
    first = records.stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["demo", "-o", out, "--force"])
    assert res.exit_code == 0, res.output
    assert fake.kinds() == ["export", "export", "bench", "report"]
    assert fake.forced[-4:-2] == [True, True]  # the exports replaced the previous artifacts
    assert records.stat().st_mtime_ns != first
