"""Tiny ViTs for the compression tests (timm, timm distilled, Hugging Face), built in code."""

from __future__ import annotations

import pytest
import torch

from tvc.models.load import LoadedModel


@pytest.fixture
def x():
    """Four fixed 32x32 RGB inputs."""
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A tiny ViTForImageClassification (2 layers, width 64, 4 heads) saved with save_pretrained."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, num_labels=10)  # fmt: skip
    path = tmp_path_factory.mktemp("hf") / "tiny-vit"
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture
def hf_tiny(hf_dir) -> LoadedModel:
    from tvc.models import load_model

    return load_model(str(hf_dir))


@pytest.fixture(scope="session")
def pico_art(tmp_path_factory, pico):
    """vit_pico's exact weights as a model artifact, so CLI runs start from known weights."""
    from tvc.artifact import write_artifact
    from tvc.models.load import save_model

    out = tmp_path_factory.mktemp("pico-art") / "model"
    with write_artifact(out, "model") as w:
        save_model(w, pico)
    return out
