"""The INT8 gate of `tvc export`: data whose labels do not fit the head, the gate's sample size,
truthful calibration counts, the slower-than-FP32 warning and the progress display."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tvc.errors import ConfigError
from tvc.export.flow import warn_if_slower
from tvc.export.quantize import progress
from tvc.progress import Progress, counted
from tvc.stages import get_stage

STAGE = get_stage("export")


def export(**values):
    return STAGE.run(STAGE.config.parse(values))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class image folder (8 noise images per class): labels that do not fit a 10-class head."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_gate_measures_agreement_when_labels_do_not_fit_the_head(tmp_path, folder):
    from click.testing import CliRunner

    from tvc.cli import cli

    res = CliRunner().invoke(cli, ["export", "vit_pico", "-o", str(tmp_path / "e"),
                                   "--int8", "static", "--calib", str(folder),
                                   "--calib-size", "64", "--no-simplify"])  # fmt: skip
    assert res.exit_code == 0, res.output
    from tvc.artifact import load_artifact

    v = load_artifact(tmp_path / "e").meta["variants"]["model.int8.onnx"]
    assert v["metric"] == "agreement" and v["accuracy"]["fp32"] == 100.0
    assert "3 classes but the model's head has 10" in v["gate_note"]
    # the real count everywhere: 22 train images (a pool folder holds 10% out for val)
    assert v["calibration"]["size"] == 22 and v["calibration"]["requested"] == 64
    assert "asked for 64 but the split holds only 22" in res.output
    assert "holds only 22" in v["calibration"]["note"]
    line = next(x for x in res.output.splitlines() if x.strip().startswith("model.int8.onnx"))
    assert "agreement drop" in line and "x FP32 speed" in line


def test_eval_data_with_other_classes_is_refused(tmp_path, folder):
    from click.testing import CliRunner

    from tvc.cli import cli

    with pytest.raises(ConfigError, match="has 3 classes but the model's head has 10"):
        export(model="vit_pico", output=str(tmp_path / "r"), int8="dynamic",
               eval_data=str(folder))  # fmt: skip
    res = CliRunner().invoke(cli, ["export", "vit_pico", "-o", str(tmp_path / "s"),
                                   "--eval-data", str(folder)])  # fmt: skip
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: --eval-data")
    assert not (tmp_path / "s").exists()


def test_gate_samples_sets_the_gate_size(tmp_path):
    art = export(model="vit_pico", output=str(tmp_path / "g"), int8="static",
                 calib="fashion-mnist", calib_size=16, gate_samples=24,
                 no_simplify=True)  # fmt: skip
    v = art.meta["variants"]["model.int8.onnx"]
    assert v["eval_data"]["n"] == 24 and v["eval_data"]["split"] == "val"
    assert v["calibration"]["size"] == 16
    with pytest.raises(Exception, match=r"gate_samples|gate-samples"):
        STAGE.config.parse({"model": "vit_pico", "gate_samples": 0})


def test_a_slower_int8_variant_is_warned_with_speedup_and_fidelity(caplog):
    slow = {"precision": "int8-qdq", "latency_ms": {"speedup": 0.85},
            "parity_vs_fp32": {"agreement": 0.97}}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tvc"):
        warn_if_slower("model.int8.onnx", slow)
    assert slow["slower_than_fp32"] is True
    assert "SLOWER THAN FP32" in caplog.text and "0.85x" in caplog.text and "97.0%" in caplog.text
    assert "try --int8 dynamic" in caplog.text
    caplog.clear()  # a slow dynamic variant is not told to try what it already is
    with caplog.at_level(logging.WARNING, logger="tvc"):
        warn_if_slower("model.int8dyn.onnx", {**slow, "precision": "int8-dynamic"})
    assert "SLOWER THAN FP32" in caplog.text and "--int8 dynamic" not in caplog.text
    fast = {"latency_ms": {"speedup": 1.6}, "parity_vs_fp32": {"agreement": 0.99}}
    caplog.clear()
    warn_if_slower("model.int8.onnx", fast)
    assert "slower_than_fp32" not in fast and not caplog.text


def test_progress_steps_report_through_the_one_display(caplog, monkeypatch):
    lines: list[str] = []

    class Plain(Progress):  # tvc's display in a pipe, lines kept
        def __init__(self, enabled: bool = True) -> None:
            super().__init__(enabled, interactive=False, emit=lines.append, every_frac=0.5,
                             min_gap_s=0.0)  # fmt: skip

    monkeypatch.setattr(progress, "Progress", Plain)
    shown = progress.shown()
    with (
        caplog.at_level(logging.INFO, logger="tvc"),
        shown,
        progress.step("calibrating", 10) as bar,
    ):
        counted(lambda x: x, bar)(np.zeros((4, 3)))
        bar.advance(6)
    assert "calibrating" in caplog.text
    assert lines and lines[-1].startswith("calibrating 100% (10/10)"), lines
    lines.clear()
    with progress.step("not shown", 3) as bar:  # outside shown(): logged, no display
        bar.advance(3)
    assert not lines
