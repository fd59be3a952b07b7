"""An exported Image GPT artifact is measured through the shared eval and bench stages: its
single-step decoder graph is not mistaken for a variant of the model."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.runtime.targets import onnx_variants


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("igpt") / "e"
    res = CliRunner().invoke(cli, ["export", "igpt_pico", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_the_decoder_graph_is_not_a_variant(exported):
    assert (exported / "decoder.onnx").is_file()
    assert [v.path.name for v in onnx_variants(str(exported))] == ["model.onnx"]


def test_eval_reports_bits_per_dim_of_the_exported_graph(exported):
    res = CliRunner().invoke(
        cli, ["eval", str(exported), "--data", "fashion-mnist-pixels", "--limit", "16"]
    )
    assert res.exit_code == 0, res.output
    assert "bits/dim" in res.output and "on 16 fashion-mnist test images" in res.output


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, fmnist_dir):
    """igpt_pico exported with static INT8 calibrated on the tiny Fashion-MNIST lookalike,
    plus FP16 and ONNX Runtime's fusions."""
    out = tmp_path_factory.mktemp("igpt") / "q"
    data = f"pixels:fashion-mnist:{fmnist_dir}"
    args = ["export", "igpt_pico", "-o", str(out), "--int8", "--calib", data, "--fp16"]
    res = CliRunner().invoke(cli, [*args, "--ort-optimize", "--calib-size", "24"])
    assert res.exit_code == 0, res.output
    return out


def test_static_int8_of_a_token_model_is_gated_in_bits_per_dim_and_trt_ready(quantized):
    from tvc.artifact import load_artifact

    variants = load_artifact(quantized).meta["variants"]
    int8 = variants["model.int8.onnx"]
    gate = int8["gate"]
    assert gate["metric"] == "bpd" and gate["budget"] == 0.05 and gate["n"] > 0
    assert gate["increase"] == round(gate["int8"] - gate["fp32"], 4) and gate["budget_met"]
    assert int8["calibration"]["sequences"] == 24
    assert int8["trt_readiness"]["ok"], int8["trt_readiness"]["violations"]
    assert int8["parity_vs_fp32"]["n"] > 0
    # the decoder is quantized too, for generation, and its completions compared with FP32's
    dec = variants["decoder.int8.onnx"]
    assert dec["graph"] == "decoder" and dec["trt_readiness"]["ok"]
    assert 0.0 <= dec["completions_vs_fp32"]["token_agreement"] <= 1.0
    assert {"model.fp16.onnx", "model.ort.onnx"} <= set(variants)
    # the INT8 decoder is not a variant of the model for bench / eval
    names = [v.path.name for v in onnx_variants(str(quantized))]
    assert "decoder.int8.onnx" not in names and "model.int8.onnx" in names


def test_generate_runs_the_int8_decoder_and_names_the_ones_there(quantized, fmnist_dir, tmp_path):
    data = f"pixels:fashion-mnist:{fmnist_dir}"
    base = ["generate", str(quantized), "--prefix-rows", "4", "-n", "2", "--data", data]
    png = str(tmp_path / "g.png")
    res = CliRunner().invoke(cli, [*base, "--decoder", "decoder.int8.onnx", "-o", png])
    assert res.exit_code == 0, res.output
    assert "[ort decoder.int8.onnx]" in res.output and (tmp_path / "g.png").is_file()
    res = CliRunner().invoke(cli, [*base, "--decoder", "decoder.fp8.onnx"])
    assert res.exit_code == 2
    assert "has no decoder.fp8.onnx" in res.output and "decoder.int8.onnx" in res.output


def test_dynamic_int8_of_a_token_model_quantizes_both_graphs(tmp_path):
    out = tmp_path / "d"
    res = CliRunner().invoke(cli, ["export", "igpt_pico", "-o", str(out), "--int8", "dynamic"])
    assert res.exit_code == 0, res.output
    assert (out / "model.int8dyn.onnx").is_file() and (out / "decoder.int8dyn.onnx").is_file()
    assert "random inputs" in res.output  # no calibration data: parity on seeded tokens


@pytest.mark.parametrize("flag", [["--smooth-alpha", "0.3"], ["--calib-method", "entropy"]])
def test_image_only_int8_options_are_refused_for_a_token_model(flag, tmp_path):
    res = CliRunner().invoke(
        cli, ["export", "igpt_pico", "-o", str(tmp_path / "x"), "--int8", *flag]
    )
    assert res.exit_code == 2 and f"{flag[0]} does not apply" in res.output
    assert not (tmp_path / "x").exists()


def test_bench_records_bits_per_dim_probe_and_generation_speed(quantized, fmnist_dir, tmp_path):
    from tvc.records import read_records

    out = tmp_path / "b.json"
    args = [
        "bench",
        str(quantized),
        "--data",
        f"pixels:fashion-mnist:{fmnist_dir}",
        "--limit",
        "10",
    ]
    fast = ["--min-time-s", "0", "--max-time-s", "0", "--min-runs", "3", "--rounds", "1"]
    res = CliRunner().invoke(cli, [*args, *fast, "--warmup-s", "0", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "bits/dim" in res.output and "ms/image" in res.output  # the terminal table
    recs = {r.precision: r for r in read_records(out)}
    assert {"fp32", "int8-qdq", "fp16"} <= set(recs)
    assert recs["fp32"].pixels.n == 10 and recs["fp32"].pixels.bpd > 0
    assert recs["fp32"].quality.name == "probe"  # not fine-tuned: the probe is its accuracy
    # each graph generates with its own decoder; FP16 has none (generation stays FP32)
    assert recs["fp32"].generation.decoder == "decoder.onnx"
    assert recs["int8-qdq"].generation.decoder == "decoder.int8.onnx"
    assert recs["fp16"].generation is None
    g = recs["fp32"].generation
    assert g.tokens == 64 and g.same_tokens and g.tokens_per_s > 0
    assert g.ms_per_image == pytest.approx(1e3 * g.tokens / g.tokens_per_s, rel=0.05)
    report = tmp_path / "r.md"
    res = CliRunner().invoke(cli, ["report", str(out), "-o", str(report)])
    assert res.exit_code == 0, res.output
    text = report.read_text()
    assert "Bits/dim" in text and "Gen tok/s" in text and "Probe %" in text


def test_the_gate_on_eval_data_holds_int8_to_the_fp32_bits_per_dim_the_artifact_records(
    fmnist_dir, tmp_path
):
    from tvc.artifact import load_artifact

    data = f"pixels:fashion-mnist:{fmnist_dir}"
    out = tmp_path / "e"
    args = ["export", "igpt_pico", "-o", str(out), "--int8", "--calib", data, "--eval-data", data]
    res = CliRunner().invoke(cli, [*args, "--calib-size", "16"])
    assert res.exit_code == 0, res.output
    meta = load_artifact(out).meta
    gate = meta["variants"]["model.int8.onnx"]["gate"]
    assert gate["split"] == "test" and gate["n"] == 20  # the lookalike's 20 test images
    assert gate["fp32"] == meta["metrics"]["bpd"]  # one FP32 measurement for both
