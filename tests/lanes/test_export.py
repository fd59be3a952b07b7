"""Export of a tiny LSTR: ONNX parity in curve pixels, INT8 with the TuSimple gate."""

from __future__ import annotations

import numpy as np
import pytest

from tvc.errors import ParityError
from tvc.tasks.lanes import LaneData, LanesTask, export_lanes_onnx, onnx_predictor, quantize_lanes

TASK = LanesTask()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, pico_lstr):
    path = tmp_path_factory.mktemp("lstr") / "model.onnx"
    parity = export_lanes_onnx(pico_lstr, path)
    return path, parity


def test_onnx_parity(exported, pico_lstr, scenes):
    path, parity = exported
    assert parity["ok"] and parity["agreement"] == 1.0
    assert parity["curve_max_px_1280"] < 0.05
    data = LaneData(scenes, pico_lstr.info.input_size, pico_lstr.info.mean, pico_lstr.info.std)
    x = data.arrays()
    ref = TASK.outputs(pico_lstr.model, x)
    got = onnx_predictor(path)(x)  # a batch of 12 through the dynamic batch axis
    assert set(got) == {"logits", "curves"}
    np.testing.assert_allclose(got["curves"], ref["curves"], atol=1e-4)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4)
    # the eval path gives the same metrics for PyTorch and ONNX Runtime
    a = TASK.evaluate(TASK.predictor(pico_lstr), data)
    b = TASK.evaluate(onnx_predictor(path), data, reference=TASK.predictor(pico_lstr))
    assert a["accuracy"] == b["accuracy"] and b["agreement"] == 1.0


def test_parity_failure_is_an_error(tmp_path, pico_lstr, monkeypatch):
    import tvc.tasks.lanes as mod

    real = mod.onnx_predictor

    def broken(path, threads=None):
        p = real(path, threads)
        return lambda x: {**p(x), "curves": p(x)["curves"] + 0.01}

    monkeypatch.setattr(mod, "onnx_predictor", broken)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_lanes_onnx(pico_lstr, tmp_path / "m.onnx")


def test_int8_with_the_tusimple_gate(exported, pico_lstr, scenes, tmp_path):
    path, _ = exported
    info = pico_lstr.info
    data = LaneData(scenes, info.input_size, info.mean, info.std)
    report = quantize_lanes(path, tmp_path / "model.int8.onnx", data, eval_data=data,
                            budget=100.0)  # fmt: skip
    assert (tmp_path / "model.int8.onnx").is_file()
    assert report["quantized_nodes"] and report["budget_met"]
    assert report["float_layers"] == []
    q = onnx_predictor(tmp_path / "model.int8.onnx")(data.arrays()[:2])
    ref = TASK.outputs(pico_lstr.model, data.arrays()[:2])
    assert np.abs(q["curves"] - ref["curves"]).max() < 0.5  # quantized, but close
    # an impossible budget keeps layers in float, group by group, and says it was missed
    strict = quantize_lanes(path, tmp_path / "strict.onnx", data, eval_data=data, budget=-1.0)
    assert strict["float_layers"] and not strict["budget_met"]
