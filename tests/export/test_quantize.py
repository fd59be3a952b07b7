"""INT8 quantization of a tiny ViT: Q/DQ placement, agreement with FP32, the accuracy gate."""

from __future__ import annotations

import collections
import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from tvc.data.base import ImageSet
from tvc.errors import AccuracyBudgetError, ConfigError, DataError, UnsupportedModelError
from tvc.export.quantize import (
    QuantConfig,
    quantizable_nodes,
    quantize_dynamic,
    quantize_static,
    quantize_with_gate,
)
from tvc.export.trt_rules import check_trt_qdq

LINEAR = {
    "/patch_embed/proj/Conv",
    "/head/Gemm",
    *(f"/blocks/blocks.{b}/{layer}/MatMul" for b in (0, 1)
      for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2")),
}  # fmt: skip


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def labelled_by(model_path, x: np.ndarray) -> ImageSet:
    """Images labelled with the FP32 model's own predictions (FP32 top-1 = 100%)."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return ImageSet.from_arrays(x, sess.run(None, {"input": x})[0].argmax(1))


def dq_consumers(model: onnx.ModelProto) -> dict[str, str]:
    """name -> op type of every node reading a DequantizeLinear output."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: n.op_type for n in model.graph.node
            if n.op_type != "QuantizeLinear" and any(i in dq for i in n.input)}  # fmt: skip


@pytest.fixture(scope="module")
def fp32(pico_onnx):
    return pico_onnx.path / "model.onnx"


@pytest.fixture(scope="module")
def calib():
    return ImageSet.from_arrays(images(48), np.zeros(48, np.int64), name="noise", split="train")


@pytest.fixture(scope="module")
def safe_int8(tmp_path_factory, fp32, calib):
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    report = quantize_static(fp32, out, calib, QuantConfig(calib_size=32))
    return out, report


def test_quantizable_nodes_are_the_linear_layers(fp32):
    assert set(quantizable_nodes(fp32)) == LINEAR
    every = set(quantizable_nodes(fp32, "all"))
    assert every > LINEAR
    assert {"/blocks/blocks.0/attn/Softmax", "/blocks/blocks.0/norm1/LayerNormalization"} <= every


def test_safe_placement_quantizes_only_linear_inputs(safe_int8):
    out, report = safe_int8
    model = onnx.load(str(out))
    quantized = dq_consumers(model)
    assert set(quantized) == LINEAR == set(report["quantized_nodes"])
    # What stays float: norms, softmax, GELU, residual adds, attention matmuls (two activations).
    by_type = {}
    for n in model.graph.node:
        by_type.setdefault(n.op_type, set()).add(n.name)
    for op in ("LayerNormalization", "Softmax", "Erf", "Add"):
        assert by_type[op] and not by_type[op] & set(quantized), op
    assert "/blocks/blocks.0/attn/MatMul" in by_type["MatMul"] - set(quantized)
    assert {"LayerNormalization", "Softmax", "Erf", "Add"} <= set(report["float_op_types"])
    # Linear outputs are not quantized: no Q reads a quantized node's output.
    outputs = {o for n in model.graph.node if n.name in quantized for o in n.output}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in outputs
                   for n in model.graph.node)  # fmt: skip


def test_int8_is_symmetric_per_channel_weights_per_tensor_activations(safe_int8):
    out, report = safe_int8
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    users = {i: n for n in model.graph.node for i in n.input}
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
        scale = inits[n.input[1]]
        if n.input[0] in inits:  # a weight: one scale per output channel
            user = users[n.output[0]]
            axis = next(a.i for a in n.attribute if a.name == "axis")
            w = inits[n.input[0]]
            assert scale.size == w.shape[axis] > 1
            want = {"Conv": 0, "MatMul": w.ndim - 1, "Gemm": 0}[user.op_type]  # head: transB=1
            assert axis == want, n.name
        else:
            assert scale.size == 1, n.name
    assert check_trt_qdq(out) == [] and "trt_ready" not in report  # judged once, by the flow
    assert report["calibration"] == {"data": "noise", "split": "train", "size": 32,
                                     "method": "minmax", "seed": 0}  # fmt: skip
    assert report["size_bytes"] < report["fp32_size_bytes"]


