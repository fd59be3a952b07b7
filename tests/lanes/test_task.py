"""The lanes task adapter, method by method, and LSTR artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvc.compress.lstr import prune_lstr, record_structure
from tvc.models import load_model
from tvc.tasks.lanes import LaneData, LanesTask, curve_agreement, export_lanes_onnx

TASK = LanesTask()


def test_paper_config_size_and_registry():
    from tvc.models.lstr import LSTR_CONFIGS, lstr_build

    paper = lstr_build(LSTR_CONFIGS["lstr_paper"].config)
    n = sum(p.numel() for p in paper.parameters())
    assert 0.7e6 < n < 0.85e6  # the paper's ~0.77 M
    micro = lstr_build(LSTR_CONFIGS["lstr_micro"].config)
    assert sum(p.numel() for p in micro.parameters()) < 0.4e6
    from tvc.tasks import task_for_data, task_for_model

    assert task_for_model("lstr_micro").name == "lanes"
    assert task_for_data("lanes-synth").name == "lanes"
    assert task_for_data("fashion-mnist-det").name == "detection"


def test_ownership(tmp_path, pico_lstr):
    from tvc.models.load import write_model_artifact

    assert TASK.owns_model("lstr_pico") and not TASK.owns_model("detr_pico")
    assert not TASK.owns_model("vit_pico") and not TASK.owns_model(str(tmp_path))
    art = tmp_path / "art"
    write_model_artifact(pico_lstr, art, spec={}, metrics={})
    assert TASK.owns_model(str(art))
    assert TASK.owns_info(pico_lstr.info)
    assert not TASK.owns_info(load_model("vit_pico", warn_random=False).info)
    assert TASK.owns_data("lanes-synth") and not TASK.owns_data("fashion-mnist")


def test_artifact_round_trip_after_pruning(tmp_path):
    from tvc.models.load import write_model_artifact

    torch.manual_seed(0)
    loaded = load_model("lstr_pico", warn_random=False)
    x = torch.randn(2, 3, 36, 64)
    report = TASK.prune(loaded.model, {"prune": 0.5, "round_to": 8}, example=x[:1])
    assert report["params_after"] < report["params_before"]
    assert report["layers"]["decoder.1"]["cross_attn"] == [2, 1]
    assert report["layers"]["encoder.0"]["ffn"] == [64, 32]
    record_structure(loaded)
    assert loaded.info.structure["modules"]
    write_model_artifact(loaded, tmp_path / "pruned", spec={}, metrics={})
    back = load_model(str(tmp_path / "pruned"))
    a, b = TASK.outputs(loaded.model, x), TASK.outputs(back.model, x)
    np.testing.assert_allclose(a["curves"], b["curves"], atol=1e-6)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-6)


def test_prune_keeps_the_kept_heads_exact():
    """Pruning heads of one attention changes its output only by the removed heads' share:
    with those heads' output-projection columns zeroed first, the output is unchanged."""
    from tvc.models.lstr import Attention

    torch.manual_seed(0)
    attn = Attention(16, 4)
    x = torch.randn(2, 5, 16)
    from tvc.compress.lstr import _prune_heads

    with torch.no_grad():
        attn.v_proj.weight[4:8] *= 0.01  # head 1 is the weakest
    ref = attn(x, x, x)
    import copy

    pruned = copy.deepcopy(attn)
    assert _prune_heads(pruned, 0.25) == (4, 3)
    with torch.no_grad():
        attn.o_proj.weight[:, 4:8] = 0
    np.testing.assert_allclose(pruned(x, x, x).detach(), attn(x, x, x).detach(), atol=1e-6)
    assert not torch.allclose(ref, attn(x, x, x))
    with pytest.raises(Exception, match="in \\(0, 1\\)"):
        prune_lstr(torch.nn.Linear(2, 2), 1.5)


