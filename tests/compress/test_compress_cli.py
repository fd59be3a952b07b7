from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tvc.artifact import load_artifact
from tvc.cli import cli
from tvc.compress.report import count_macs, count_params
from tvc.errors import ConfigError
from tvc.export.onnx import OnnxExportConfig
from tvc.models import load_model
from tvc.stages import get_stage
from tvc.stages.compress import Config
from tvc.stages.export import export_loaded
from tvc.tasks.classification import ClassificationTask

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_prune_writes_a_reloadable_artifact_with_its_report(tmp_path, pico, pico_art):
    out = tmp_path / "pruned"
    res = run("compress", pico_art, "-o", out, "--prune", "0.3")
    assert res.exit_code == 0, res.output
    assert "tvc compress" in res.output and "16 -> 8" in res.output and "wrote" in res.output
    art = load_artifact(out)
    assert art.kind == "model" and art.meta["spec"]["prune"]["ratio"] == 0.3
    assert art.meta["parent"]["id"] == load_artifact(pico_art).id
    report = art.meta["metrics"]["compression"]
    assert report["before"]["params"] == count_params(pico.model)
    assert report["after"]["widths"]["embed"] == 48
    assert report["ratios"]["macs"] < 0.6
    # The reloaded model is the one the report describes, to the last bit.
    again = load_model(str(out))
    assert report["after"]["params"] == art.meta["metrics"]["params"] == count_params(again.model)
    assert report["after"]["macs"] == count_macs(again.model, (3, 32, 32))
    task = ClassificationTask()
    samples, source = task.sample_inputs(pico.info, None, 8)
    agree = task.agreement(task.outputs(pico.model, samples), task.outputs(again.model, samples))
    assert {"inputs": source, **agree} == report["agreement"]
    # the width ratio's meaning, in numbers: params and MACs vs the parent
    line = f"pruned 30% of each width: params {report['ratios']['params']:.2f}x, MACs "
    assert line in " ".join(res.output.split())