def test_static_and_dynamic_int8_agree_with_fp32(tmp_path, fp32, safe_int8, calib):
    x = images(32, seed=7)
    ref = ort.InferenceSession(str(fp32)).run(None, {"input": x})[0]
    dyn = tmp_path / "dyn.onnx"
    report = quantize_dynamic(fp32, dyn, QuantConfig(mode="dynamic"))
    assert report["mode"] == "dynamic" and check_trt_qdq(dyn)  # integer ops TensorRT lacks
    # the patch Conv runs as an integer MatMul (ConvInteger is slow)
    ops = collections.Counter(n.op_type for n in onnx.load(str(dyn)).graph.node)
    assert "ConvInteger" not in ops and "Conv" not in ops
    assert report["patch_conv_as_matmul"] == ["/patch_embed/proj/Conv"]
    assert "/patch_embed/proj/Conv" in report["quantized_nodes"]
    # 7-bit weights (a CPU without VNNI: see WEIGHT_RANGES) have twice the rounding step; their
    # worst logit error was 5.2% of the largest logit on an AVX2 EPYC
    tolerance = 0.065 if QuantConfig().reduce_range() else 0.05
    for path in (safe_int8[0], dyn):
        got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() < tolerance * np.abs(ref).max()
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.85


def test_ort_cpu_fuses_the_safe_model_into_integer_kernels(tmp_path, safe_int8):
    """The bias split is what lets ORT run QGemm / MatMulIntegerToFloat instead of float."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(safe_int8[0]), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 8 and ops.count("QGemm") == 1


def test_naive_all_ops_quantizes_norms_and_softmax(tmp_path, fp32, calib, safe_int8):
    out = tmp_path / "all.onnx"
    report = quantize_static(fp32, out, calib, QuantConfig(calib_size=32, ops="all"))
    types = set(dq_consumers(onnx.load(str(out))).values())
    assert {"LayerNormalization", "Softmax", "Add"} <= types
    assert report["parity"]["nmse"] > 5 * safe_int8[1]["parity"]["nmse"]


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calibration_methods(tmp_path, fp32, calib, method):
    cfg = QuantConfig(calib_size=16, calib_method=method, percentile=99.9)
    report = quantize_static(fp32, tmp_path / "m.onnx", calib, cfg)
    assert report["calibration"]["method"] == method
    assert report["parity"]["nmse"] < 0.01 and check_trt_qdq(tmp_path / "m.onnx") == []


def test_exclude_keeps_a_layer_in_float(tmp_path, fp32, calib):
    report = quantize_static(fp32, tmp_path / "m.onnx", calib, QuantConfig(calib_size=8),
                             exclude=["/head/Gemm"])  # fmt: skip
    assert "/head/Gemm" not in report["quantized_nodes"] and report["float_nodes"] == ["/head/Gemm"]
    with pytest.raises(ConfigError, match="did you mean: /head/Gemm"):
        quantize_static(fp32, tmp_path / "m.onnx", calib, QuantConfig(), exclude=["/head/Gem"])


# ------------------------------------------------------------------------- accuracy gate


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory, pico):
    """vit_pico with one LayerNorm channel scaled x300 (and fc1 scaled back): the same FP32
    function, but per-tensor INT8 of fc1's input in block 1 wipes out every other channel."""
    import torch

    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.stages.export import export_loaded

    model = copy.deepcopy(pico.model)
    with torch.no_grad():
        model.blocks[1].norm2.weight[3] = 300.0
        model.blocks[1].mlp.fc1.weight[:, 3] /= 300.0
        model.head.weight.mul_(20)  # decisive logits, so only real damage flips predictions
    out = tmp_path_factory.mktemp("sensitive") / "exported"
    art = export_loaded(LoadedModel(model, pico.info), out, OnnxExportConfig(dynamic_batch=True))
    path = art.path / "model.onnx"
    x = images(96, seed=3)
    return path, labelled_by(path, x[:32]), labelled_by(path, x[32:])


