import copy

import pytest
import timm
import torch
from torch import nn

from tvc.compress.prune import PruneConfig, prune
from tvc.compress.vit_layout import vit_layout
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models import load_model


def pruned(model: nn.Module, x: torch.Tensor, **cfg) -> nn.Module:
    model = copy.deepcopy(model)
    prune(model, PruneConfig(**cfg), example_input=x[:1])
    return model


def blocks(model: nn.Module) -> list[dict]:
    return vit_layout(model).widths()["blocks"]


# ------------------------------------------------------------------------------ structure


def test_uniform_prune_gives_rounded_widths_everywhere(pico, x):
    m = pruned(pico.model, x, ratio=0.3)  # 64 -> 44.8 -> 48; 16 -> 11.2 -> 8; 128 -> 89.6 -> 88
    assert vit_layout(m).embed_dim == 48
    assert blocks(m) == [{"heads": 4, "head_dim": 8, "attn_width": 32, "mlp": 88}] * 2
    assert m.cls_token.shape == (1, 1, 48) and m.pos_embed.shape[-1] == 48
    assert m.blocks[0].attn.qkv.weight.shape == (96, 48)
    assert m.head.weight.shape == (10, 48)  # classifier outputs intact
    a = m.blocks[1].attn
    assert (a.num_heads, a.head_dim, a.attn_dim, a.scale) == (4, 8, 32, 8**-0.5)
    assert (m.embed_dim, m.num_features) == (48, 48)
    assert m(x).shape == (4, 10)


def test_round_to_one_keeps_the_exact_share(pico, x):
    m = pruned(pico.model, x, ratio=0.3, round_to=1)
    assert vit_layout(m).embed_dim == 45
    assert blocks(m)[0] == {"heads": 4, "head_dim": 11, "attn_width": 44, "mlp": 90}


def test_whole_heads_keep_their_dimension(pico, x):
    m = pruned(pico.model, x, ratio=0.5, prune_heads=True)
    assert [(b["heads"], b["head_dim"]) for b in blocks(m)] == [(2, 16), (2, 16)]
    assert m.blocks[0].attn.scale == 16**-0.5
    assert m(x).shape == (4, 10)


def test_keep_leaves_parts_and_blocks_whole(pico, x):
    m = pruned(pico.model, x, ratio=0.5, keep=("embed", "blocks.0"))
    assert vit_layout(m).embed_dim == 64
    assert blocks(m)[0] == blocks(pico.model)[0]
    assert blocks(m)[1]["mlp"] == 64
    m = pruned(pico.model, x, ratio=0.5, keep="attn,mlp")
    assert blocks(m) == blocks(pico.model) and vit_layout(m).embed_dim == 32


def test_global_ranking_never_empties_a_block(pico, x):
    m = pruned(pico.model, x, ratio=0.5, global_pruning=True)
    widths = blocks(m)
    assert all(b["head_dim"] >= 8 and b["mlp"] >= 8 for b in widths)
    assert all(b["head_dim"] % 8 == 0 and b["mlp"] % 8 == 0 for b in widths)
    assert 96 <= sum(b["mlp"] for b in widths) <= 160  # half of 2 x 128, give or take rounding
    assert m(x).shape == (4, 10)


def test_iterative_steps_reach_the_same_widths(pico, x):
    one = pruned(pico.model, x, ratio=0.5)
    three = pruned(pico.model, x, ratio=0.5, steps=3)
    assert vit_layout(three).widths() == vit_layout(one).widths()
    assert three.embed_dim == three.num_features == 32
    seen = []
    model = copy.deepcopy(pico.model)
    prune(model, PruneConfig(0.5, steps=3), example_input=x[:1],
          between_steps=lambda m, step: seen.append((step, m.embed_dim)))  # fmt: skip
    assert seen == [(1, 56), (2, 40)]  # a fine-tune could run here, on the narrower model


def test_random_importance_is_seeded(pico, x):
    a = pruned(pico.model, x, ratio=0.3, importance="random", seed=3)
    b = pruned(pico.model, x, ratio=0.3, importance="random", seed=3)
    assert torch.equal(a(x), b(x))


def test_taylor_importance_uses_labelled_batches(pico, x):
    y = torch.tensor([0, 1, 2, 3])
    m = copy.deepcopy(pico.model)
    prune(m, PruneConfig(0.3, importance="taylor"), example_input=x[:1], batches=[(x, y)])
    assert blocks(m)[0]["mlp"] == 88
    assert all(p.grad is None for p in m.parameters())  # gradients are not left behind
    with pytest.raises(ConfigError, match="taylor"):
        prune(copy.deepcopy(pico.model), PruneConfig(0.3, importance="taylor"),
              example_input=x[:1])  # fmt: skip


def test_distilled_deit_keeps_both_heads(x):
    torch.manual_seed(0)
    deit = load_model("deit_pico_distilled", warn_random=False).model
    m = pruned(deit, x, ratio=0.3)
    assert m.dist_token.shape == (1, 1, 48)
    assert m.head.weight.shape == (10, 48) and m.head_dist.weight.shape == (10, 48)
    assert m(x).shape == (4, 10)


