import copy
import dataclasses
import json

import pytest
import torch

from tvc.artifact import write_artifact
from tvc.compress.lowrank import LowRankConfig, factorize
from tvc.compress.prune import PruneConfig, prune
from tvc.errors import ArtifactError
from tvc.models import load_model
from tvc.models.load import LoadedModel, build_from_info, save_model
from tvc.models.structure import apply_structure, describe_structure


def compressed(loaded: LoadedModel, x: torch.Tensor, prune_cfg=None, lowrank_cfg=None):
    """A pruned and/or factorized copy of `loaded` with its structure in info."""
    model = copy.deepcopy(loaded.model)
    if prune_cfg:
        prune(model, prune_cfg, example_input=x[:1])
    if lowrank_cfg:
        factorize(model, lowrank_cfg, sample_inputs=x)
    structure = describe_structure(model, build_from_info(loaded.info))
    # Through JSON, as in artifact.json.
    structure = json.loads(json.dumps(structure))
    return LoadedModel(model, dataclasses.replace(loaded.info, structure=structure))


def roundtrip(tmp_path, loaded: LoadedModel) -> LoadedModel:
    with write_artifact(tmp_path / "art", "model") as w:
        save_model(w, loaded)
    return load_model(str(tmp_path / "art"))


@pytest.mark.parametrize("heads", [False, True])
def test_pruned_and_factorized_timm_roundtrips_bit_exactly(tmp_path, pico, x, heads):
    c = compressed(pico, x, PruneConfig(0.3, prune_heads=heads), LowRankConfig(rank=8))
    again = roundtrip(tmp_path, c)
    with torch.no_grad():
        assert torch.equal(again.model(x), c.model(x))
    assert again.info.structure == c.info.structure


def test_structure_records_widths_and_attention_attributes(pico, x):
    s = compressed(pico, x, PruneConfig(0.3)).info.structure
    assert s["modules"]["blocks.0.attn.qkv"] == {"type": "Linear", "in_features": 48,
                                                  "out_features": 96, "bias": True}  # fmt: skip
    assert s["params"]["cls_token"] == [1, 1, 48]
    assert s["attrs"]["blocks.0.attn"] == {"head_dim": 8, "attn_dim": 32, "scale": 8**-0.5}
    assert s["attrs"][""]["embed_dim"] == 48


def test_low_rank_children_are_rebuilt_by_their_parent(pico, x):
    s = compressed(pico, x, lowrank_cfg=LowRankConfig(rank=16)).info.structure
    assert s["modules"]["blocks.1.mlp.fc2"]["type"] == "LowRankLinear"
    assert not [n for n in s["modules"] if n.endswith((".first", ".second"))]


def test_hf_pruned_roundtrips_bit_exactly(tmp_path, hf_tiny, x):
    c = compressed(hf_tiny, x, PruneConfig(0.5, prune_heads=True), LowRankConfig(rank=8))
    attrs = c.info.structure["attrs"]["inner.vit.layers.0.attention"]
    assert attrs == {"num_attention_heads": 2}
    again = roundtrip(tmp_path, c)
    with torch.no_grad():
        assert torch.equal(again.model(x), c.model(x))


def test_structure_for_another_architecture_is_an_artifact_error(pico, x):
    s = compressed(pico, x, PruneConfig(0.3)).info.structure
    s = {**s, "attrs": {"blocks.9.attn": {"head_dim": 8}}}
    with pytest.raises(ArtifactError, match="does not fit"):
        apply_structure(build_from_info(pico.info), s)


def test_layerscale_and_register_tokens_roundtrip(tmp_path, pico, x):
    """DeiT III-style LayerScale gammas and register tokens are pruned with the embedding."""
    info = dataclasses.replace(pico.info, kwargs={**pico.info.kwargs, "init_values": 0.1,
                                                  "reg_tokens": 2})  # fmt: skip
    c = compressed(LoadedModel(build_from_info(info).eval(), info), x, PruneConfig(0.3))
    assert c.info.structure["params"]["blocks.0.ls1.gamma"] == [48]
    assert c.info.structure["params"]["reg_token"] == [1, 2, 48]
    again = roundtrip(tmp_path, c)
    with torch.no_grad():
        assert torch.equal(again.model(x), c.model(x))
