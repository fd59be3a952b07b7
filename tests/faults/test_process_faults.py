"""Faults that need other processes: SIGKILL mid-write, Ctrl-C, two writers at once, and a `tvc
run` parent killed while its stage runs. The children import only tvc.artifact / tvc.pipeline
(no torch), so each case costs a fraction of a second."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.faults.conftest import Workspace, assert_one_line_error, leftovers, python_env, snapshot
from tests.faults.conftest import tvc as run_tvc


def _write(target: Path, text: str, **kw) -> None:
    from tvc.artifact import write_artifact

    with write_artifact(target, "model", **kw) as w:
        w.path_for("weights.bin").write_text(text)


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    from tvc.safe_io import pid_alive

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


WRITER = """
    import sys, time
    from pathlib import Path
    from tvc.artifact import write_artifact
    target, ready = Path(sys.argv[1]), Path(sys.argv[2])
    with write_artifact(target, "model", force=True) as w:
        w.path_for("weights.bin").write_text("new, half-written")
        ready.touch()
        time.sleep(60)
"""


def test_sigkill_mid_write_keeps_the_old_artifact_and_the_next_write_cleans_up(tmp_path):
    from tvc.artifact import load_artifact

    target = tmp_path / "art"
    _write(target, "trained")
    before = snapshot(target)
    proc = _child(WRITER, str(target), str(tmp_path / "ready"))
    _wait_for(tmp_path / "ready")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(target) == before  # the old artifact, untouched
    assert load_artifact(target).file("weights.bin").read_text() == "trained"
    staging = tmp_path / f".art.staging-{proc.pid}"
    assert staging.is_dir()  # what SIGKILL leaves: no code runs in a killed process
    _write(target, "retrained", force=True)  # the next write of the same output removes it
    assert not staging.exists() and not leftovers(tmp_path)
    assert load_artifact(target).file("weights.bin").read_text() == "retrained"


def test_ctrl_c_during_export_exits_130_and_keeps_the_old_artifact(ws: Workspace, monkeypatch):
    import tvc.export.onnx as onnx_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_mod, "_torch_export", interrupted)
    before = snapshot(ws.root)
    res = run_tvc("export", ws.model, "-o", ws.onnx, "--force")
    assert_one_line_error(res, 130, r"interrupted; earlier results are left intact")
    assert snapshot(ws.root) == before
    assert not leftovers(ws.root)


FORCE_WRITER = """
    import sys
    from pathlib import Path
    from tvc.artifact import write_artifact
    target, n, tag = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for i in range(n):
        with write_artifact(target, "model", force=True) as w:
            w.path_for("weights.bin").write_text(f"{tag} {i}")
    print("ok")
"""


def test_concurrent_forced_commits_never_fail_or_tear(tmp_path):
    from tvc.artifact import load_artifact

    target = tmp_path / "art"
    procs = [_child(FORCE_WRITER, str(target), "25", tag) for tag in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    art = load_artifact(target)  # verifies every hash: one writer's complete result
    assert art.file("weights.bin").read_text() in ("a 24", "b 24")
    assert not leftovers(tmp_path)


RACER = """
    import sys, time
    from pathlib import Path
    from tvc.artifact import write_artifact
    from tvc.errors import ArtifactError
    target, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    try:
        with write_artifact(target, "model") as w:
            w.path_for("weights.bin").write_text(me.name)
            me.touch()
            while not other.exists():  # both have started: neither saw an output
                time.sleep(0.01)
        print("kept")
    except ArtifactError as exc:
        print("refused:", exc.message)
"""


def test_two_writers_to_one_new_output_one_wins_the_other_is_told(tmp_path):
    from tvc.artifact import load_artifact

    target = tmp_path / "art"
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [_child(RACER, str(target), str(a), str(b)), _child(RACER, str(target), str(b), str(a))]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split(":")[0] for o in outs) == ["kept", "refused"], outs
    refused = next(o for o in outs if o.startswith("refused"))
    assert "written by another process while this one ran" in refused
    assert "pass --force" in refused
    winner = "a" if outs[0] == "kept" else "b"
    assert load_artifact(target).file("weights.bin").read_text() == winner
    assert not leftovers(tmp_path)


PARENT = """
    import sys
    from tvc.pipeline.runner import _call
    child = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    _call([sys.executable, "-c", child, sys.argv[1]])
"""


def test_a_killed_run_takes_its_stage_child_down(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = _child(PARENT, str(pidfile))
    _wait_for(pidfile)
    time.sleep(0.1)  # the pid is written before the file closes
    child = int(pidfile.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone = _gone(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone, "the stage child outlived the killed runner"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_guard_exits_when_the_parent_is_already_gone():
    from tvc.pipeline.runner import _die_with_parent

    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=_die_with_parent(1),  # "parent" pid 1 is not ours: as if it died before
    )
    assert proc.wait(timeout=10) == 1
