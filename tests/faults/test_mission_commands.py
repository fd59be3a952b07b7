"""The mission's commands as a user types them: compress with MODEL left out (the --distill
model is compressed and distilled from its uncompressed self), a bare --int8 (static, calibrated
on the data the artifact's lineage recorded), and `-o` left out."""

from __future__ import annotations

import pytest

from tests.faults.conftest import Workspace, assert_one_line_error, tvc
from tvc.artifact import load_artifact


def test_compress_without_model_distils_the_distill_model_from_itself(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ws.root)
    res = tvc("compress", "--prune", "0.3", "--distill", "model", "--data", "folder",
              "--epochs", "1", "--batch-size", "4")  # fmt: skip
    assert res.code == 0, res.stderr[-800:]
    art = load_artifact(ws.root / "model-compressed")  # -o defaults to <name>-compressed
    assert art.meta["parent"]["path"].endswith("model")
    assert art.meta["metrics"]["compression"]["teacher"] == "source"


def test_a_random_teacher_is_refused_before_any_data_is_read(ws: Workspace) -> None:
    res = tvc("compress", "--prune", "0.3", "--distill", "vit_pico", "--data",
              ws.p("no-such-data"), "-o", ws.p("out"))  # fmt: skip
    line = assert_one_line_error(res, 2, r"random")
    assert "no-such-data" not in line  # refused at once, before the data was looked at
    assert not (ws.root / "out").exists()


def test_bare_int8_calibrates_on_the_lineage_data_or_says_what_to_add(ws: Workspace) -> None:
    # the fixture model recorded no data: one line saying to add --calib
    res = tvc("export", ws.model, "--int8", "-o", ws.p("x"))
    assert_one_line_error(res, 2, r"--calib")
    assert not (ws.root / "x").exists()
    # a compressed model recorded its --data: bare --int8 is static INT8 calibrated on it
    res = tvc("compress", ws.model, "--prune", "0.3", "--data", ws.folder, "-o", ws.p("c"))
    assert res.code == 0, res.stderr[-800:]
    res = tvc("export", ws.p("c"), "--int8", "--int8-budget", "100", "-o", ws.p("e"))
    assert res.code == 0, res.stderr[-800:]
    variants = load_artifact(ws.root / "e").meta["variants"]
    (int8,) = [v for v in variants.values() if v.get("precision") == "int8-qdq"]
    assert str(ws.folder) in str(int8["calibration"])
