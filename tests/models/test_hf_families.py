"""Hugging Face directories of each ViT family: normalisation statistics and input size."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tvc.models import load_model

transformers = pytest.importorskip("transformers")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8, num_labels=3)  # fmt: skip
BUILD = {
    "vit": ("ViTConfig", "ViTForImageClassification"),
    "deit": ("DeiTConfig", "DeiTForImageClassification"),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification"),
    "beit": ("BeitConfig", "BeitForImageClassification"),
}


def save(kind: str, path, **extra):
    cfg_cls, model_cls = BUILD[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**TINY, **extra)
    getattr(transformers, model_cls)(cfg).eval().save_pretrained(path)
    return path


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def tvc_log():
    handler, logger = Lines(), logging.getLogger("tvc")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("kind", "mean", "said"),
    [
        ("vit", (0.5, 0.5, 0.5), "ViT's 0.5/0.5"),
        ("deit", IMAGENET_MEAN, "DeiT's ImageNet"),
        ("dinov2", IMAGENET_MEAN, "DINOv2's ImageNet"),
        ("beit", (0.5, 0.5, 0.5), "BEiT's 0.5/0.5"),
    ],
)
def test_without_a_processor_file_the_family_statistics_are_used_and_said(
    tmp_path, tvc_log, kind, mean, said
):
    loaded = load_model(str(save(kind, tmp_path / kind)))
    assert loaded.info.mean == pytest.approx(mean)
    assert [ln for ln in tvc_log if "no preprocessor_config.json" in ln and said in ln]


def test_a_processor_file_wins_without_a_warning(tmp_path, tvc_log):
    path = save("dinov2", tmp_path / "d")
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]})
    )
    loaded = load_model(str(path))
    assert loaded.info.mean == pytest.approx((0.1, 0.2, 0.3))
    assert loaded.info.std == pytest.approx((0.4, 0.5, 0.6))
    assert not [ln for ln in tvc_log if "preprocessor_config" in ln]


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("vit", {}),
        ("deit", {}),
        ("dinov2", {}),
        ("beit", {"use_relative_position_bias": True}),
        (
            "beit",
            {"use_absolute_position_embeddings": True, "use_shared_relative_position_bias": True},
        ),
    ],
)
def test_input_size_resizes_position_embeddings_as_the_family_does(tmp_path, kind, extra):
    """The resized model at 48 px computes what transformers computes on the 32-px model when
    it interpolates at run time, and the artifact records and rebuilds the new size."""
    from tvc.artifact import write_artifact
    from tvc.models.load import save_model

    path = save(kind, tmp_path / kind, **extra)
    native = load_model(str(path))
    with torch.no_grad():  # large enough that a wrongly resized table shows
        for name, p in native.model.named_parameters():
            if "position" in name:
                p.normal_()
    native.model.inner.save_pretrained(path)
    native = load_model(str(path))
    resized = load_model(str(path), input_size=48)
    assert resized.info.input_size == (3, 48, 48)
    assert resized.info.extra["resized"]["from"] == 32
    for name, p in resized.model.named_parameters():  # the tables themselves are 48-px tables
        if name.endswith("position_embeddings"):
            assert p.shape[1] == 36 + (2 if kind == "deit" else 1)
        if name.endswith("relative_position_bias_table"):
            assert p.shape[0] == 11 * 11 + 3
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = native.model.inner(pixel_values=x, interpolate_pos_encoding=True).logits
        if kind == "beit":  # BEiT resizes its relative tables on the fly, without the flag
            want = native.model.inner(pixel_values=x).logits
        got = resized.model(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    with write_artifact(tmp_path / "art", "model") as w:
        save_model(w, resized)
    again = load_model(str(tmp_path / "art"))
    assert again.info.input_size == (3, 48, 48)
    with torch.no_grad():
        assert torch.equal(again.model(x), got)


def test_input_size_must_be_a_multiple_of_the_patch(tmp_path):
    from tvc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"multiple of the patch size 8.*--input-size 48"):
        load_model(str(save("vit", tmp_path / "v")), input_size=50)


def test_compress_and_export_a_directory_at_another_input_size(tmp_path):
    from click.testing import CliRunner

    from tvc.artifact import load_artifact
    from tvc.cli import cli

    path = save("dinov2", tmp_path / "dino", mlp_ratio=2)
    out = tmp_path / "small"
    res = CliRunner().invoke(cli, ["compress", str(path), "--input-size", "48", "--prune", "0.5",
                                   "--round-to", "4", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    model = load_artifact(out).meta["model"]
    assert model["input_size"] == [3, 48, 48] and model["extra"]["resized"]["to"] == 48
    res = CliRunner().invoke(cli, ["export", str(out), "-o", str(tmp_path / "onnx")])
    assert res.exit_code == 0, res.output
    meta = load_artifact(tmp_path / "onnx").meta
    assert meta["io"]["inputs"][0]["shape"][-2:] == [48, 48]
    assert meta["metrics"]["parity"]["ok"]
    res = CliRunner().invoke(cli, ["export", str(out), "--input-size", "64", "-o",
                                   str(tmp_path / "o2")])  # fmt: skip
    assert res.exit_code == 2 and "keeps the size it was made at (48 px)" in res.output


def test_export_a_directory_at_another_input_size(tmp_path):
    """`tvc export DIR --input-size N` exports at N (the issue: it used to keep the config's)."""
    from click.testing import CliRunner

    from tvc.artifact import load_artifact
    from tvc.cli import cli

    path = save("dinov2", tmp_path / "dino", mlp_ratio=2)
    args = ["export", str(path), "--input-size", "64", "-o", str(tmp_path / "onnx")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    meta = load_artifact(tmp_path / "onnx").meta
    assert meta["io"]["inputs"][0]["shape"][-2:] == [64, 64]
    assert meta["model"]["input_size"] == [3, 64, 64] and meta["metrics"]["parity"]["ok"]
