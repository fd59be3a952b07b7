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