def test_gate_keeps_the_sensitive_layer_in_float(tmp_path, sensitive):
    path, calib, evaluation = sensitive
    out = tmp_path / "int8.onnx"
    # smoothing off: the outlier must reach the quantizer for the gate to have work to do
    cfg = QuantConfig(calib_size=32, budget=3.0, smooth_alpha=0.0)
    report = quantize_with_gate(path, out, calib, cfg, evaluation)
    assert report["metric"] == "top1" and report["accuracy"]["fp32"] == 100.0
    assert report["drop_before"] > 10
    # the scaled fc1 is the first layer put back in float; with 7-bit weights (a CPU without
    # VNNI) two fc2 layers of this random model also went over the budget on an AVX2 EPYC
    assert report["float_layers"][0] == "/blocks/blocks.1/mlp/fc1/MatMul"
    if not cfg.reduce_range():
        assert report["float_layers"] == ["/blocks/blocks.1/mlp/fc1/MatMul"]
    assert report["sensitivity"][0]["node"] == "/blocks/blocks.1/mlp/fc1/MatMul"
    assert report["budget_met"] and report["drop"] <= 3.0
    assert report["accuracy"]["int8"] >= 97.0
    # The written model is the fallback one, still TensorRT-ready.
    quantized = dq_consumers(onnx.load(str(out)))
    assert not set(report["float_layers"]) & set(quantized)
    assert len(quantized) == len(LINEAR) - len(report["float_layers"])
    assert check_trt_qdq(out) == []


def test_gate_fails_loudly_when_the_budget_cannot_hold(tmp_path, sensitive):
    path, calib, evaluation = sensitive
    cfg = QuantConfig(calib_size=32, budget=3.0, max_float_layers=0, smooth_alpha=0.0)
    with pytest.raises(AccuracyBudgetError, match="over the budget of 3") as err:
        quantize_with_gate(path, tmp_path / "a.onnx", calib, cfg, evaluation)
    assert err.value.exit_code != 0 and "--allow-accuracy-drop" in err.value.fix
    cfg.allow_accuracy_drop = True
    report = quantize_with_gate(path, tmp_path / "b.onnx", calib, cfg, evaluation)
    assert report["budget_met"] is False and "over the budget" in report["warning"]


def test_gate_without_eval_data_uses_agreement_on_calibration(tmp_path, fp32, calib):
    report = quantize_with_gate(fp32, tmp_path / "m.onnx", calib,
                                QuantConfig(calib_size=16, budget=100.0), None)  # fmt: skip
    assert report["metric"] == "agreement" and report["eval_data"]["n"] == len(calib)
    assert report["budget_met"] and report["float_layers"] == []


def test_gate_for_dynamic_int8(tmp_path, sensitive):
    path, calib, evaluation = sensitive
    cfg = QuantConfig(mode="dynamic", budget=100.0)
    report = quantize_with_gate(path, tmp_path / "d.onnx", calib, cfg, evaluation)
    assert report["mode"] == "dynamic" and report["budget_met"]


# ------------------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(tmp_path, fp32, calib):
    out = tmp_path / "m.onnx"
    empty = ImageSet.from_arrays(np.zeros((0, 3, 32, 32), np.float32), np.zeros(0, np.int64))
    with pytest.raises(DataError, match="no images to calibrate"):
        quantize_static(fp32, out, empty, QuantConfig())
    small = ImageSet.from_arrays(images(4, size=28), np.zeros(4, np.int64))
    with pytest.raises(DataError, match="images are 3x28x28 but the model expects 3x32x32"):
        quantize_static(fp32, out, small, QuantConfig())
    with pytest.raises(ConfigError, match="--int8-budget must be >= 0"):
        quantize_with_gate(fp32, out, calib, QuantConfig(budget=-1), None)
    with pytest.raises(ConfigError, match="unknown --calib-method 'kl'"):
        quantize_static(fp32, out, calib, QuantConfig(calib_method="kl"))
    with pytest.raises(ConfigError, match="does not exist"):
        quantize_static(tmp_path / "missing.onnx", out, calib, QuantConfig())