def test_prune_params_removes_that_fraction_of_the_parameters(tmp_path):
    """--prune-params 0.3 solves the width ratio: about 0.70 of the parameters stay (while
    --prune 0.3, 30% of every width, leaves far fewer)."""
    res = run("compress", "vit_pico", "-o", tmp_path / "p", "--prune-params", "0.3",
              "--round-to", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    art = load_artifact(tmp_path / "p")
    report = art.meta["metrics"]["compression"]
    kept = report["after"]["params"] / report["before"]["params"]
    assert kept == pytest.approx(0.70, abs=0.02)
    ratio = art.meta["spec"]["prune"]["ratio"]
    assert 0 < ratio < 0.3 and art.meta["spec"]["prune"]["params_target"] == 0.3
    assert report["prune"]["params_target"]["remove"] == 0.3
    assert "(--prune-params 0.3: target 0.70x)" in " ".join(res.output.split())
    width = run("compress", "vit_pico", "-o", tmp_path / "w", "--prune", "0.3", "--round-to", "1")
    assert width.exit_code == 0, width.output
    by_width = load_artifact(tmp_path / "w").meta["metrics"]["compression"]
    assert by_width["after"]["params"] / by_width["before"]["params"] < kept - 0.1


def test_compressed_artifact_can_be_pruned_again(tmp_path):
    assert run("compress", "vit_pico", "-o", tmp_path / "a", "--prune", "0.5").exit_code == 0
    res = run("compress", tmp_path / "a", "-o", tmp_path / "b", "--prune", "0.5", "--round-to", "4")
    assert res.exit_code == 0, res.output
    art = load_artifact(tmp_path / "b")
    assert art.meta["metrics"]["compression"]["after"]["widths"]["embed"] == 16
    assert art.meta["parent"]["path"] == "../a"  # relative to the artifact that records it
    assert load_model(str(tmp_path / "b")).model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_prune_then_lowrank_exports_to_matching_onnx(tmp_path):
    out = tmp_path / "small"
    res = run("compress", "vit_pico", "-o", out, "--prune", "0.3", "--lowrank-rank", "8")
    assert res.exit_code == 0, res.output
    assert "low-rank: 8 layers factorized" in res.output
    res = run("export", out, "-o", tmp_path / "onnx")
    assert res.exit_code == 0, res.output
    parity = load_artifact(tmp_path / "onnx").meta["metrics"]["parity"]
    assert parity["ok"] and parity["top1_agreement"] == 1.0


def test_hf_vit_directory_prunes_and_exports(tmp_path, hf_dir):
    out = tmp_path / "hf-pruned"
    res = run("compress", hf_dir, "-o", out, "--prune", "0.5", "--prune-heads", "--lowrank", "0.9")
    assert res.exit_code == 0, res.output
    art = export_loaded(load_model(str(out)), tmp_path / "onnx", OnnxExportConfig())
    assert art.meta["metrics"]["parity"]["ok"]


def test_distilled_deit_exports_after_pruning(tmp_path):
    res = run("compress", "deit_pico_distilled", "-o", tmp_path / "d", "--prune", "0.3")
    assert res.exit_code == 0, res.output
    assert export_loaded(load_model(str(tmp_path / "d")), tmp_path / "onnx",
                       OnnxExportConfig()).meta["metrics"]["parity"]["ok"]  # fmt: skip


@pytest.mark.skipif(not FASHION.is_file(), reason="needs Debian's dataset-fashion-mnist")
def test_taylor_importance_scores_on_real_images(tmp_path):
    res = run("compress", "vit_pico", "-o", tmp_path / "t", "--prune", "0.3",
              "--importance", "taylor", "--data", "fashion-mnist")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = load_artifact(tmp_path / "t").meta["metrics"]["compression"]
    assert report["prune"]["importance"] == "taylor"
    assert report["agreement"]["inputs"] == "fashion-mnist val images"


@pytest.mark.skipif(not FASHION.is_file(), reason="needs Debian's dataset-fashion-mnist")
def test_distillation_runs_after_pruning_through_the_contract(tmp_path, pico_art, monkeypatch):
    """The pipeline hands the pruned student to distill(), evaluates it after and saves what
    it trained."""
    import tvc.compress.distill as distill_mod

    seen = {}

    def fake_distill(student, cfg, *, teacher=None):
        seen["embed"] = student.model.embed_dim
        seen["structure"] = student.info.structure
        seen["teacher"] = teacher.info.name
        with torch.no_grad():
            student.model.head.bias.fill_(0.5)
        return {"wall_s": 1.0}

    monkeypatch.setattr(distill_mod, "distill", fake_distill)
    cfg = Config.parse(
        {
            "model": str(pico_art),
            "output": str(tmp_path / "kd"),
            "prune": 0.3,
            "distill": "",
            "data": "fashion-mnist",
            "eval_limit": 64,
        }
    )
    art = get_stage("compress").run(cfg)
    assert seen["embed"] == 48 and seen["structure"]["params"]["cls_token"] == [1, 1, 48]
    quality = art.meta["metrics"]["compression"]["quality"]
    assert set(quality) == {"source", "compressed", "distilled"}
    assert art.meta["metrics"]["accuracy"] == quality["distilled"]
    assert quality["distilled"]["n"] == 64 and quality["distilled"]["agreement"] is not None
    assert torch.all(load_model(str(art.path)).model.head.bias == 0.5)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "1.5"], r"--prune must be in (0, 1), got 1.5"),
        (["--prune", "0"], r"--prune must be in (0, 1)"),
        (["--lowrank", "0"], r"--lowrank must be in (0, 1], got 0.0"),
        (["--lowrank", "1.2"], r"--lowrank must be in (0, 1]"),
        (["--lowrank", "0.9", "--lowrank-rank", "8"], "pass only one of them"),
        (["--lowrank-rank", "8.5"], "neither a whole rank nor a fraction"),
        ([], "compress has nothing to do"),
        (["--prune", "0.9", "--prune-heads"], "would remove every head of blocks.0.attn"),
        (["--prune", "0.8"], "every head dimension of blocks.0.attn"),
        (["--prune", "0.3", "--importance", "taylor"], "pass --data DATA"),
        (["--prune", "0.3", "--keep", "blocks.5"], "--keep 'blocks.5' names no part"),
        (["--global"], "--global only applies with --prune"),
        (["--prune", "0.3", "--prune-params", "0.3"], "set the pruning in two ways"),
        (["--prune-params", "1"], r"--prune-params must be in (0, 1)"),
        (["--prune", "0.3", "--epochs", "2"], "--epochs only applies with --distill"),
        (["--prune", "0.3", "--distill", "vit_pico"], "--distill needs --data"),
    ],
)
def test_bad_input_is_one_error_line_and_no_artifact(tmp_path, args, message):
    out = tmp_path / "never"
    res = run("compress", "vit_pico", "-o", out, *args)
    assert res.exit_code == 2, res.output
    assert f"error: {message}" in res.output or message in res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".never*"))  # no staging left behind


def test_unsupported_architecture_names_itself(tmp_path):
    res = run("compress", "resnet18", "--num-classes", "10", "-o", tmp_path / "r", "--prune", "0.3")
    assert res.exit_code == 2
    assert "error: cannot prune or factorize ResNet" in res.output
    assert not (tmp_path / "r").exists()
    res = run("compress", "resnet18", "--num-classes", "10", "-o", tmp_path / "m",
              "--merge-tokens", "4")  # fmt: skip
    assert res.exit_code == 2
    assert "error: cannot merge tokens of ResNet" in res.output


def test_nothing_to_do_is_a_config_error():
    with pytest.raises(ConfigError, match="nothing to do"):
        Config.parse({"model": "vit_pico", "output": "x"})
    with pytest.raises(ConfigError, match="unknown option 'prune_ratio'"):
        Config.parse({"model": "vit_pico", "output": "x", "prune_ratio": 0.3})
    assert Config.parse({"model": "vit_pico", "output": "x", "lowrank": 0.9}).prune is None
