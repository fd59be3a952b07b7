"""ORT CPU rewrites: timm attention -> com.microsoft.Attention, patch Conv -> MatMul (exact)."""

from __future__ import annotations

import collections
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvc.export.ort_rewrites import fuse_attention, patches_as_matmul
from tvc.export.quantize import QuantConfig, quantize_dynamic


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module", params=["sdpa", "explicit"])
def exported(request, tmp_path_factory, pico) -> onnx.ModelProto:
    """vit_pico as tvc exports it, with timm's fused SDPA attention (scale on q and k) and with
    its explicit `q * scale @ k.T` form: both must fuse."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    loaded = copy.deepcopy(pico)
    for block in loaded.model.blocks:
        block.attn.fused_attn = request.param == "sdpa"
    out = tmp_path_factory.mktemp(f"pico-{request.param}") / "exported"
    art = export_loaded(loaded, out, OnnxExportConfig(dynamic_batch=True))
    return onnx.load(str(art.path / "model.onnx"))


def test_every_block_fuses_to_one_attention_node_with_identical_outputs(exported, images):
    fused = copy.deepcopy(exported)
    names = fuse_attention(fused)
    onnx.checker.check_model(fused)
    ops = _ops(fused)
    assert names == ["/blocks/blocks.0/attn/qkv/MatMul", "/blocks/blocks.1/attn/qkv/MatMul"]
    assert ops["Attention"] == 2 and "Softmax" not in ops and "Split" not in ops
    attn = next(n for n in fused.graph.node if n.op_type == "Attention")
    got = {a.name: onnx.helper.get_attribute_value(a) for a in attn.attribute}
    assert got["num_heads"] == 4 and got["scale"] == pytest.approx(16**-0.5, rel=1e-6)
    assert np.abs(_run(fused, images) - _run(exported, images)).max() < 1e-5


def test_a_batch_1_export_with_gemm_projections_fuses_too(tmp_path, pico):
    """A static batch-1 export is simplified by onnxslim into Reshape(2-D) -> Gemm(W, b) for the
    qkv projection and a 2-D Reshape after attention: the fused node reads the 3-D input and
    the kept Reshape flattens its output."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    art = export_loaded(pico, tmp_path / "b1", OnnxExportConfig(batch=1))
    model = onnx.load(str(art.path / "model.onnx"))
    assert "Gemm" in _ops(model)
    fused = copy.deepcopy(model)
    assert len(fuse_attention(fused)) == 2 and "Softmax" not in _ops(fused)
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert np.abs(_run(fused, x) - _run(model, x)).max() < 1e-5


def test_a_kept_node_or_anything_before_the_softmax_leaves_that_block_unfused(exported, images):
    kept = copy.deepcopy(exported)
    assert fuse_attention(kept, keep=["/blocks/blocks.0/attn/qkv/MatMul"]) == [
        "/blocks/blocks.1/attn/qkv/MatMul"
    ]
    masked = copy.deepcopy(exported)  # a bias on the scores (a mask, ToMe's size term)
    softmax = next(n for n in masked.graph.node if n.op_type == "Softmax")
    masked.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(0.5), "bias"))
    masked.graph.node.insert(
        list(masked.graph.node).index(softmax),
        onnx.helper.make_node("Add", [softmax.input[0], "bias"], ["biased"]),
    )
    softmax.input[0] = "biased"
    reference = _run(masked, images)
    assert len(fuse_attention(masked)) == 1 and _ops(masked)["Softmax"] == 1
    assert np.abs(_run(masked, images) - reference).max() < 1e-5


def test_the_patch_conv_becomes_a_matmul_under_its_own_name(exported, images):
    rewritten = copy.deepcopy(exported)
    assert patches_as_matmul(rewritten) == ["/patch_embed/proj/Conv"]
    onnx.checker.check_model(rewritten)
    mm = next(n for n in rewritten.graph.node if n.name == "/patch_embed/proj/Conv")
    assert mm.op_type == "MatMul" and "Conv" not in _ops(rewritten)
    assert np.abs(_run(rewritten, images) - _run(exported, images)).max() < 1e-5
    padded = copy.deepcopy(exported)  # overlapping or padded convs are not patch GEMMs
    conv = next(n for n in padded.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("pads", [1, 1, 1, 1]))
    assert patches_as_matmul(padded) == [] and patches_as_matmul(exported, keep=[conv.name]) == []


def test_dynamic_int8_of_a_fused_graph_runs_qattention_and_honours_excluded_names(
    tmp_path, pico_onnx, images
):
    src = pico_onnx.path / "model.onnx"
    record = quantize_dynamic(src, tmp_path / "plain.onnx", QuantConfig(mode="dynamic"))
    ops = _ops(onnx.load(str(tmp_path / "plain.onnx")))  # model.onnx: attention stays float
    assert ops["Softmax"] == 2 and "QAttention" not in ops and "Conv" not in ops
    assert record["patch_conv_as_matmul"] == ["/patch_embed/proj/Conv"]
    fused = onnx.load(str(src))
    fuse_attention(fused)  # what --ort-optimize writes to model.ort.onnx
    onnx.save(fused, tmp_path / "fused.onnx")
    quantize_dynamic(tmp_path / "fused.onnx", tmp_path / "q.onnx", QuantConfig(mode="dynamic"))
    assert _ops(onnx.load(str(tmp_path / "q.onnx")))["QAttention"] == 2
    qkv = "/blocks/blocks.1/attn/qkv/MatMul"
    cfg = QuantConfig(mode="dynamic")
    record = quantize_dynamic(tmp_path / "fused.onnx", tmp_path / "kept.onnx", cfg, exclude=[qkv])
    ops = _ops(onnx.load(str(tmp_path / "kept.onnx")))
    assert ops["QAttention"] == 1 and ops["Attention"] == 1 and qkv not in record["quantized_nodes"]
    ref = _run(onnx.load(str(src)), images)
    for name in ("plain.onnx", "q.onnx", "kept.onnx"):
        got = _run(onnx.load(str(tmp_path / name)), images)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 2 / 3
        assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
