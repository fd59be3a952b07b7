"""Detector exports: parity in box pixels / IoU / scores as the model scores them, a warning
over tolerance, the quality figures on the terminal, and options refused rather than ignored."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli
from tvc.errors import ConfigError
from tvc.eval.detection_parity import box_parity, exceeded, tolerance
from tvc.models.info import ModelInfo
from tvc.stages.export import Config
from tvc.tasks.detection import DetectionTask


def _info(no_object_class: bool, size: int = 100) -> ModelInfo:
    return ModelInfo(name="d", family="detr", arch="detr", kwargs={}, num_classes=1,
                     input_size=(3, size, size), mean=(0.5,) * 3, std=(0.5,) * 3,
                     weights="random", extra={"no_object_class": no_object_class})  # fmt: skip


def test_one_class_sigmoid_scores_differ_where_a_softmax_would_say_zero():
    """Deformable DETR with one class: logits (B, Q, 1). A softmax over that one column is
    always 1 (the old record: score diff 0); the sigmoid shows the real difference."""
    ref = {"logits": np.zeros((1, 2, 1), np.float32), "boxes": np.full((1, 2, 4), 0.5, np.float32)}
    got = {"logits": np.full((1, 2, 1), 2.0, np.float32), "boxes": ref["boxes"].copy()}
    rec = DetectionTask().agreement(ref, got, info=_info(no_object_class=False))
    assert rec["score"] == "sigmoid per class"
    assert rec["scores_max_abs_diff"] == pytest.approx(1 / (1 + np.exp(-2.0)) - 0.5)
    # without the model's facts a one-column head is still read as a sigmoid one
    assert DetectionTask().agreement(ref, got)["scores_max_abs_diff"] > 0.3


def test_detr_scores_are_a_softmax_over_every_column():
    ref = {"logits": np.array([[[2.0, 0.0, 0.0]]], np.float32),
           "boxes": np.full((1, 1, 4), 0.5, np.float32)}  # fmt: skip
    got = {"logits": np.array([[[2.0, 0.0, 1.0]]], np.float32), "boxes": ref["boxes"].copy()}
    rec = box_parity(ref, got, sigmoid=False, width=10, height=10)
    e = np.exp([2.0, 0.0, 0.0])
    f = np.exp([2.0, 0.0, 1.0])
    assert rec["scores_max_abs_diff"] == pytest.approx(abs(f[2] / f.sum() - e[2] / e.sum()))


def test_box_errors_are_in_input_pixels_on_confident_queries():
    """Query 0 is confident and its box moves by 0.02 of a 200 x 100 input in x: 4 px on x0
    and x1; query 1 is not confident and its large error does not count."""
    logits = np.array([[[5.0, -5.0], [-5.0, -5.0]]], np.float32)  # sigmoid: q0 0.99, q1 0.007
    ref_b = np.array([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]], np.float32)
    got_b = ref_b.copy()
    got_b[0, 0, 0] += 0.02
    got_b[0, 1] = [0.1, 0.1, 0.1, 0.1]
    rec = box_parity({"logits": logits, "boxes": ref_b}, {"logits": logits, "boxes": got_b},
                     sigmoid=True, width=200, height=100)  # fmt: skip
    assert rec["boxes_compared"] == 1 and rec["boxes_basis"].startswith("reference queries")
    assert rec["boxes_px_max_abs_diff"] == pytest.approx(4.0, abs=1e-3)
    assert rec["boxes_px_mean_abs_diff"] == pytest.approx(2.0, abs=1e-3)
    assert rec["iou_mean"] == pytest.approx(36 / 44, abs=1e-3)  # 40x20 boxes shifted by 4 px
    assert rec["detection_score_mean_abs_diff"] == 0.0  # the same logits
    # an untrained reference (no confident query): each image's top query stands in
    flat = np.full((1, 2, 2), -1.0, np.float32)
    rec = box_parity({"logits": flat, "boxes": ref_b}, {"logits": flat, "boxes": got_b},
                     sigmoid=True, width=200, height=100)  # fmt: skip
    assert rec["boxes_compared"] == 1 and rec["boxes_basis"].startswith("each image's top")


def test_tolerance_scales_with_the_input_and_names_each_miss():
    lim = tolerance("int8", 400, 400)
    assert (
        lim["boxes_px_mean_abs_diff"] == 4.0
        and tolerance("int8", 64, 64)["boxes_px_mean_abs_diff"] == 1.0
    )  # at least a pixel
    assert tolerance("fp32", 64, 64) is None
    rec = {"boxes_px_mean_abs_diff": 5.0, "boxes_px_max_abs_diff": 9.0, "iou_mean": 0.8,
           "detection_score_mean_abs_diff": 0.2, "score": "sigmoid per class"}  # fmt: skip
    misses = exceeded(rec, lim)
    assert len(misses) == 3 and "5.00 px > 4 px" in misses[0] and "IoU 0.800" in misses[1]
    assert exceeded({**rec, "boxes_px_mean_abs_diff": 1.0, "iou_mean": 0.95,
                     "detection_score_mean_abs_diff": 0.01}, lim) == []  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8-budget", "1"], "--int8-budget applies to static INT8 only"),
        (["--int8", "dynamic", "--calib-method", "entropy"], "--calib-method applies to static"),
        (["--int8", "dynamic", "--allow-accuracy-drop"], "--allow-accuracy-drop applies to"),
        (["--int8-ops", "all"], "--int8-ops applies to INT8 only"),
        (["--max-batch", "4"], "--max-batch applies to a TensorRT build only"),
        (["--sampling", "grid"], "--sampling grid applies to Deformable DETR only"),
        (["--trt"], "--trt does not apply to the detector"),
        (["--dynamic-batch"], "not supported for detectors yet"),
        (["--fp16", "--pixel-mask"], "the FP16 converter takes models with one input"),
    ],
)
def test_export_options_that_would_do_nothing_are_refused(tmp_path, args, message):
    out = tmp_path / "x"
    result = CliRunner().invoke(
        cli, ["export", "detr_pico", "-o", str(out), "--input-size", "64", "--no-simplify", *args]
    )
    assert result.exit_code == 2, result.output
    assert f"error: {message}" in result.output or message in result.output
    assert len([x for x in result.output.splitlines() if x.startswith("error:")]) == 1
    assert "Traceback" not in result.output and not out.exists()


def test_static_int8_options_still_apply_to_static_int8():
    cfg = Config(model="detr_pico", output="o", int8="static", calib_method="percentile",
                 int8_budget=1.0, int8_ops="all", allow_accuracy_drop=True)  # fmt: skip
    assert cfg.calib_method == "percentile" and cfg.int8_ops == "all"
    with pytest.raises(ConfigError, match="applies to static INT8 only"):
        Config(model="detr_pico", output="o", int8="dynamic", int8_budget=1.0)


def test_export_prints_and_records_fp16_and_int8_quality(tmp_path, monkeypatch):
    """FP16 now works for detectors. Both variants record parity in box pixels / IoU / scores
    against their tolerance; the gate's mAP before/after and the FP32 mAP are printed."""
    monkeypatch.setattr(DetectionTask, "export_eval_limit", 6)
    out = tmp_path / "q"
    args = ["export", "deformable_detr_pico", "-o", str(out), "--input-size", "64",
            "--no-simplify", "--fp16", "--int8", "--calib", "fashion-mnist-det", "--calib-size",
            "8", "--eval-data", "fashion-mnist-det"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "model.onnx: mAP " in text and "(fashion-mnist-det test split)" in text
    assert "model.fp16.onnx: fp16" in text and "model.int8.onnx: int8-qdq" in text
    assert "map: FP32 " in text and "budget 0.5 points" in text
    assert text.count("parity vs FP32 on ") == 2 and " px mean / " in text and "IoU " in text
    art = load_artifact(out)
    for fname, precision in (("model.fp16.onnx", "fp16"), ("model.int8.onnx", "int8")):
        p = art.meta["variants"][fname]["parity_vs_fp32"]
        assert p["score"] == "sigmoid per class" and p["boxes_compared"] > 0
        assert p["tolerance"] == tolerance(precision, 64, 64)
        assert p["within_tolerance"] is True and "warning" not in p
    assert art.meta["variants"]["model.fp16.onnx"]["parity_vs_fp32"]["iou_mean"] > 0.99
    assert art.meta["metrics"]["map"] == art.meta["metrics"]["detection"]["map"]


def test_a_variant_outside_its_tolerance_is_warned_about_and_recorded(tmp_path, monkeypatch):
    """Tight limits stand in for a bad INT8 model: the export still succeeds (the mAP gate
    decides), but the terminal and artifact.json say which figure missed."""
    from tvc.eval import detection_parity

    strict = {"box_fraction": 0.0, "iou_mean": 1.0, "detection_score_mean_abs_diff": 0.0}
    monkeypatch.setitem(detection_parity.TOLERANCES, "int8", strict)
    monkeypatch.setitem(detection_parity.MIN_PX, "int8", 0.0)
    monkeypatch.setattr(DetectionTask, "export_eval_limit", 4)
    out = tmp_path / "w"
    args = ["export", "detr_pico", "-o", str(out), "--input-size", "64", "--no-simplify",
            "--int8", "--calib", "fashion-mnist-det", "--calib-size", "4"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "warning: INT8 PARITY OUTSIDE TOLERANCE: model.int8.onnx differs" in result.output
    assert "-- OUTSIDE TOLERANCE" in result.output  # and the summary line says so
    p = load_artifact(out).meta["variants"]["model.int8.onnx"]["parity_vs_fp32"]
    assert p["within_tolerance"] is False and "mean detection score difference" in p["warning"]


def test_a_fixed_batch_of_two_exports_fp16_and_static_int8(tmp_path, monkeypatch):
    """The INT8 variant's indicative latency ran at batch 1, which a --batch 2 graph refuses."""
    monkeypatch.setattr(DetectionTask, "export_eval_limit", 4)
    out = tmp_path / "b2"
    args = ["export", "detr_pico", "-o", str(out), "--input-size", "64", "--no-simplify",
            "--batch", "2", "--fp16", "--int8", "--calib", "fashion-mnist-det", "--calib-size",
            "4"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    v = load_artifact(out).meta["variants"]["model.int8.onnx"]
    assert v["latency_ms"]["batch"] == 2 and v["parity_vs_fp32"]["boxes_compared"] > 0
