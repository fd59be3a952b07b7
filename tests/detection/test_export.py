"""ONNX export of tiny DETR and Deformable DETR through the one export flow, with parity
against PyTorch, and their INT8 variants held to the mAP budget."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tvc.errors import ConfigError
from tvc.export.deformable import deformable_sampling, gather_sampling, grid_sampling
from tvc.export.flow import export_model
from tvc.export.onnx import OnnxExportConfig
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import Config, export_loaded
from tvc.tasks.detection import DetectionTask

FAST = {"simplify": False, "parity_samples": 2}


@pytest.fixture
def short_gate(monkeypatch):
    """The INT8 gate's mAP on 8 scenes instead of 200: the same steps, a CPU-test budget."""
    monkeypatch.setattr(DetectionTask, "export_eval_limit", 8)


def _int8(loaded, out, mode="static"):
    cfg = Config(model="detr", output=str(out), int8=mode, calib_size=4, no_simplify=True)
    return export_model(DetectionTask(), loaded, cfg)


def _graph_facts(path):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    return {n.op_type for n in model.graph.node}, onnx.TensorProto.DOUBLE in types


def test_detr_export_parity_with_padding_mask(tiny_detr, tmp_path):
    art = export_loaded(tiny_detr, tmp_path / "detr", OnnxExportConfig(pixel_mask=True, **FAST))
    p = art.meta["metrics"]["parity"]
    assert p["ok"] and p["class_agreement"] == 1.0 and p["boxes_max_abs_diff"] < 1e-4
    assert [i["name"] for i in art.meta["io"]["inputs"]] == ["input", "pixel_mask"]
    assert art.meta["model"]["extra"]["task"] == "detection"
    # The mask is a real input: padding half the image changes the outputs, as in PyTorch.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    mask = np.ones((1, 64, 64), np.int64)
    mask[:, :, 32:] = 0
    with OrtRunner(art.path / "model.onnx", threads=1) as ort:
        full = ort.infer({"input": x, "pixel_mask": np.ones_like(mask)})
        padded = ort.infer({"input": x, "pixel_mask": mask})
    with torch.no_grad():
        ref_logits, ref_boxes = tiny_detr.model(torch.from_numpy(x), torch.from_numpy(mask))
    assert np.abs(full["logits"] - padded["logits"]).max() > 1e-3
    np.testing.assert_allclose(padded["logits"], ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(padded["boxes"], ref_boxes.numpy(), atol=1e-4)


@pytest.mark.parametrize("sampling", ["gather", "grid"])
def test_deformable_export_parity_both_samplers(tiny_deformable, tmp_path, sampling):
    cfg = OnnxExportConfig(sampling=sampling, **FAST)
    art = export_loaded(tiny_deformable, tmp_path / sampling, cfg)
    p = art.meta["metrics"]["parity"]
    assert p["ok"] and p["class_agreement"] == 1.0
    assert p["logits_max_abs_diff"] < 1e-4 and p["boxes_max_abs_diff"] < 1e-4
    assert art.meta["metrics"]["sampling"] == sampling
    ops, has_double = _graph_facts(art.path / "model.onnx")
    assert ("GridSample" in ops) == (sampling == "grid")
    assert not has_double  # TensorRT has no float64
    assert art.meta["io"]["outputs"][0]["shape"] == [1, 10, 10]  # sigmoid head: no extra class


def test_gather_sampler_equals_grid_sample_on_random_points():
    """Points inside, on the border of and outside the maps, on two levels."""
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 3, 4)  # B, pixels, heads, dim
    locations = torch.rand(2, 6, 3, 2, 4, 2) * 1.4 - 0.2  # B, Q, heads, levels, points, xy
    weights = torch.rand(2, 6, 3, 2, 4).softmax(-1)
    args = (value, None, shapes, None, locations, weights)
    np.testing.assert_allclose(
        gather_sampling(None, *args).numpy(), grid_sampling(None, *args).numpy(), atol=1e-5
    )