def test_factorize_lowers_macs_and_rebuilds(tmp_path):
    from tvc.compress.lowrank import LowRankConfig
    from tvc.models.load import write_model_artifact

    torch.manual_seed(0)
    loaded = load_model("lstr_pico", warn_random=False)
    x = torch.randn(2, 3, 36, 64)
    report = TASK.factorize(loaded.model, LowRankConfig(rank=8), samples=x)
    assert report["factorized"] > 0
    record_structure(loaded)
    write_model_artifact(loaded, tmp_path / "lr", spec={}, metrics={})
    back = load_model(str(tmp_path / "lr"))
    np.testing.assert_allclose(TASK.outputs(back.model, x)["curves"],
                               TASK.outputs(loaded.model, x)["curves"], atol=1e-6)  # fmt: skip


def test_data_samples_outputs_and_agreement(pico_lstr):
    info = pico_lstr.info
    data = TASK.load_data("lanes-synth", "val", info, limit=3)
    assert isinstance(data, LaneData) and len(data) == 3
    assert data.arrays().shape == (3, 3, 36, 64)
    x, words = TASK.sample_inputs(info, "lanes-synth", 2)
    assert tuple(x.shape) == (2, 3, 36, 64) and "test" in words
    r, _ = TASK.sample_inputs(info, None, 3)
    assert tuple(r.shape) == (3, 3, 36, 64)
    out = TASK.outputs(pico_lstr.model, x)
    assert set(out) == set(TASK.onnx_io(info).outputs)
    assert out["logits"].shape == (2, 6, 2) and out["curves"].shape == (2, 6, 8)
    same = TASK.agreement(out, out)
    assert same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    assert same["curve_max_diff"] == 0.0


def test_agreement_measures_curve_pixels():
    logits = np.array([[[-5.0, 5.0], [5.0, -5.0]]])
    curves = np.zeros((1, 2, 8))
    curves[..., 0], curves[..., 1], curves[..., 3], curves[..., 5] = 0.3, 1.0, -0.5, 0.5
    moved = curves.copy()
    moved[0, 0, 7] -= 0.01  # lane 0 moves right by 0.01 of the width: 12.8 px at 1280
    a = curve_agreement({"logits": logits, "curves": curves}, {"logits": logits,
                                                               "curves": moved})  # fmt: skip
    assert a["agreement"] == 1.0
    assert a["curve_max_px_1280"] == pytest.approx(12.8)
    flipped = logits.copy()
    flipped[0, 1] = [-5.0, 5.0]
    assert curve_agreement({"logits": logits, "curves": curves},
                           {"logits": flipped, "curves": curves})["agreement"] == 0.5  # fmt: skip


def test_evaluate_with_a_perfect_predictor(scenes):
    """A predictor that returns the curve model fitted to the ground truth scores ~100%."""
    from tvc.data.lanes import fit_curves

    data = LaneData(scenes, (3, 72, 128), (0.5,) * 3, (0.5,) * 3)
    fitted = []
    for lanes, hs in zip(scenes.lanes, scenes.h_samples, strict=True):
        p, _ = fit_curves([hs[lane >= 0] / 72 for lane in lanes],
                          [lane[lane >= 0] / 128 for lane in lanes])  # fmt: skip
        p[:, 0] -= 0.2 / 72  # lower / upper are exact rows: keep them inside after rounding
        p[:, 1] += 0.2 / 72
        curves = np.zeros((7, 8))
        curves[: len(p)] = p
        logits = np.tile([5.0, -5.0], (7, 1))
        logits[: len(p)] = [-5.0, 5.0]
        fitted.append((logits, curves))
    calls = iter(range(len(scenes)))

    def predict(x):
        idx = [next(calls) for _ in range(len(x))]
        return {"logits": np.stack([fitted[i][0] for i in idx]),
                "curves": np.stack([fitted[i][1] for i in idx])}  # fmt: skip

    m = TASK.evaluate(predict, data, batch_size=4)
    assert m["tusimple_accuracy"] == m["accuracy"] > 99.0
    assert m["fp"] == 0 and m["fn"] == 0 and m["f1"] == 100.0
    assert m["n"] == len(scenes) and m["dataset"] == "lanes-synth" and m["split"] == "test"
    assert m["x_error_px"] < 0.5 and m["start_error_px"] < 1
    assert TASK.headline(m)["tusimple_accuracy"] == m["accuracy"]
    assert "TuSimple accuracy" in TASK.describe(m)


