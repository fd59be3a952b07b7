"""Outlier-aware static INT8: SmoothQuant scale migration on a ViT given outliers on purpose."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from tvc.data.base import ImageSet
from tvc.errors import ConfigError
from tvc.export.quantize import QuantConfig, quantize_static
from tvc.export.quantize.graph import input_spec, load_onnx, prepare
from tvc.export.quantize.scoring import predict_array, session
from tvc.export.quantize.smooth import smooth_layernorms

OUTLIERS = [3, 17, 40]  # channels made 50x larger after every LayerNorm
FACTOR = 50.0


def with_outliers(pico):
    """The same function with activation outliers: each norm's output channels OUTLIERS scaled
    up and the next Linear's input columns scaled down by the same factor."""
    loaded = copy.deepcopy(pico)
    with torch.no_grad():
        for blk in loaded.model.blocks:
            for norm, linear in ((blk.norm1, blk.attn.qkv), (blk.norm2, blk.mlp.fc1)):
                norm.weight[OUTLIERS] *= FACTOR
                norm.bias[OUTLIERS] *= FACTOR
                linear.weight[:, OUTLIERS] /= FACTOR
    return loaded


@pytest.fixture(scope="module")
def outlier_onnx(tmp_path_factory, pico):
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    loaded = with_outliers(pico)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), pico.model(x), atol=1e-4)  # same function
    out = tmp_path_factory.mktemp("outliers") / "exported"
    return export_loaded(loaded, out, OnnxExportConfig(dynamic_batch=True)).path / "model.onnx"


@pytest.fixture(scope="module")
def calib():
    x = np.random.default_rng(0).standard_normal((48, 3, 32, 32)).astype(np.float32)
    return ImageSet.from_arrays(x, np.zeros(48, np.int64), name="noise", split="train")


def test_smoothing_keeps_the_function_and_flattens_the_outliers(outlier_onnx, calib):
    model = prepare(load_onnx(outlier_onnx), gemm="split_bias")
    spec = input_spec(model)
    x = calib.take(np.arange(16))[0]
    smoothed, report = smooth_layernorms(model, x, spec, 0.5)
    assert len(report["smoothed"]) == 4  # norm1 -> qkv and norm2 -> fc1 of both blocks
    assert report["max_outlier_ratio"] > 20  # the outliers were seen
    ref, got = predict_array(session(model), x), predict_array(session(smoothed), x)
    assert np.allclose(ref, got, atol=1e-4, rtol=1e-4)
    onnx.checker.check_model(smoothed)


def test_smoothing_restores_int8_fidelity_lost_to_outliers(tmp_path, outlier_onnx, calib):
    nmse = {}
    for alpha in (0.0, 0.5):
        cfg = QuantConfig(calib_size=48, smooth_alpha=alpha)
        report = quantize_static(outlier_onnx, tmp_path / f"a{alpha}.onnx", calib, cfg)
        nmse[alpha] = report["parity"]["nmse"]
        assert (report["smoothing"]["smoothed"] != []) == (alpha > 0)
    # naive static INT8 (one scale per tensor) is swamped by the 50x channels; smoothing is not
    assert nmse[0.5] * 4 < nmse[0.0]


def test_smooth_alpha_outside_its_range_is_refused():
    with pytest.raises(ConfigError, match="smooth-alpha"):
        QuantConfig(smooth_alpha=1.5).validate()


def test_smoothing_reaches_through_the_reshapes_of_a_batch1_simplified_graph(tmp_path, pico):
    """onnxslim turns a batch-1 MatMul into Reshape -> Gemm -> Reshape: still smoothed."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    path = export_loaded(with_outliers(pico), tmp_path / "b1", OnnxExportConfig()).path
    model = prepare(load_onnx(path / "model.onnx"), gemm="split_bias")
    assert any(n.op_type == "Reshape" for n in model.graph.node)
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    smoothed, report = smooth_layernorms(model, x, input_spec(model), 0.5)
    assert len(report["smoothed"]) == 4 and report["skipped"] == ["/norm/LayerNormalization"]
    ref, got = predict_array(session(model), x), predict_array(session(smoothed), x)
    assert np.allclose(ref, got, atol=1e-4, rtol=1e-4)
