"""DETR and Deformable DETR behind tvc's MODEL argument: names, HF directories, artifacts."""

from __future__ import annotations

import pytest
import torch

from tvc.artifact import load_artifact, write_artifact
from tvc.models import load_model
from tvc.models.detection import DETECTION_CONFIGS, is_detector
from tvc.models.load import model_from_artifact, save_model


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_small_configs_return_logits_and_normalised_boxes(fixture, request):
    loaded = request.getfixturevalue(fixture)
    model, info = loaded.model, loaded.info
    assert is_detector(loaded) and info.family == "hf-det"
    assert info.input_size == (3, 64, 64)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    with torch.no_grad():
        logits, boxes = model(torch.randn(2, 3, 64, 64))
    extra = 1 if info.extra["no_object_class"] else 0
    assert logits.shape == (2, 10, 10 + extra) and boxes.shape == (2, 10, 4)
    assert boxes.min() >= 0 and boxes.max() <= 1


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_hf_directory_and_artifact_round_trips(fixture, request, tmp_path):
    loaded = request.getfixturevalue(fixture)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = loaded.model(x)
    loaded.model.inner.save_pretrained(tmp_path / "hf")
    from_dir = load_model(str(tmp_path / "hf"))
    with write_artifact(tmp_path / "art", "model") as w:
        save_model(w, loaded)
    from_art = model_from_artifact(load_artifact(tmp_path / "art"))
    assert from_art.info.extra["task"] == "detection"
    for other in (from_dir, from_art):
        with torch.no_grad():
            got = other.model(x)
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
    # A new label set re-initialises only the class head.
    three = load_model(str(tmp_path / "hf"), num_classes=3)
    assert three.info.num_classes == 3
    with torch.no_grad():
        logits, _ = three.model(x)
    assert logits.shape[-1] == 3 + (1 if loaded.info.extra["no_object_class"] else 0)


def test_weights_missing_from_a_detector_directory_are_said_in_one_line(
    tiny_detr, tmp_path, caplog, capfd
):
    """A checkpoint without its box head loads with a random one: tvc says so in one warning,
    and transformers' own multi-line load report stays off the terminal."""
    from safetensors.torch import load_file, save_file

    tiny_detr.model.inner.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf/model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if "bbox_predictor" not in k}, weights)
    with caplog.at_level("WARNING", logger="tvc"):
        load_model(str(tmp_path / "hf"))
    assert "holds no weights for its head (bbox_predictor." in caplog.text
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_registry_lists_small_detectors():
    assert {"detr_pico", "deformable_detr_pico"} <= set(DETECTION_CONFIGS)
    assert all(c.model_type in ("detr", "deformable_detr") for c in DETECTION_CONFIGS.values())
