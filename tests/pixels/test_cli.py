import pytest
import torch
from click.testing import CliRunner

from tvc.cli.main import cli
from tvc.tasks.pixels import PixelsTask, onnx_predictor


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fmnist_dir):
    from tvc.artifact import load_artifact, write_artifact
    from tvc.models.igpt import igpt_from_name
    from tvc.models.load import save_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    loaded = igpt_from_name("igpt_pico", warn_random=False)
    d = tmp_path_factory.mktemp("igpt_cli")
    with write_artifact(d / "model", "model", spec={"stage": "test"}) as w:
        save_model(w, loaded)
    calib = f"pixels:fashion-mnist:{fmnist_dir}"
    args = ["export", str(d / "model"), "-o", str(d / "exported"), "--dynamic-batch"]
    res = CliRunner().invoke(cli, [*args, "--int8", "--calib", calib, "--fp16"])
    assert res.exit_code == 0, res.output
    return loaded, d / "model", load_artifact(d / "exported")


def test_export_writes_both_graphs_int8_fp16_and_the_palette(exported, synth):
    loaded, _, art = exported
    names = {p.name for p in art.path.iterdir()}
    assert {
        "model.onnx",
        "decoder.onnx",
        "model.int8.onnx",
        "decoder.int8.onnx",
        "model.fp16.onnx",
    } <= names
    m = art.meta["metrics"]
    assert m["extra_graphs"]["decoder.onnx"]["greedy_identical_torch_vs_ort_cache"]
    assert m["parity"]["ok"] and m["parity"]["max_abs_diff"] < 1e-3
    assert art.meta["model"]["extra"]["palette"] == loaded.info.extra["palette"]
    task = PixelsTask()
    from tvc.tasks.pixels import PixelData

    data = PixelData(synth)
    fp32 = task.evaluate(onnx_predictor(art.path / "model.onnx", 1), data)["bpd"]
    int8 = task.evaluate(onnx_predictor(art.path / "model.int8.onnx", 1), data)["bpd"]
    assert abs(int8 - fp32) < 0.05


@pytest.mark.parametrize("which", ["onnx", "model"])
def test_tvc_generate_saves_a_grid(exported, fmnist_dir, tmp_path, which):
    _, model_dir, art = exported
    target = art.path if which == "onnx" else model_dir
    out = tmp_path / "grid.png"
    r = CliRunner().invoke(
        cli,
        [
            "generate",
            str(target),
            "--prefix-rows",
            "4",
            "-n",
            "3",
            "--data",
            f"pixels:fashion-mnist:{fmnist_dir}",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "completed 3 images from 4 rows" in r.output and out.is_file()
    from PIL import Image

    assert Image.open(out).size == (3 * (8 * 4 + 2) + 2, 3 * (8 * 4 + 2) + 2)


def test_tvc_generate_refuses_bad_rows_in_one_line(exported, fmnist_dir):
    _, _, art = exported
    r = CliRunner().invoke(
        cli,
        [
            "generate",
            str(art.path),
            "--prefix-rows",
            "9",
            "--data",
            f"pixels:fashion-mnist:{fmnist_dir}",
        ],
    )
    assert r.exit_code == 2 and "error: --prefix-rows must be in 0..7" in r.output


def test_tvc_generate_keeps_an_existing_grid_without_force_and_refuses_other_formats(
    exported, fmnist_dir, tmp_path
):
    _, _, art = exported
    data = f"pixels:fashion-mnist:{fmnist_dir}"
    base = ["generate", str(art.path), "--prefix-rows", "4", "-n", "2", "--data", data]
    out = tmp_path / "grid.png"
    out.write_bytes(b"the user's picture")
    r = CliRunner().invoke(cli, [*base, "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert out.read_bytes() == b"the user's picture"  # untouched
    r = CliRunner().invoke(cli, [*base, "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left
    for bad in ("grid", "grid.jpg"):  # not a PNG path: refused in one line, nothing written
        r = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / bad)])
        assert r.exit_code == 2 and "must end in .png" in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
        assert not (tmp_path / bad).exists()


def test_tvc_train_finetunes_an_igpt_and_keeps_the_weight_average(fmnist_dir, tmp_path):
    from tvc.artifact import load_artifact

    out = tmp_path / "tuned"
    args = ["train", "igpt_pico", "-o", str(out), "--data", f"pixels:fashion-mnist:{fmnist_dir}"]
    r = CliRunner().invoke(cli, [*args, "--finetune", "--ema", "0.9", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    meta = load_artifact(out).meta
    training = meta["metrics"]["training"]
    assert training["objective"] == "finetune" and training["config"]["ema"] == 0.9
    assert "class_top1" in meta["metrics"] and meta["spec"]["options"]["ema"] == 0.9


@pytest.mark.parametrize(
    ("model", "data", "flag"),
    [
        ("vit_tiny_patch16_224", "fashion-mnist", ["--finetune"]),
        ("detr_pico", "fashion-mnist-det", ["--ema", "0.99"]),
    ],
)
def test_tvc_train_refuses_igpt_options_for_other_models(tmp_path, model, data, flag):
    out = tmp_path / "m"
    r = CliRunner().invoke(cli, ["train", model, "-o", str(out), "--data", data, *flag])
    assert r.exit_code == 2 and not out.exists()
    assert f"{flag[0]} does not apply" in r.output and "Image GPT" in r.output


def test_tvc_train_refuses_an_ema_decay_of_one(tmp_path):
    r = CliRunner().invoke(
        cli, ["train", "igpt_pico", "-o", str(tmp_path / "m"), "--data", "fashion-mnist-pixels",
              "--finetune", "--ema", "1"]
    )  # fmt: skip
    assert r.exit_code == 2 and "--ema" in r.output and "Traceback" not in r.output


def test_the_pytorch_model_artifact_is_evaluated_and_timed_by_the_torch_backend(
    exported, fmnist_dir, tmp_path
):
    """Not only its exported graphs: the torch backend feeds it token ids (an iGPT takes no
    images) and reads the task's outputs."""
    import json

    _, model_dir, _ = exported
    data = f"pixels:fashion-mnist:{fmnist_dir}"
    r = CliRunner().invoke(cli, ["eval", str(model_dir), "--data", data])
    assert r.exit_code == 0, r.output
    assert "[torch]" in r.output and "bits/dim" in r.output
    out = tmp_path / "bench.json"
    args = ["bench", str(model_dir), "--backend", "torch", "--json", str(out)]
    r = CliRunner().invoke(cli, [*args, "--warmup-s", "0", "--min-runs", "3", "--min-time-s", "0"])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert '"torch"' in text and json.loads(text)
