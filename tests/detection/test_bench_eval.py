"""`tvc bench` and `tvc eval` of detectors: model names, the trivial baseline, small splits."""

from __future__ import annotations

from click.testing import CliRunner

from tvc.cli import cli

FAST_BENCH = ["--min-time-s", "0", "--max-time-s", "0", "--rounds", "1", "--warmup-s", "0",
              "--min-runs", "2"]  # fmt: skip


def test_bench_of_a_detector_name_is_treated_like_a_classifier_name():
    """A detector config name is known (it used to be 'unknown model'): with the default ONNX
    Runtime backend it is refused as a classifier name is, with what to run instead."""
    for name in ("detr_micro", "vit_tiny"):
        result = CliRunner().invoke(cli, ["bench", name, "--data", "fashion-mnist-det"])
        assert result.exit_code == 2, result.output
        assert f"error: {name} is a model name; ONNX Runtime needs an exported model" in (
            result.output
        )
        assert "unknown model" not in result.output
    result = CliRunner().invoke(cli, ["bench", "detr_micrp"])
    assert result.exit_code != 0 and "unknown model 'detr_micrp'" in result.output


def test_bench_of_a_detector_name_on_torch_builds_it_and_says_so(caplog):
    result = CliRunner().invoke(
        cli,
        ["bench", "detr_pico", "--backend", "torch", "--data", "fashion-mnist-det",
         "--limit", "4", *FAST_BENCH],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "randomly initialised" in caplog.text + result.output
    assert "detr_pico fp32" in result.output and "mAP" in result.output