def test_sampling_patch_is_reversible(tiny_deformable):
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        MultiScaleDeformableAttention,
    )

    model = tiny_deformable.model
    msda = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    with deformable_sampling(model, "gather") as n:
        assert n == len(msda) == 4  # 2 encoder + 2 decoder layers
        assert all("forward" in m.__dict__ for m in msda)
    assert not any("forward" in m.__dict__ for m in msda)
    with pytest.raises(ConfigError, match="sampling"), deformable_sampling(model, "bicubic"):
        pass


def test_export_refuses_bad_detector_options(tiny_detr, tmp_path):
    with pytest.raises(ConfigError, match="--sampling"):
        Config.parse({"model": "detr_pico", "output": str(tmp_path / "y"), "sampling": "nearest"})
    with pytest.raises(ConfigError, match="too small for a detector"):
        export_loaded(tiny_detr, tmp_path / "z", OnnxExportConfig(input_size=16))
    with pytest.raises(ConfigError, match="pixel_mask"):
        Config(model="detr_pico", output=str(tmp_path / "w"), int8="static", pixel_mask=True)
    assert not (tmp_path / "z").exists()


def test_detector_input_size_is_fixed_at_export(tiny_detr, tmp_path):
    art = export_loaded(tiny_detr, tmp_path / "d", OnnxExportConfig(input_size=96, **FAST))
    assert art.meta["io"]["inputs"][0]["shape"] == [1, 3, 96, 96]
    assert art.meta["model"]["input_size"] == [3, 96, 96]
    assert art.meta["io"]["outputs"][1]["format"].startswith("cxcywh")


def test_deformable_static_int8_is_trt_ready(tiny_deformable, tmp_path, short_gate):
    """At init every layer's sampling_offsets and attention_weights weights are zero, so the
    exporter shares one initializer through Identity nodes; the TensorRT check looks through
    them (it used to flag 'per-channel weights feed Identity')."""
    art = _int8(tiny_deformable, tmp_path / "int8")
    variant = art.meta["variants"]["model.int8.onnx"]
    assert variant["trt_readiness"] == {"ok": True, "violations": []}
    assert len(variant["quantized_nodes"]) > 0
    # The gate held it to the detector's own metric on its own data.
    assert variant["metric"] == "map" and variant["eval_data"]["n"] == 8
    assert variant["budget_met"] and variant["parity_vs_fp32"]["class_agreement"] > 0.5
    ops = {n.op_type for n in onnx.load(str(art.path / "model.int8.onnx")).graph.node}
    assert "Identity" in ops  # the shared weights this test is about


def test_detr_static_int8_feeds_quantized_activations_only_to_linears(
    tiny_detr, tmp_path, short_gate
):
    """DETR is post-norm: a LayerNorm's output feeds q/k/v and the residual Add. Only the
    Linears may read its Q/DQ copy; the residual stream stays float."""
    art = _int8(tiny_detr, tmp_path / "int8")
    graph = onnx.load(str(art.path / "model.int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    activation_dq = {
        n.output[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and producers.get(n.input[0]) is not None
        and producers[n.input[0]].op_type == "QuantizeLinear"
    }  # fmt: skip
    readers = {n.op_type for n in graph.node if any(i in activation_dq for i in n.input)}
    assert readers and readers <= {"MatMul", "Gemm", "Conv"}, readers
    assert art.meta["variants"]["model.int8.onnx"]["trt_readiness"]["ok"] is True


def test_detector_int8_gate_fails_loudly_over_budget(tiny_detr, tmp_path, short_gate, monkeypatch):
    """A miss of the mAP budget is AccuracyBudgetError (exit 4), as for classifiers."""
    from tvc.errors import AccuracyBudgetError
    from tvc.export.quantize import gate

    def worse(self, model):  # every INT8 candidate scores 5 mAP points below FP32
        return {"score": self.fp32_score - 5, "drop": 5.0}

    monkeypatch.setattr(gate.TaskJudge, "measure", worse)
    cfg = Config(model="detr", output=str(tmp_path / "q"), int8="static", calib_size=4,
                 no_simplify=True)  # fmt: skip
    with pytest.raises(AccuracyBudgetError, match="over the budget") as err:
        export_model(DetectionTask(), tiny_detr, cfg)
    assert err.value.exit_code == 4 and not (tmp_path / "q").exists()
