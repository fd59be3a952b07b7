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