def test_onnx_io_names(pico_lstr):
    io = TASK.onnx_io(pico_lstr.info)
    assert io.inputs == ("input",) and io.outputs == ("logits", "curves")
    assert io.dynamic["curves"] == {0: "batch"}


def test_lanes_picture(tmp_path, pico_lstr, scenes):
    from PIL import Image

    from tvc.tasks.lanes import lanes_picture

    data = LaneData(scenes, pico_lstr.info.input_size, pico_lstr.info.mean, pico_lstr.info.std)
    p = TASK.predictor(pico_lstr)
    out = lanes_picture(data, {"a": p, "b": p}, tmp_path / "lanes.png", n=3, scale=2)
    with Image.open(out) as im:
        assert im.size == (2 * 128 * 2, 3 * 72 * 2)
        px = np.asarray(im.convert("RGB"))
    assert ((px == [40, 220, 60]).all(-1)).sum() > 50  # ground-truth points drawn


def test_recipe_is_valid():
    from tvc.demo import demo_recipe
    from tvc.pipeline.recipe import load_recipe

    assert demo_recipe(lanes=True) == "lanes-synth"
    recipe = load_recipe("lanes-synth")
    assert recipe.data == "lanes-synth"


def test_demo_picture_joins_both_reports_once(tmp_path, pico_lstr):
    """After `tvc demo --lanes`: lanes.png beside the reports, linked from each exactly once
    (a second call, as on a re-run, adds nothing), written whole."""
    import json
    import shutil
    from types import SimpleNamespace

    from tvc.tasks.lanes import demo_picture

    for stage in ("teacher-onnx", "student-onnx"):
        (tmp_path / stage).mkdir()
    export_lanes_onnx(pico_lstr, tmp_path / "teacher-onnx/model.onnx")
    shutil.copy(tmp_path / "teacher-onnx/model.onnx", tmp_path / "student-onnx/model.int8.onnx")
    meta = {"model": pico_lstr.info.to_json()}
    (tmp_path / "student-onnx/artifact.json").write_text(json.dumps(meta))
    results = [SimpleNamespace(step=SimpleNamespace(id=s), output=tmp_path / s)
               for s in ("teacher-onnx", "student-onnx")]  # fmt: skip
    (tmp_path / "report").mkdir()
    md, page = tmp_path / "report/report.md", tmp_path / "report/report.html"
    md.write_text("# report\n")
    page.write_text("<html><body><p>report</p></body></html>")
    for _ in range(2):
        lines = demo_picture(results, [md, page], n=2)
    assert lines == [f"lanes: {tmp_path / 'report/lanes.png'}"]
    assert (tmp_path / "report/lanes.png").read_bytes()[:4] == b"\x89PNG"
    assert md.read_text().count("![") == 1 and page.read_text().count("<figure>") == 1
    assert page.read_text().endswith("</figure></body></html>")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "lanes.png", "report.html", "report.md"]  # fmt: skip


def test_the_torch_backend_runs_a_lane_model_as_its_onnx_graph_is_named(pico_lstr):
    """tvc eval / bench --backend torch on an LSTR artifact: the runner answers with the
    task's output names and shapes (it assumed a classifier's single logits before)."""
    import numpy as np

    from tvc.stages.torch_backend import TorchRunner
    from tvc.tasks.lanes import LanesTask

    runner = TorchRunner(pico_lstr)
    x = runner.sample_feeds(2)
    got = runner.infer(x)
    want = LanesTask().outputs(pico_lstr.model, x["input"])
    assert [s.name for s in runner.outputs] == ["logits", "curves"] == list(got)
    for spec in runner.outputs:
        assert got[spec.name].shape[1:] == spec.shape[1:]
        np.testing.assert_array_equal(got[spec.name], want[spec.name])
