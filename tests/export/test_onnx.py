import numpy as np
import onnx
import pytest

from tvc.errors import ConfigError, ParityError
from tvc.export.onnx import OnnxExportConfig
from tvc.export.parity import compare, require_parity
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import export_loaded


def test_export_records_parity_and_io(pico_onnx):
    m = pico_onnx.meta
    assert m["kind"] == "onnx" and m["precision"] == "fp32"
    assert m["metrics"]["parity"]["ok"] is True
    assert m["metrics"]["parity"]["max_abs_diff"] < 1e-4
    assert m["metrics"]["parity"]["top1_agreement"] == 1.0
    assert m["io"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert m["model"]["arch"] == "vit_tiny_patch16_224"


def test_layernorm_stays_fused(pico_onnx):
    model = onnx.load(str(pico_onnx.path / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops
    assert "ReduceMean" not in ops and "Pow" not in ops
    assert model.opset_import[0].version >= 17


def test_dynamic_batch_runs_any_batch(pico_onnx, pico):
    import torch

    with OrtRunner(pico_onnx.path / "model.onnx", threads=1) as r:
        for b in (1, 5):
            x = np.random.default_rng(b).standard_normal((b, 3, 32, 32)).astype(np.float32)
            got = r.infer(x)["logits"]
            ref = pico.model(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(got, ref, atol=1e-4)


def test_fixed_batch_and_no_simplify(tmp_path, pico):
    art = export_loaded(pico, tmp_path / "e", OnnxExportConfig(batch=2, simplify=False))
    assert art.meta["io"]["inputs"][0]["shape"] == [2, 3, 32, 32]
    assert art.meta["metrics"]["simplified"] is False
    with OrtRunner(art.path / "model.onnx") as r, pytest.raises(ConfigError, match="fixed to 2"):
        r.infer(np.zeros((3, 3, 32, 32), np.float32))


def test_old_opset_rejected(tmp_path, pico):
    with pytest.raises(ConfigError, match="opset >= 17"):
        export_loaded(pico, tmp_path / "e", OnnxExportConfig(opset=13))
    assert not (tmp_path / "e").exists()


def test_parity_failure_is_an_error():
    ref = np.array([[1.0, 2.0], [3.0, 0.0]])
    p = compare(ref, ref + 0.5, atol=1e-4, rtol=1e-3)
    assert not p.ok and p.max_abs_diff == pytest.approx(0.5)
    with pytest.raises(ParityError, match="does not match"):
        require_parity(p, "x")
    q = compare(ref, ref[:, ::-1].copy(), atol=10, rtol=0)
    assert q.top1_agreement == 0.0
