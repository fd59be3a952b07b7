"""Pruning heads and FFN channels and low-rank projections of detectors; rebuild from artifacts."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from tvc.artifact import load_artifact, write_artifact
from tvc.compress.detection import DetPruneConfig, compress_detector, prune_detector
from tvc.compress.lowrank import LowRankConfig
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.export.onnx import OnnxExportConfig
from tvc.models import load_model
from tvc.models.load import model_from_artifact, save_model
from tvc.stages.export import export_loaded


def _deformable(model):
    """The multi-scale deformable attentions of a Deformable DETR, by name."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "sampling_offsets")}


def _distinct_heads(loaded):
    """A copy whose deformable heads look at different places with different weights.

    transformers initialises sampling_offsets and attention_weights weights to zero, so at init
    they would not tell heads apart and a wrong slice of their rows would go unnoticed.
    """
    model = copy.deepcopy(loaded.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in _deformable(model).values():
            for lin, std in ((m.sampling_offsets, 0.05), (m.attention_weights, 0.5)):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)
    return dataclasses.replace(loaded, model=model)


@pytest.mark.parametrize("fixture", ["tiny_detr", "tiny_deformable"])
def test_prune_lowrank_save_and_rebuild(fixture, request, tmp_path):
    loaded = request.getfixturevalue(fixture)
    small, report = compress_detector(
        loaded, prune=DetPruneConfig(ratio=0.5), lowrank=LowRankConfig(rank_ratio=0.25)
    )
    assert report["params_after"] < 0.8 * report["params_before"]
    last = report["prune"]["layers"][-1]
    assert last["ffn"] == [128, 64] and last["heads"]["self_attn"] == [4, 2]
    if fixture == "tiny_deformable":  # every deformable attention, encoder and decoder
        layers = report["prune"]["layers"]  # encoder self_attn, decoder encoder_attn
        deformable = [
            e["heads"]["self_attn" if ".encoder." in e["layer"] else "encoder_attn"] for e in layers
        ]
        assert deformable == [[4, 2]] * 4
        attrs = small.info.structure["attrs"]
        assert attrs["inner.model.decoder.layers.1.encoder_attn"] == {"n_heads": 2, "d_model": 32}
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


def test_deformable_heads_prune_exactly_when_the_dropped_heads_are_dead(tiny_deformable):
    """Heads 1 and 3 contribute nothing: pruning half the heads must drop exactly them and leave
    every output unchanged (each head's softmax is over its own levels x points)."""
    loaded = _distinct_heads(tiny_deformable)
    model, dead = loaded.model, torch.tensor([1, 3])
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "sampling_offsets"):  # deformable: value rows, output columns
                hd = m.d_model // m.n_heads
                rows = (dead[:, None] * hd + torch.arange(hd)).reshape(-1)
                m.value_proj.weight[rows] = 0
                m.value_proj.bias[rows] = 0
                m.output_proj.weight[:, rows] = 0
            elif hasattr(m, "o_proj"):  # standard attention, also pruned at ratio 0.5
                rows = (dead[:, None] * m.head_dim + torch.arange(m.head_dim)).reshape(-1)
                for lin in (m.q_proj, m.k_proj, m.v_proj):
                    lin.weight[rows] = 0
                    lin.bias[rows] = 0
                m.o_proj.weight[:, rows] = 0
    before = {n: copy.deepcopy(m) for n, m in _deformable(model).items()}
    pruned = copy.deepcopy(model)
    report = prune_detector(pruned, DetPruneConfig(ratio=0.5, ffn=False))
    assert all(h == [4, 2] for e in report["layers"] for h in e["heads"].values())
    for name, m in _deformable(pruned).items():
        assert (m.n_heads, m.d_model, m.n_levels, m.n_points) == (2, 32, 3, 2)
        assert m.value_proj.out_features == m.output_proj.in_features == 32
        assert m.output_proj.out_features == 64
        assert m.sampling_offsets.out_features == 2 * 3 * 2 * 2
        assert m.attention_weights.out_features == 2 * 3 * 2
        old = before[name]  # heads 0 and 2 kept, in order
        torch.testing.assert_close(
            m.sampling_offsets.weight, old.sampling_offsets.weight[[*range(12), *range(24, 36)]]
        )
        torch.testing.assert_close(
            m.attention_weights.weight, old.attention_weights.weight[[*range(6), *range(12, 18)]]
        )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), pruned(x)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_pruned_deformable_artifact_reloads_by_name(tiny_deformable, tmp_path):
    """Saved with save_model, reloaded with load_model: same shapes, same outputs."""
    small, _ = compress_detector(
        _distinct_heads(tiny_deformable), prune=DetPruneConfig(ratio=0.5, ffn=False)
    )
    with write_artifact(tmp_path / "small", "model") as w:
        save_model(w, small)
    again = load_model(str(tmp_path / "small"))
    for m in _deformable(again.model).values():
        assert (m.n_heads, m.d_model) == (2, 32)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = small.model(x), again.model(x)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("sampling", ["gather", "grid"])
def test_pruned_deformable_export_parity(tiny_deformable, tmp_path, sampling):
    """tvc's samplers take the head count from the pruned value tensor, not from the config."""
    small, _ = compress_detector(_distinct_heads(tiny_deformable), prune=DetPruneConfig(0.5))
    cfg = OnnxExportConfig(sampling=sampling, simplify=False, parity_samples=2)
    art = export_loaded(small, tmp_path / sampling, cfg)
    p = art.meta["metrics"]["parity"]
    assert p["ok"] and p["class_agreement"] == 1.0
    assert p["logits_max_abs_diff"] < 1e-4 and p["boxes_max_abs_diff"] < 1e-4
    assert art.meta["metrics"]["sampling"] == sampling
