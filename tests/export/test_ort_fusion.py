"""model.ort.onnx: ONNX Runtime's transformer fusions on a tiny ViT, proven against model.onnx."""

from __future__ import annotations

import builtins
import collections

import numpy as np
import onnx
import pytest

from tvc.errors import MissingDependencyError, ParityError
from tvc.export import ort_fusion
from tvc.stages import get_stage

STAGE = get_stage("export")


def export(**values):
    return STAGE.run(STAGE.config.parse(values))


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_fusion_of_a_tiny_vit_keeps_parity_and_holds_the_fused_ops(tmp_path, pico_onnx):
    src = pico_onnx.path / "model.onnx"
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    record = ort_fusion.fuse_checked(src, tmp_path / "model.ort.onnx", x)
    ops = _ops(tmp_path / "model.ort.onnx")
    # vit_pico: each residual Add followed by a LayerNorm fuses to SkipLayerNormalization
    assert ops["SkipLayerNormalization"] == record["fused_ops"]["SkipLayerNormalization"] >= 3
    assert ops["Gelu"] == 2 and "Erf" not in ops
    assert "SkipLayerNormalization" not in _ops(src)  # model.onnx stays target-neutral
    assert record["nodes"]["after"] < record["nodes"]["before"]
    parity = record["parity_vs_fp32"]
    assert parity["n"] == 5 and parity["agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4


def test_a_fused_graph_that_differs_is_a_parity_error(tmp_path, pico_onnx):
    src = pico_onnx.path / "model.onnx"
    broken = onnx.load(str(src))
    ln = next(n for n in broken.graph.node if n.op_type == "LayerNormalization")
    ln.attribute.append(onnx.helper.make_attribute("epsilon", 10.0))
    del ln.attribute[:-1]  # keep only the large epsilon: outputs shrink visibly
    onnx.save(broken, tmp_path / "broken.onnx")
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ParityError, match="does not match"):
        ort_fusion.fused_parity(src, tmp_path / "broken.onnx", x)


def test_export_writes_model_ort_onnx_beside_a_neutral_model_onnx(tmp_path, pico_onnx):
    art = export(model=str(pico_onnx.path), output=str(tmp_path / "e"), ort_optimize=True)
    v = art.meta["variants"]["model.ort.onnx"]
    assert v["precision"] == "fp32-ort" and v["fused_ops"]["SkipLayerNormalization"] >= 3
    assert v["attention_fused"] is True and v["fused_ops"]["Attention"] == 2  # tvc's own fusion
    assert v["parity_vs_fp32"]["top1_agreement"] == 1.0
    assert "model.ort.onnx" in art.meta["files"]
    assert set(v["latency_ms"]) >= {"fp32_p50", "fused_p50", "speedup"}
    assert (art.path / "model.onnx").read_bytes() == (pico_onnx.path / "model.onnx").read_bytes()
    # tvc bench sees it as its own variant, after model.onnx
    from tvc.runtime.targets import onnx_variants

    found = [(v.path.name, v.precision) for v in onnx_variants(str(art.path))]
    assert found == [("model.onnx", "fp32"), ("model.ort.onnx", "fp32-ort")]


def test_export_refuses_before_any_work_without_the_optimizer(tmp_path, pico_onnx, monkeypatch):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name.startswith("onnxruntime.transformers"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    out = tmp_path / "e"
    with pytest.raises(MissingDependencyError, match="transformer optimizer") as err:
        export(model=str(pico_onnx.path), output=str(out), ort_optimize=True)
    assert err.value.exit_code == 5 and "drop --ort-optimize" in err.value.fix
    assert not out.exists()


def test_the_export_command_prints_what_was_fused(tmp_path, pico_onnx):
    from click.testing import CliRunner

    from tvc.cli import cli

    res = CliRunner().invoke(
        cli, ["export", str(pico_onnx.path), "-o", str(tmp_path / "e"), "--ort-optimize"]
    )
    assert res.exit_code == 0, res.output
    assert "model.ort.onnx: fp32-ort" in res.output and "x FP32 speed" in res.output
    assert "fused: " in res.output and "SkipLayerNormalization" in res.output
