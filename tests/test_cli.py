"""CLI behaviour: every user mistake is one line on stderr and a non-zero exit code."""

import json

import pytest
from click.testing import CliRunner

from tvc.cli import cli


@pytest.fixture()
def run():
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return _run


def _one_error_line(result, code, pattern):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    assert pattern in lines[0]
    assert "Traceback" not in result.output


def test_help_and_info(run):
    assert run("--help").exit_code == 0
    r = run("info")
    assert r.exit_code == 0 and "onnxruntime" in r.output and "tensorrt" in r.output


def test_export_and_bench_end_to_end(run, tmp_path):
    r = run("export", "vit_pico", "-o", tmp_path / "e", "--dynamic-batch")
    assert r.exit_code == 0, r.output
    assert "parity vs PyTorch" in r.output
    r = run(
        "bench",
        tmp_path / "e",
        "--batch",
        "1,2",
        "--threads",
        "1",
        "--min-runs",
        "5",
        "--min-time-s",
        "0",
        "--warmup-s",
        "0",
        "--json",
        tmp_path / "b.json",
    )
    assert r.exit_code == 0, r.output
    records = json.loads((tmp_path / "b.json").read_text())
    assert [rec["batch"] for rec in records] == [1, 2]
    rec = records[0]
    assert rec["schema"] == "tvc.bench/1" and rec["backend"] == "ort" and rec["threads"] == 1
    assert rec["latency_ms"]["n"] >= 5 and rec["latency_ms"]["p50"] > 0
    assert rec["size_bytes"] > 0 and rec["peak_rss_mb"] > 0
    assert rec["environment"]["cpu_count"] >= 1 and "onnxruntime" in rec["environment"]["packages"]
    assert rec["command"].startswith("tvc bench") or "bench" in rec["command"]


def test_bench_torch_backend(run):
    r = run(
        "bench",
        "vit_pico",
        "--backend",
        "torch",
        "--threads",
        "1",
        "--min-runs",
        "3",
        "--min-time-s",
        "0",
        "--warmup-s",
        "0",
    )
    assert r.exit_code == 0, r.output
    assert "torch" in r.output


def test_unknown_model(run, tmp_path):
    _one_error_line(run("export", "deit_smal", "-o", tmp_path / "o"), 2, "did you mean")


def test_missing_file_and_not_an_artifact(run, tmp_path):
    _one_error_line(run("bench", tmp_path / "nope.onnx"), 2, "")
    (tmp_path / "d").mkdir()
    _one_error_line(
        run("export", tmp_path / "d", "-o", tmp_path / "o"), 2, "neither a tvc artifact"
    )


def test_corrupt_onnx(run, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    _one_error_line(run("bench", tmp_path / "bad.onnx"), 2, "cannot load")


def test_bad_option_values(run, tmp_path):
    _one_error_line(run("export", "vit_pico", "-o", tmp_path / "o", "--opset", "11"), 2, "opset")
    _one_error_line(run("bench", tmp_path, "--batch", "1,x"), 2, "--batch")
    assert not (tmp_path / "o").exists()


def test_bad_shape_batch_for_fixed_export(run, tmp_path):
    assert run("export", "vit_pico", "-o", tmp_path / "e").exit_code == 0
    _one_error_line(
        run("bench", tmp_path / "e", "--batch", "4", "--min-runs", "1", "--min-time-s", "0"),
        2,
        "--dynamic-batch",
    )


def test_model_name_with_ort_backend_says_export_first(run):
    _one_error_line(run("bench", "vit_pico"), 2, "tvc export vit_pico")


def test_tampered_artifact(run, tmp_path):
    assert run("export", "vit_pico", "-o", tmp_path / "e").exit_code == 0
    with open(tmp_path / "e" / "model.onnx", "ab") as f:
        f.write(b"x")
    _one_error_line(run("bench", tmp_path / "e"), 2, "sha256 mismatch")


def test_weights_missing(run, tmp_path):
    _one_error_line(
        run("export", "vit_pico", "-o", tmp_path / "o", "--weights", tmp_path / "w.pth"),
        2,
        "does not exist",
    )
