import numpy as np
import pytest
import torch

from tvc.compress.igpt import prune_igpt, record_structure
from tvc.data.pixels import levels_palette, synthetic_pixels
from tvc.tasks import task_for_data, task_for_info, task_for_model, task_named
from tvc.tasks.pixels import PixelData, PixelsTask


@pytest.fixture
def task():
    return PixelsTask()


def _save(loaded, out):
    from tvc.artifact import write_artifact
    from tvc.models.load import save_model

    with write_artifact(out, "model", spec={"stage": "test"}) as w:
        save_model(w, loaded)
    return out


def test_registry_routes_igpt_models_info_and_data(igpt_loaded, tmp_path):
    assert task_named("pixels").metric == "bpd"
    assert task_for_model("igpt_pico").name == "pixels"
    assert task_for_model("vit_pico").name != "pixels"
    assert task_for_info(igpt_loaded.info).name == "pixels"
    assert task_for_data("fashion-mnist-pixels").name == "pixels"
    assert task_for_data("pixels:fashion-mnist:/x").name == "pixels"
    assert task_for_data("fashion-mnist").name == "classification"
    art = _save(igpt_loaded, tmp_path / "art")
    assert task_for_model(str(art)).name == "pixels"
    bpd = next(c for c in PixelsTask.columns if c.key == "bpd")
    assert bpd.higher_is_better is False


def test_sample_inputs_outputs_and_agreement(task, igpt_loaded, fmnist_dir):
    x, what = task.sample_inputs(igpt_loaded.info, None, 3)
    assert x.dtype == torch.int64 and x.shape == (3, 64) and what == "random tokens"
    out = task.outputs(igpt_loaded.model, x)
    assert tuple(out) == task.onnx_io(igpt_loaded.info).outputs
    assert out["logits"].shape == (3, 64, 8)
    same = task.agreement(out, out)
    assert same["max_abs_diff"] == 0 and same["agreement"] == 1.0
    moved = dict(out, logits=out["logits"] + np.eye(8)[np.zeros((3, 64), int)] * 100)
    assert task.agreement(out, moved)["agreement"] < 0.5
    x2, what2 = task.sample_inputs(igpt_loaded.info, f"pixels:fashion-mnist:{fmnist_dir}", 4)
    assert x2.shape == (4, 64) and "test" in what2


def test_evaluate_reports_bpd_probe_and_agreement(task, igpt_loaded, synth):
    data = PixelData(synthetic_pixels(60, (8, 8), levels_palette(8), seed=1), synth)
    predict = task.predictor(igpt_loaded)
    q = task.evaluate(predict, data, reference=predict)
    assert 2.0 < q["bpd"] < 4.0 and q["n"] == 60 and q["split"] == "test"
    assert q["probe_accuracy"] >= 90.0  # the band is linearly visible even in random features
    assert q["agreement"] == 1.0 and "class_top1" not in q
    head = task.headline(q)
    assert head["bpd"] == q["bpd"] and head["pixels"] is q
    assert "bits/dim" in task.describe(q)
    # the progress total counts every image the model runs on: test images and probe fitting
    seen = []
    task.evaluate(lambda x: (seen.append(len(x)), predict(x))[1], data)
    assert task.eval_size(data) == sum(seen) == 60 + len(synth)
    assert task.eval_size(PixelData(data.pixels)) == 60


def test_load_data_uses_the_models_palette_and_resolution(task, igpt_loaded, fmnist_dir):
    data = task.load_data(f"pixels:fashion-mnist:{fmnist_dir}", "test", igpt_loaded.info)
    assert data.pixels.tokens.shape == (20, 64) and data.pixels.tokens.max() < 8
    assert data.probe_train is not None and len(data.probe_train) == 54  # train minus val


def test_prune_record_structure_and_rebuild(task, igpt_loaded, tokens, tmp_path):
    from tvc.models.load import load_model

    report = task.prune(igpt_loaded.model, {"prune": 0.5, "round_to": 8}, example=None)
    assert report["params_after"] < report["params_before"]
    assert [b["heads"] for b in report["blocks"]] == [[2, 1], [2, 1]]
    assert igpt_loaded.model.blocks[0].mlp.fc1.out_features == 32
    ref = task.outputs(igpt_loaded.model, tokens)
    record_structure(igpt_loaded)
    again = load_model(str(_save(igpt_loaded, tmp_path / "pruned")))
    assert again.model.blocks[1].attn.num_heads == 1
    got = task.outputs(again.model, tokens)
    assert all(np.allclose(ref[k], got[k], atol=1e-6) for k in ref)
    with pytest.raises(Exception, match="must be in"):
        prune_igpt(igpt_loaded.model, 1.5)


def test_factorize_keeps_outputs_close_at_full_energy(task, igpt_loaded, tokens):
    from tvc.compress.lowrank import LowRankConfig

    ref = task.outputs(igpt_loaded.model, tokens)
    r = task.factorize(igpt_loaded.model, LowRankConfig(rank_ratio=0.5, round_to=1), samples=None)
    assert r["factorized"] > 0
    low = task.outputs(igpt_loaded.model, tokens)
    assert low["logits"].shape == ref["logits"].shape
    igpt_loaded.model.step(torch.zeros(1, 1, dtype=torch.int64), *igpt_loaded.model.empty_cache(1))


def test_distill_and_train_through_the_adapter(task, fmnist_dir):
    from tvc.models.igpt import igpt_from_name

    spec = f"pixels:fashion-mnist:{fmnist_dir}"
    torch.manual_seed(0)
    teacher = igpt_from_name("igpt_pico", warn_random=False)
    metrics = task.train(teacher, spec, {"max_steps": 4, "batch_size": 16, "epochs": 0})
    assert metrics["training"]["objective"] == "pretrain" and np.isfinite(metrics["bpd"])
    assert "probe_accuracy" in metrics
    student = igpt_from_name("igpt_pico", warn_random=False)
    task.prune(student.model, {"prune": 0.5}, example=None)
    report = task.distill(student, teacher, spec, {"max_steps": 3, "batch_size": 16, "epochs": 0})
    assert report["steps"] == 3
    tuned = task.train(
        teacher, spec, {"max_steps": 3, "batch_size": 16, "epochs": 0, "finetune": True}
    )
    assert tuned["training"]["objective"] == "finetune" and "class_top1" in tuned
    assert teacher.info.extra["finetuned"] is True


def test_a_missing_test_split_is_refused_before_any_training(task, fmnist_dir, tmp_path):
    import shutil

    from tvc.errors import DataError
    from tvc.models.igpt import igpt_from_name

    for f in fmnist_dir.glob("train-*"):  # the training files only: no t10k-*
        shutil.copy(f, tmp_path / f.name)
    torch.manual_seed(0)
    model = igpt_from_name("igpt_pico", warn_random=False)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    with pytest.raises(DataError, match="t10k"):
        task.train(model, f"pixels:fashion-mnist:{tmp_path}", {"max_steps": 2, "epochs": 0})
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # not one step was taken


def test_extra_graphs_exports_a_proven_decoder(task, igpt_loaded, tmp_path):
    facts = task.extra_graphs(igpt_loaded, tmp_path, 17)
    assert (tmp_path / "decoder.onnx").is_file()
    f = facts["decoder.onnx"]
    assert f["greedy_identical_torch_vs_ort_cache"] and f["greedy_identical_ort_cache_vs_full"]
    assert f["prefill_logits"]["ok"] and f["step_logits"]["ok"]
