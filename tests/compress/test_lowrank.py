import copy

import pytest
import torch
from torch import nn

from tvc.compress.lowrank import LowRankConfig, choose_rank, factorize, svd_factors
from tvc.compress.report import count_macs
from tvc.errors import ConfigError
from tvc.models.structure import LowRankLinear


def factorized(model: nn.Module, x: torch.Tensor, **cfg):
    model = copy.deepcopy(model)
    report = factorize(model, LowRankConfig(**cfg), sample_inputs=x)
    return model, report


def test_full_rank_reproduces_the_original_outputs(pico, x):
    m, report = factorized(pico.model, x, rank_ratio=1.0, require_saving=False)
    assert report["factorized"] == 8 and report["skipped"] == 0
    assert isinstance(m.blocks[0].attn.qkv, LowRankLinear) and m.blocks[0].attn.qkv.rank == 64
    assert all(
        e["rel_error"] < 1e-5 and e["energy"] == pytest.approx(1.0) for e in report["layers"]
    )
    with torch.no_grad():
        assert torch.allclose(m(x), pico.model(x), atol=1e-5)


def test_svd_error_falls_with_rank():
    torch.manual_seed(0)
    lin = nn.Linear(32, 48)
    xs = torch.randn(64, 32)
    with torch.no_grad():
        errors = [float((svd_factors(lin, r)(xs) - lin(xs)).norm()) for r in (4, 8, 16, 32)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-4
    lr = svd_factors(lin, 8)
    assert lr.first.weight.shape == (8, 32) and lr.second.weight.shape == (48, 8)
    assert lr.first.bias is None and torch.equal(lr.second.bias, lin.bias)


def test_rank_from_energy_fixed_rank_and_ratio():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energy: 16/22, 20/22, 21/22, 22/22
    cfg = {"round_to": 1}
    assert choose_rank(s, 4, 4, LowRankConfig(energy=0.9, **cfg)) == (2, pytest.approx(20 / 22))
    assert choose_rank(s, 4, 4, LowRankConfig(energy=0.95, **cfg))[0] == 3
    assert choose_rank(s, 4, 4, LowRankConfig(energy=1.0, **cfg))[0] == 4
    assert choose_rank(s, 4, 4, LowRankConfig(rank=9, **cfg))[0] == 4  # capped at full rank
    assert choose_rank(s, 4, 4, LowRankConfig(rank_ratio=0.5, **cfg))[0] == 2
    s = torch.linspace(10, 1, 64)
    assert choose_rank(s, 64, 64, LowRankConfig(rank=5))[0] == 8  # rounded up to 8


def test_layers_are_factorized_only_where_macs_fall(pico, x):
    # 64x64 layers save MACs only below rank 32; 128x64 (MLP) below 43.
    _, report = factorized(pico.model, x, rank=40)
    done = {e["name"].rsplit(".", 1)[1] for e in report["layers"] if e["factorized"]}
    assert done == {"qkv", "fc1", "fc2"}  # qkv is 192x64: 40 < 48
    proj = next(e for e in report["layers"] if e["name"] == "blocks.0.attn.proj")
    assert "does not lower MACs" in proj["reason"]


def test_macs_count_both_thin_layers(pico, x):
    m, report = factorized(pico.model, x, rank=16)
    tokens = 65  # 64 patches + the class token
    saved = sum(e["shape"][0] * e["shape"][1] - e["rank"] * sum(e["shape"])
                for e in report["layers"] if e["factorized"])  # fmt: skip
    assert report["factorized"] == 8
    assert count_macs(pico.model, (3, 32, 32)) - count_macs(m, (3, 32, 32)) == tokens * saved


def test_report_has_rank_energy_and_error_per_layer(pico, x):
    _, report = factorized(pico.model, x, energy=0.5, targets=("mlp",))
    layers = report["layers"]
    assert [e["name"] for e in layers] == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2",
                                            "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]  # fmt: skip
    for e in layers:
        assert e["factorized"] and e["rank"] % 8 == 0 and e["energy"] >= 0.5
        assert 0 < e["rel_error"] < 1


def test_hf_attention_and_mlp_are_factorized(hf_tiny, x):
    m, report = factorized(hf_tiny.model, x, rank=8)
    assert report["factorized"] == 12  # q, k, v, o, fc1, fc2 in two layers
    assert isinstance(m.inner.vit.layers[1].attention.o_proj, LowRankLinear)
    assert m(x).shape == (4, 10)


def test_already_factorized_layers_are_left_alone(pico, x):
    m, _ = factorized(pico.model, x, rank=16)
    _, again = factorized(m, x, rank=8)
    assert again["factorized"] == 0
    assert {e["reason"] for e in again["layers"]} == {"already low-rank"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of"),
        ({"energy": 0.9, "rank": 8}, "exactly one of"),
        ({"energy": 0.0}, r"in \(0, 1\]"),
        ({"energy": 1.5}, r"in \(0, 1\]"),
        ({"rank": 0}, ">= 1"),
        ({"rank_ratio": 1.5}, r"in \(0, 1\]"),
        ({"energy": 0.9, "targets": ("conv",)}, "attn, mlp"),
        ({"energy": 0.9, "round_to": 0}, "round_to"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LowRankConfig(**kwargs)
