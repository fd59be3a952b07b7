"""Label-free data importance (feature-matching Fisher): the estimator and what it prunes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tvc.compress.fisher import feature_fisher
from tvc.compress.prune import PruneConfig, prune
from tvc.compress.vit_layout import vit_layout
from tvc.errors import ConfigError


def test_fisher_of_a_linear_feature_layer_is_the_input_power():
    """f = W x: sum_k (d f_k / d W_ij)^2 = x_j^2 whatever the signs; a frozen layer has none."""
    torch.manual_seed(0)
    first, feat = nn.Linear(5, 5), nn.Linear(5, 3)
    first.requires_grad_(False)
    model = nn.Sequential(first, feat)
    xs = [torch.randn(1, 5) for _ in range(6)]
    fisher = feature_fisher(model, xs, seed=1)
    want = torch.stack([first(x)[0] ** 2 for x in xs]).mean(0)
    assert torch.allclose(fisher[feat.weight], want.expand(3, 5), rtol=1e-5)
    assert torch.allclose(fisher[feat.bias], torch.ones(3))
    assert first.weight not in fisher


def _dead_but_heavy(model: nn.Module, share: float = 0.3) -> nn.Module:
    """In every MLP, a share of hidden channels with large fc1 rows but (almost) no fc2 column:
    big weights that the output barely uses."""
    model = copy.deepcopy(model)
    for blk in model.blocks:
        fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
        n = int(fc1.out_features * share)
        with torch.no_grad():
            fc1.weight[:n] *= 10.0
            fc2.weight[:, :n] *= 1e-3
    return model


def _fidelity(ref: nn.Module, got: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        a, b = ref.forward_features(x)[:, 0], got.forward_features(x)[:, 0]
    return float(nn.functional.cosine_similarity(a, b).mean())


def test_data_importance_keeps_what_the_output_uses(pico):
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _dead_but_heavy(pico.model)
    batches = [(x[i : i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, 32, 8)]
    scores = {}
    for importance in ("magnitude", "data"):
        m = copy.deepcopy(model)
        cfg = PruneConfig(0.3, importance=importance, keep=("head", "embed", "attn"), round_to=1)
        prune(m, cfg, example_input=x[:1], batches=batches)
        assert all(p.grad is None for p in m.parameters())
        scores[importance] = _fidelity(model, m, x)
    # magnitude removes live channels and keeps the heavy dead ones; data removes the dead ones
    assert scores["data"] > 0.999
    assert scores["data"] > scores["magnitude"] + 0.01


def test_data_importance_needs_images(pico, x):
    with pytest.raises(ConfigError, match="data importance needs"):
        prune(copy.deepcopy(pico.model), PruneConfig(0.3, importance="data"), example_input=x[:1])


def test_data_importance_is_seeded_and_prunes_every_width(pico, x):
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    outs = []
    for _ in range(2):
        m = copy.deepcopy(pico.model)
        prune(m, PruneConfig(0.3, importance="data", seed=2), example_input=x[:1], batches=batches)
        assert vit_layout(m).embed_dim == 48
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1])


def test_compress_ranks_channels_by_data_on_real_images(tmp_path):
    from click.testing import CliRunner

    from tvc.artifact import load_artifact
    from tvc.cli import cli

    args = ["compress", "vit_pico", "--prune", "0.3", "--importance", "data"]
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "d"), "--data", "fashion-mnist"])
    assert res.exit_code == 0, res.output
    report = load_artifact(tmp_path / "d").meta["metrics"]["compression"]
    assert report["prune"]["importance"] == "data"
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "e")])
    assert res.exit_code == 2 and "no labels needed" in res.output
    assert not (tmp_path / "e").exists()


def test_data_importance_prunes_a_hugging_face_vit(hf_tiny, x):
    m = copy.deepcopy(hf_tiny.model)
    batches = [(x, torch.zeros(4, dtype=torch.long))]
    prune(m, PruneConfig(0.3, importance="data"), example_input=x[:1], batches=batches)
    assert vit_layout(m).embed_dim == 48 and m(x).shape == (4, 10)
    assert torch.isfinite(m(x)).all()
