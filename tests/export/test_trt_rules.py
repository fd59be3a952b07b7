"""The TensorRT readiness check on hand-built Q/DQ graphs and on ONNX Runtime's own outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvc.export.trt_rules import check_trt_qdq

INT8, UINT8, INT32 = TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32


def _const(name: str, value, dtype) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def qdq_matmul(
    tmp_path,
    *,
    act_zp=(INT8, 0),
    act_scale=None,
    act_axis=None,
    w_axis=1,
    w_scales=6,
    opset=17,
    extra_nodes=(),
    extra_inits=(),
    q_consumer="DequantizeLinear",
):
    """x[1,4,8] -> Q -> DQ -> MatMul(W[8,6] via DQ) -> y[1,4,6], with knobs to break rules."""
    zp_type, zp_value = act_zp
    np_zp = np.uint8 if zp_type == UINT8 else np.int8
    inits = [
        _const("s_x", 0.05 if act_scale is None else act_scale, np.float32),
        _const("zp_x", zp_value if act_scale is None else np.zeros(len(act_scale)), np_zp),
        _const("w_q", np.ones((8, 6)), np.int8),
        _const("s_w", np.full(w_scales, 0.01), np.float32),
        _const("zp_w", np.zeros(w_scales), np.int8),
        *extra_inits,
    ]
    dq_x_kwargs = {"axis": act_axis} if act_axis is not None else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["x_q"], name="q_x",
                         **dq_x_kwargs),
        helper.make_node(q_consumer, ["x_q", "s_x", "zp_x"], ["x_dq"], name="dq_x",
                         **(dq_x_kwargs if q_consumer == "DequantizeLinear" else {})),
        helper.make_node("DequantizeLinear", ["w_q", "s_w", "zp_w"], ["w"], name="dq_w",
                         axis=w_axis),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="linear"),
        *extra_nodes,
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_well_formed_symmetric_int8_passes(tmp_path):
    path = qdq_matmul(tmp_path)
    onnx.checker.check_model(str(path))
    assert check_trt_qdq(path) == []


@pytest.mark.parametrize(
    ("knobs", "expected"),
    [
        ({"act_zp": (UINT8, 128)}, ["quantizes to uint8", "zero point 128 is not 0"]),
        ({"act_zp": (INT8, 3)}, ["zero point 3 is not 0"]),
        ({"w_axis": 0, "w_scales": 8}, ["per-channel axis 0 is not the output-channel axis 1"]),
        ({"w_scales": 5}, ["5 scales do not match axis 1"]),
        ({"act_scale": np.full(8, 0.05), "act_axis": 2}, ["activation is quantized per channel"]),
        ({"opset": 11}, ["opset 11 is too old"]),
        ({"q_consumer": "Identity"}, ["feeds Identity 'dq_x' directly"]),
        ({"act_scale": [-0.05]}, ["scale has values that are zero, negative"]),
    ],
)
def test_broken_rules_are_listed(tmp_path, knobs, expected):
    problems = check_trt_qdq(qdq_matmul(tmp_path, **knobs))
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_int32_bias_unsupported_ops_and_dangling_dq_are_flagged(tmp_path):
    bias = [_const("b_q", np.zeros(6), np.int32), _const("s_b", 0.0005, np.float32),
            _const("zp_b", 0, np.int32)]  # fmt: skip
    extra = [
        helper.make_node("DequantizeLinear", ["b_q", "s_b", "zp_b"], ["b"], name="dq_bias"),
        helper.make_node("Add", ["y", "b"], ["y2"], name="bias_add"),
        helper.make_node("MatMulInteger", ["w_q", "w_q"], ["mi"], name="int_matmul"),
        helper.make_node("Relu", ["y"], ["r"], name="relu"),
        helper.make_node("DequantizeLinear", ["r", "s_x"], ["r_dq"], name="dq_float"),
        helper.make_node("QGemm", ["x_q"], ["qg"], name="contrib", domain="com.microsoft"),
    ]
    problems = check_trt_qdq(qdq_matmul(tmp_path, extra_nodes=extra, extra_inits=bias))
    text = "\n".join(problems)
    assert "'dq_bias': quantizes to int32 (a quantized bias" in text
    assert "'int_matmul': TensorRT cannot import this operator" in text
    assert "'contrib': operator from domain 'com.microsoft'" in text
    assert "'dq_float': reads Relu 'relu', not a QuantizeLinear" in text


def test_ort_default_asymmetric_quantization_is_flagged(tmp_path, pico_onnx):
    """ONNX Runtime's defaults (uint8 asymmetric activations) break TensorRT's rules."""
    import logging

    from onnxruntime import quantization as oq

    class Reader:
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.standard_normal((2, 3, 32, 32), np.float32)}])

        def get_next(self):
            return next(self.items, None)

    out = tmp_path / "asym.onnx"
    logging.disable(logging.WARNING)
    try:
        oq.quantize_static(str(pico_onnx.path / "model.onnx"), str(out), Reader(),
                           quant_format=oq.QuantFormat.QDQ,
                           activation_type=oq.QuantType.QUInt8,
                           op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)
    text = "\n".join(check_trt_qdq(out))
    assert "quantizes to uint8" in text
    assert "is not 0; TensorRT needs symmetric" in text
    assert "quantized bias" in text  # ORT quantizes Gemm biases to int32 by default


def test_dynamic_int8_is_not_for_tensorrt(tmp_path, pico_onnx):
    from tvc.export.quantize import QuantConfig, quantize_dynamic

    out = tmp_path / "dyn.onnx"
    quantize_dynamic(pico_onnx.path / "model.onnx", out, QuantConfig(mode="dynamic"))
    text = "\n".join(check_trt_qdq(out))
    assert "DynamicQuantizeLinear" in text and "MatMulInteger" in text


def test_weights_shared_through_identity_are_judged_at_their_layer(tmp_path):
    """torch.onnx.export deduplicates identical weights into one initializer plus Identity
    copies; once quantized, the weight reaches its other layers through the Identity, which
    TensorRT removes, so the axis is checked at the MatMul behind it."""
    shared = [
        helper.make_node("Identity", ["w"], ["w_copy"], name="dedup"),
        helper.make_node("Identity", ["w_copy"], ["w_copy2"], name="dedup2"),
        helper.make_node("MatMul", ["x", "w_copy2"], ["y_other"], name="other_layer"),
    ]
    assert check_trt_qdq(qdq_matmul(tmp_path, extra_nodes=shared)) == []
    wrong_axis = "\n".join(check_trt_qdq(qdq_matmul(tmp_path, w_axis=0, w_scales=8,
                                                    extra_nodes=shared)))  # fmt: skip
    assert "output-channel axis 1 of MatMul 'other_layer'" in wrong_axis
    not_a_layer = [*shared[:1], helper.make_node("Add", ["w_copy", "w_copy"], ["s"], name="add")]
    problems = "\n".join(check_trt_qdq(qdq_matmul(tmp_path, extra_nodes=not_a_layer)))
    assert "per-channel weights feed Add 'add'" in problems
