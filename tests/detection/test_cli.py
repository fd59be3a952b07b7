"""`tvc export` of DETR and Deformable DETR: the one export flow, through the detection task."""

from __future__ import annotations

from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli


def test_export_deformable_detr_with_grid_sampling(tmp_path):
    out = tmp_path / "ddetr"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "deformable_detr_pico",
            "-o",
            str(out),
            "--input-size",
            "64",
            "--sampling",
            "grid",
            "--no-simplify",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model.onnx: parity vs PyTorch" in result.output
    art = load_artifact(out)
    assert art.meta["metrics"]["sampling"] == "grid" and art.meta["task"] == "detection"
    assert art.meta["io"]["inputs"][0]["shape"] == [1, 3, 64, 64]


def test_export_detr_with_dynamic_int8(tmp_path):
    import torch

    torch.manual_seed(0)  # detr_pico's random weights: the same model whatever ran before
    out = tmp_path / "detr"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "detr_pico",
            "-o",
            str(out),
            "--input-size",
            "64",
            "--no-simplify",
            "--int8",
            "dynamic",
            "--calib-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "model.int8dyn.onnx: int8-dynamic" in result.output
    variant = load_artifact(out).meta["variants"]["model.int8dyn.onnx"]
    assert variant["parity_vs_fp32"]["class_agreement"] > 0.9
    # tvc eval on detection data: COCO mAP of both ONNX variants
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(out),
            "--data",
            "fashion-mnist-det",
            "--limit",
            "6",
            "--json",
            str(tmp_path / "eval.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "detr_pico fp32: mAP" in result.output
    assert "detr_pico int8-dynamic: mAP" in result.output
    assert "on 6 images of the test split of fashion-mnist-det" in result.output


def test_export_refuses_what_detectors_do_not_support(tmp_path):
    result = CliRunner().invoke(cli, ["export", "detr_pico", "-o", str(tmp_path / "x"), "--trt"])
    assert result.exit_code == 2
    assert "error: --trt does not apply to the detector detr_pico" in result.output
    assert "not supported for detectors yet" in result.output
    result = CliRunner().invoke(
        cli, ["export", "detr_pico", "-o", str(tmp_path / "y"), "--pixel-mask", "--int8", "dynamic"]
    )
    assert result.exit_code == 2 and "pixel_mask" in result.output