def test_model_without_linear_layers_is_refused(tmp_path, calib):
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"], name="relu")], "g",
                              [x], [y])  # fmt: skip
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(UnsupportedModelError, match="no layers to quantize"):
        quantize_static(path, tmp_path / "q.onnx", calib, QuantConfig())
    with pytest.raises(UnsupportedModelError, match="no layers to quantize"):
        quantize_dynamic(path, tmp_path / "q.onnx", QuantConfig(mode="dynamic"))


# ------------------------------------------------------------------ weight range (saturation)
def int8_weight_peak(path) -> int:
    """The largest |value| over the model's int8 weight matrices."""
    ints = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]  # fmt: skip
    assert ints, "no int8 weights in the quantized model"
    return max(int(np.abs(w.astype(np.int32)).max()) for w in ints)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_reduced_weight_range_keeps_weights_in_7_bits(tmp_path, fp32, calib, mode):
    """7-bit weights cannot overflow VPMADDUBSW's int16 pair sums (x86 without VNNI)."""
    peaks = {}
    for weight_range in ("full", "reduced"):
        cfg = QuantConfig(mode=mode, calib_size=16, weight_range=weight_range)
        out = tmp_path / f"{weight_range}.onnx"
        if mode == "static":
            report = quantize_static(fp32, out, calib, cfg)
        else:
            report = quantize_dynamic(fp32, out, cfg)
        assert report["weight_range"] == weight_range
        peaks[weight_range] = int8_weight_peak(out)
    assert peaks["full"] == 127 and peaks["reduced"] <= 64


def test_auto_weight_range_follows_the_cpu():
    from tvc.export.quantize.config import int8_saturates_here

    assert int8_saturates_here("x86_64", ["avx2", "fma"])  # AVX2 EPYC / Xeon: VPMADDUBSW
    assert not int8_saturates_here("x86_64", ["avx2", "avx512f", "avx512_vnni"])
    assert not int8_saturates_here("x86_64", ["avx2", "avx_vnni"])  # Alder Lake and later
    assert not int8_saturates_here("aarch64", ["asimd"])  # Arm kernels widen: no saturation
    assert QuantConfig(weight_range="full").reduce_range() is False
    assert QuantConfig(weight_range="reduced").reduce_range() is True
    with pytest.raises(ConfigError, match="int8-weight-range"):
        QuantConfig(weight_range="7bit").validate()


def test_unsigned_weights_use_all_8_bits_with_zero_points(tmp_path, fp32, calib):
    """--int8-weight-range unsigned: uint8 weight matrices with a zero point per output channel
    (ORT's 16-bit U8U8 kernels, which cannot saturate), as close to FP32 as 7-bit int8."""
    cfg = QuantConfig(mode="dynamic", weight_range="unsigned")
    out = tmp_path / "u8.onnx"
    report = quantize_dynamic(fp32, out, cfg)
    assert report["weight_range"] == "unsigned" and report["weights"].startswith("uint8")
    inits = {t.name: t for t in onnx.load(str(out)).graph.initializer}
    mats = [numpy_helper.to_array(t) for t in inits.values()
            if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) >= 2]  # fmt: skip
    assert mats and not any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
                            for t in inits.values())  # fmt: skip
    assert max(int(w.max()) for w in mats) == 255 and min(int(w.min()) for w in mats) == 0
    u8 = onnx.TensorProto.UINT8
    zero_points = [numpy_helper.to_array(t) for n, t in inits.items()
                   if n.endswith("zero_point") and t.data_type == u8]  # fmt: skip
    assert any(z.size > 1 and len(np.unique(z)) > 1 for z in zero_points)  # per channel
    x = images(8, seed=3)
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, out)}
    ref, got = (run[p].run(None, {"input": x})[0] for p in (fp32, out))
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    with pytest.raises(ConfigError, match="unsigned is for --int8 dynamic"):
        QuantConfig(mode="static", weight_range="unsigned").validate()