def test_hf_vit_prunes_heads_and_dims(hf_tiny, x):
    m = pruned(hf_tiny.model, x, ratio=0.3)
    attn = m.inner.vit.layers[0].attention
    assert (attn.num_attention_heads, attn.head_dim) == (4, 8)
    assert attn.q_proj.weight.shape == (32, 48) and attn.o_proj.weight.shape == (48, 32)
    assert attn.scaling == 16**-0.5  # the trained scale is kept (HF passes it explicitly)
    assert m.inner.classifier.weight.shape == (10, 48)
    assert m(x).shape == (4, 10)
    heads = pruned(hf_tiny.model, x, ratio=0.5, prune_heads=True)
    assert blocks(heads)[1] == {"heads": 2, "head_dim": 16, "attn_width": 32, "mlp": 64}
    assert heads(x).shape == (4, 10)


# ------------------------------------------------------------- removing exactly what is dead


def _kill_timm(model, prune_heads: bool) -> None:
    """Zero half of every MLP and of every attention (whole heads 1, 3 or dims 8..15 of each)."""
    with torch.no_grad():
        for blk in model.blocks:
            dead = torch.arange(0, 128, 2)
            blk.mlp.fc1.weight[dead] = 0
            blk.mlp.fc1.bias[dead] = 0
            blk.mlp.fc2.weight[:, dead] = 0
            cols = [h * 16 + d for h in ((1, 3) if prune_heads else range(4))
                    for d in (range(16) if prune_heads else range(8, 16))]  # fmt: skip
            rows = [part * 64 + c for part in range(3) for c in cols]  # q, k and v
            blk.attn.qkv.weight[rows] = 0
            blk.attn.qkv.bias[rows] = 0
            blk.attn.proj.weight[:, cols] = 0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prune_heads", [False, True])
def test_pruning_dead_channels_leaves_outputs_unchanged(pico, x, prune_heads, fused):
    """Magnitude pruning removes exactly the zeroed channels, so nothing may change — which
    also proves the head bookkeeping and the attention scale (fused and unfused) are right."""
    m = copy.deepcopy(pico.model)
    for blk in m.blocks:
        blk.attn.fused_attn = fused
    _kill_timm(m, prune_heads)
    with torch.no_grad():
        ref = m(x)
    prune(m, PruneConfig(0.5, prune_heads=prune_heads, keep=("embed",)), example_input=x[:1])
    assert blocks(m)[0]["mlp"] == 64 and blocks(m)[0]["attn_width"] == 32
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5)


def test_hf_pruning_dead_dims_leaves_outputs_unchanged(hf_tiny, x):
    m = copy.deepcopy(hf_tiny.model)
    with torch.no_grad():
        for layer in m.inner.vit.layers:
            a = layer.attention
            cols = [h * 16 + d for h in range(4) for d in range(8, 16)]
            for lin in (a.q_proj, a.k_proj, a.v_proj):
                lin.weight[cols] = 0
                lin.bias[cols] = 0
            a.o_proj.weight[:, cols] = 0
        ref = m(x)
    prune(m, PruneConfig(0.5, keep=("embed", "mlp")), example_input=x[:1])
    assert blocks(m)[0]["head_dim"] == 8
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        PruneConfig(ratio)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"importance": "l1"}, "magnitude, data, taylor, random"),
        ({"round_to": 0}, "round_to"),
        ({"steps": 0}, "steps"),
    ],
)
def test_bad_options_name_the_valid_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruneConfig(0.3, **kwargs)


def test_unknown_recipe_key_is_an_error():
    with pytest.raises(ConfigError, match="ratioo"):
        PruneConfig.from_dict({"ratioo": 0.3})
    assert PruneConfig.from_dict({"ratio": 0.3, "keep": "embed"}).keep == ("embed",)


def test_ratio_that_removes_every_head(pico, x):
    with pytest.raises(ConfigError, match=r"every head of blocks\.0\.attn \(4 -> 0\)"):
        pruned(pico.model, x, ratio=0.9, prune_heads=True)


def test_ratio_that_removes_every_head_dim_after_rounding(pico, x):
    with pytest.raises(ConfigError, match=r"every head dimension.*multiples of 8.*--round-to"):
        pruned(pico.model, x, ratio=0.8)
    assert blocks(pruned(pico.model, x, ratio=0.8, round_to=1))[0]["head_dim"] == 3


def test_unknown_keep_name(pico, x):
    with pytest.raises(ConfigError, match=r"blocks\.7"):
        pruned(pico.model, x, ratio=0.3, keep=("blocks.7",))


def test_architecture_with_unknown_layers_names_them(x):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=64,
                              depth=2, num_heads=4, num_classes=10, qk_norm=True)  # fmt: skip
    with pytest.raises(UnsupportedModelError, match=r"blocks\.0\.attn\.q_norm"):
        pruned(model.eval(), x, ratio=0.3)


def test_non_vit_is_refused(x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        pruned(model, x, ratio=0.3)


def test_model_without_classifier(x):
    torch.manual_seed(0)
    headless = load_model("vit_pico", num_classes=0, warn_random=False).model
    with pytest.raises(ConfigError, match=r"no classifier.*--keep embed"):
        pruned(headless, x, ratio=0.3)
    # Keeping the embedding keeps its output: that prune is fine.
    assert pruned(headless, x, ratio=0.3, keep=("embed",))(x).shape == (4, 64)
