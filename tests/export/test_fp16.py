"""FP16 ONNX: norms and softmax stay FP32 behind casts, I/O stays float32, overflow is caught."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvc.errors import ParityError
from tvc.export.fp16 import convert_fp16

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def tensor_types(path) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


@pytest.fixture(scope="module")
def fp16(tmp_path_factory, pico_onnx):
    out = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    return out, convert_fp16(pico_onnx.path / "model.onnx", out)


def test_layernorm_and_softmax_stay_fp32_the_rest_fp16(fp16):
    out, report = fp16
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    types = tensor_types(out)
    by_op: dict[str, list] = {}
    for n in model.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    for op in ("LayerNormalization", "Softmax"):
        for n in by_op[op]:
            assert all(types[i] == FLOAT for i in n.input if i), n.name
            assert types[n.output[0]] == FLOAT
    for n in by_op["MatMul"] + by_op["Gemm"] + by_op["Erf"]:
        assert types[n.output[0]] == FLOAT16, n.name
    assert types["input"] == FLOAT and types["logits"] == FLOAT  # callers feed float32
    assert report["casts"] == len(by_op["Cast"]) > 0
    assert report["overflow_nodes"] == [] and report["parity"]["ok"]
    assert report["size_bytes"] < 0.6 * report["fp32_size_bytes"]


def test_fp16_matches_fp32_in_onnx_runtime(fp16, pico_onnx):
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(pico_onnx.path / "model.onnx")).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(fp16[0])).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-3 + 1e-2 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, pico):
    """vit_pico whose first MLP sees activations around 1.5e5: beyond FP16's 65504."""
    import torch

    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.load import LoadedModel
    from tvc.stages.export import export_loaded

    model = copy.deepcopy(pico.model)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(1e5)
        model.blocks[0].mlp.fc2.weight.div_(1e5)
    out = tmp_path_factory.mktemp("overflow") / "exported"
    art = export_loaded(LoadedModel(model, pico.info), out, OnnxExportConfig(batch=2))
    return art.path / "model.onnx"


def test_overflowing_nodes_stay_fp32(tmp_path, overflowing):
    report = convert_fp16(overflowing, tmp_path / "m.onnx")
    kept = set(report["overflow_nodes"])
    model = onnx.load(str(tmp_path / "m.onnx"))
    fc = {p: next(n for n in model.graph.node if n.name.startswith(f"/blocks/blocks.0/mlp/{p}/")
                  and n.op_type in ("MatMul", "Gemm")) for p in ("fc1", "fc2")}  # fmt: skip
    assert fc["fc1"].name in kept  # produces values near 1e5
    assert fc["fc2"].name in kept  # reads them
    assert not any(n.startswith("/blocks/blocks.1/") for n in kept)
    assert report["parity"]["ok"]
    assert tensor_types(tmp_path / "m.onnx")[fc["fc1"].output[0]] == FLOAT
    # Without the overflow scan the same model turns into inf/NaN and fails parity.
    with pytest.raises(ParityError, match="FP16 model does not match"):
        convert_fp16(overflowing, tmp_path / "n.onnx", overflow_margin=1e-3)


def test_custom_keep_list(tmp_path, pico_onnx):
    out = tmp_path / "m.onnx"
    report = convert_fp16(pico_onnx.path / "model.onnx", out, keep_fp32_ops=("Erf",))
    assert report["keep_fp32_ops"] == ["Erf"]
    types = tensor_types(out)
    model = onnx.load(str(out))
    erf = [n for n in model.graph.node if n.op_type == "Erf"]
    assert erf and all(types[n.output[0]] == FLOAT for n in erf)
    ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert all(types[n.output[0]] == FLOAT16 for n in ln)
