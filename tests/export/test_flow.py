"""The export stage for classifiers: one flow, variants through the task adapter, the INT8 gate
on the task's metric, TensorRT readiness judged once per variant."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tvc.errors import ConfigError, ParityError
from tvc.export.parity import outputs_parity, require_outputs_parity
from tvc.export.trt_rules import trt_readiness
from tvc.stages import get_stage
from tvc.tasks.classification import ClassificationTask

STAGE = get_stage("export")


def export(**values):
    return STAGE.run(STAGE.config.parse(values))


@pytest.fixture
def short_gate(monkeypatch):
    """The gate and the FP32 evaluation on 64 images instead of 2000."""
    monkeypatch.setattr(ClassificationTask, "export_eval_limit", 64)


def test_static_int8_is_gated_on_top1_and_judged_for_tensorrt_once(tmp_path, short_gate):
    art = export(model="vit_pico", output=str(tmp_path / "e"), int8="static",
                 calib="fashion-mnist", calib_size=32, eval_data="fashion-mnist",
                 no_simplify=True)  # fmt: skip
    v = art.meta["variants"]["model.int8.onnx"]
    assert v["precision"] == "int8-qdq" and v["metric"] == "top1"
    assert v["eval_data"]["split"] == "test" and v["eval_data"]["n"] == 64
    assert v["calibration"]["data"] == "fashion-mnist" and v["calibration"]["size"] == 32
    assert v["budget_met"] or v["float_layers"]
    assert v["trt_readiness"] == {"ok": True, "violations": []}
    assert "trt_ready" not in json.dumps(v) and "trt_violations" not in json.dumps(v)
    assert set(v["latency_ms"]) >= {"fp32_p50", "int8_p50", "speedup"}
    assert 0 <= v["parity_vs_fp32"]["top1_agreement"] <= 1
    # --eval-data also measured the FP32 graph, on the same test images.
    assert art.meta["metrics"]["accuracy"]["n"] == 64
    assert art.meta["metrics"]["top1"] == pytest.approx(v["accuracy"]["fp32"], abs=1e-3)
    assert art.meta["task"] == "classification" and art.meta["spec"]["stage"] == "export"


def test_onnx_artifact_source_is_copied_and_gets_a_dynamic_variant(tmp_path, pico_onnx):
    art = export(model=str(pico_onnx.path), output=str(tmp_path / "d"), int8="dynamic")
    src = (pico_onnx.path / "model.onnx").read_bytes()
    assert (art.path / "model.onnx").read_bytes() == src
    v = art.meta["variants"]["model.int8dyn.onnx"]
    assert v["precision"] == "int8-dynamic" and v["parity_vs_fp32"]["n"] == 8
    ready = v["trt_readiness"]
    assert ready["ok"] is False and any("MatMulInteger" in s for s in ready["violations"])


def test_unsigned_weights_are_a_dynamic_int8_choice_refused_for_static(tmp_path, pico_onnx):
    art = export(model=str(pico_onnx.path), output=str(tmp_path / "u"), int8="dynamic",
                 int8_weight_range="unsigned")  # fmt: skip
    v = art.meta["variants"]["model.int8dyn.onnx"]
    assert v["weight_range"] == "unsigned" and v["weights"].startswith("uint8")
    with pytest.raises(ConfigError, match="unsigned is for --int8 dynamic"):
        export(model="vit_pico", output=str(tmp_path / "s"), int8="static",
               calib="fashion-mnist", int8_weight_range="unsigned")  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_static_int8_of_a_classifier_needs_calibration_data(tmp_path):
    with pytest.raises(ConfigError, match="static INT8 needs calibration data"):
        export(model="vit_pico", output=str(tmp_path / "s"), int8="static")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(("option", "value"), [("pixel_mask", True), ("sampling", "grid")])
def test_classifiers_refuse_detector_options(tmp_path, option, value):
    with pytest.raises(ConfigError, match="does not apply to the classifier vit_pico"):
        export(model="vit_pico", output=str(tmp_path / "c"), **{option: value})


def test_trt_batch_profile_is_checked_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        STAGE.config.parse({"model": "vit_pico", "output": str(tmp_path / "t"), "trt": True,
                            "opt_batch": 9, "max_batch": 8})  # fmt: skip


def test_trt_readiness_reads_artifacts_of_both_layouts():
    assert trt_readiness({"trt_readiness": {"ok": True, "violations": []}})["ok"] is True
    old = trt_readiness({"trt_ready": False, "trt_violations": ["'q': zero point 128 is not 0"]})
    assert old == {"ok": False, "violations": ["'q': zero point 128 is not 0"]}
    assert trt_readiness({"precision": "fp16"}) is None


def test_output_parity_covers_every_output_and_fails_loudly():
    task = ClassificationTask()
    ref = {"logits": np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)}
    good = outputs_parity(task, [ref], [ref], atol=1e-4, rtol=1e-3)
    assert good["ok"] and good["top1_agreement"] == 1.0 and good["max_abs_diff"] == 0.0
    bad = outputs_parity(task, [ref], [{"logits": ref["logits"][:, ::-1].copy()}],
                         atol=1e-4, rtol=1e-3)  # fmt: skip
    assert not bad["ok"] and bad["top1_agreement"] == 0.0
    with pytest.raises(ParityError, match="does not match PyTorch") as err:
        require_outputs_parity(bad, "the exported classifier", task.parity_hint)
    assert err.value.exit_code == 3 and "--opset" in err.value.fix


def test_calibration_data_must_be_of_the_models_task(tmp_path):
    with pytest.raises(ConfigError, match="--calib fashion-mnist-det is detection data"):
        export(model="vit_pico", output=str(tmp_path / "k"), int8="static",
               calib="fashion-mnist-det")  # fmt: skip
    with pytest.raises(ConfigError, match="--eval-data is empty"):
        export(model="vit_pico", output=str(tmp_path / "k"), eval_data=" ")


def test_the_export_command_prints_the_int8_drop_in_the_tasks_metric(tmp_path, short_gate):
    from click.testing import CliRunner

    from tvc.cli import cli

    res = CliRunner().invoke(cli, ["export", "vit_pico", "-o", str(tmp_path / "e"), "--int8",
                                   "static", "--calib", "fashion-mnist", "--calib-size", "32",
                                   "--no-simplify"])  # fmt: skip
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.strip().startswith("model.int8.onnx"))
    assert "int8-qdq" in line and "top1 drop" in line and "points" in line
