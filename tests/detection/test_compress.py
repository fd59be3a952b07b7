"""Pruning heads and FFN channels and low-rank projections of detectors; rebuild from artifacts."""

from __future__ import annotations

import pytest
import torch

from tvc.artifact import load_artifact, write_artifact
from tvc.compress.detection import DetPruneConfig, compress_detector
from tvc.compress.lowrank import LowRankConfig
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models.load import model_from_artifact, save_model


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_prune_lowrank_save_and_rebuild(fixture, request, tmp_path):
    loaded = request.getfixturevalue(fixture)
    small, report = compress_detector(
        loaded, prune=DetPruneConfig(ratio=0.5), lowrank=LowRankConfig(rank_ratio=0.25)
    )
    assert report["params_after"] < 0.8 * report["params_before"]
    last = report["prune"]["layers"][-1]
    assert last["ffn"] == [128, 64] and last["heads"]["self_attn"] == [4, 2]
    assert report["lowrank"]["factorized"] > 0
    # The teacher is untouched; the student still predicts every query.
    assert sum(p.numel() for p in loaded.model.parameters()) == report["params_before"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        logits, boxes = small.model(x)
    assert torch.isfinite(logits).all() and boxes.shape == (1, 10, 4)
    with write_artifact(tmp_path / "small", "model") as w:
        save_model(w, small)
    rebuilt = model_from_artifact(load_artifact(tmp_path / "small"))
    with torch.no_grad():
        again = rebuilt.model(x)
    torch.testing.assert_close(again[0], logits)
    torch.testing.assert_close(again[1], boxes)


def test_pruned_heads_keep_the_head_width(tiny_detr):
    small, _ = compress_detector(tiny_detr, prune=DetPruneConfig(ratio=0.25, ffn=False))
    attn = small.model.inner.model.encoder.layers[0].self_attn
    assert attn.head_dim == 16 and attn.q_proj.out_features == 3 * 16
    assert attn.o_proj.in_features == 48 and attn.o_proj.out_features == 64


def test_compress_errors(tiny_detr, pico):
    with pytest.raises(ConfigError, match="--prune"):
        compress_detector(tiny_detr, prune=DetPruneConfig(ratio=1.5))
    with pytest.raises(ConfigError, match="nothing to do"):
        compress_detector(tiny_detr)
    with pytest.raises(UnsupportedModelError, match="not a detection model"):
        compress_detector(pico, prune=DetPruneConfig())
