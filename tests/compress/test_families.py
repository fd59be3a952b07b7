"""Every ViT family in tvc.models.families: prune, low-rank, rebuild, ONNX parity.

Tiny random models of each Hugging Face family (hidden 32, 2 layers, 4 heads of 8, 32x32
images in 8x8 patches) saved with save_pretrained and loaded the way users bring them.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from tvc.artifact import write_artifact
from tvc.compress.lowrank import LowRankConfig, factorize
from tvc.compress.prune import PruneConfig, prune
from tvc.compress.vit_layout import vit_layout
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.models import load_model
from tvc.models.load import LoadedModel, build_from_info, save_model
from tvc.models.structure import describe_structure

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=32, patch_size=8, num_channels=3, num_labels=5)  # fmt: skip
# name: (config class, model class, extra config, tvc family)
REG = "Dinov2WithRegisters"
FAMILIES = {
    "vit": ("ViTConfig", "ViTForImageClassification", {}, "hf-vit"),
    "deit": ("DeiTConfig", "DeiTForImageClassification", {}, "hf-deit"),
    "deit-teacher": ("DeiTConfig", "DeiTForImageClassificationWithTeacher", {}, "hf-deit"),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", {"mlp_ratio": 2}, "hf-dinov2"),
    "dinov2-registers": (
        f"{REG}Config",
        f"{REG}ForImageClassification",
        {"num_register_tokens": 2, "mlp_ratio": 2},
        "hf-dinov2-registers",
    ),
    "beit": (
        "BeitConfig",
        "BeitForImageClassification",
        {"use_relative_position_bias": True},
        "hf-beit",
    ),
    "beit-shared": (
        "BeitConfig",
        "BeitForImageClassification",
        {"use_shared_relative_position_bias": True},
        "hf-beit",
    ),
}


def build(name: str):
    cfg_cls, model_cls, extra, _ = FAMILIES[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**TINY, **extra))
    with torch.no_grad():  # values large enough that a wrong slice shows in the outputs
        for pname, p in model.named_parameters():
            if "relative_position_bias_table" in pname or "lambda" in pname:
                p.normal_()
    return model.eval()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("families") / request.param
    build(request.param).save_pretrained(path)
    return request.param, load_model(str(path))


@pytest.fixture
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def compressed(loaded: LoadedModel, x, prune_cfg, lowrank_cfg) -> LoadedModel:
    model = copy.deepcopy(loaded.model)
    prune(model, prune_cfg, example_input=x[:1])
    factorize(model, lowrank_cfg, sample_inputs=x)
    structure = json.loads(json.dumps(describe_structure(model, build_from_info(loaded.info))))
    return LoadedModel(model, dataclasses.replace(loaded.info, structure=structure))


def test_every_family_prunes_factorizes_rebuilds_and_exports(family, x, tmp_path):
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    name, loaded = family
    assert vit_layout(loaded.model).name == FAMILIES[name][3]
    heads = name != "beit-shared"  # one table shared by all blocks: head dims only
    cfg = PruneConfig(0.5, prune_heads=heads, round_to=4)
    c = compressed(loaded, x, cfg, LowRankConfig(rank=8))
    widths = vit_layout(c.model).widths()
    assert widths["embed"] == 16
    assert all(b["attn_width"] == 16 and b["mlp"] == 32 for b in widths["blocks"])
    assert [b["heads"] for b in widths["blocks"]] == ([2, 2] if heads else [4, 4])
    with torch.no_grad():
        y = c.model(x)
    assert y.shape == (3, 5) and torch.isfinite(y).all()
    with write_artifact(tmp_path / "art", "model") as w:
        save_model(w, c)
    again = load_model(str(tmp_path / "art"))
    with torch.no_grad():
        assert torch.equal(again.model(x), y)
    parity = export_loaded(again, tmp_path / "onnx", OnnxExportConfig()).meta["metrics"]["parity"]
    assert parity["ok"] and parity["max_abs_diff"] < 1e-4


def test_every_vit_family_merges_tokens_rebuilds_and_exports(family, x, tmp_path):
    """Token merging on transformers' own layers: r = 0 is the model itself, merging shortens
    every layer's sequence after the prefix tokens, and the artifact rebuilds and exports with
    parity. BEiT (a relative position bias per patch pair) is refused."""
    from tvc.compress.merge import merge
    from tvc.export.onnx import OnnxExportConfig
    from tvc.models.merge import merge_blocks
    from tvc.stages.export import export_loaded

    name, loaded = family
    model = copy.deepcopy(loaded.model)
    if name.startswith("beit"):
        with pytest.raises(UnsupportedModelError, match=r"BeitForImageClassification \(hf-beit\)"):
            merge(model, [3], (3, 32, 32))
        return
    with torch.no_grad():
        ref = model(x)
        merge(model, [0], (3, 32, 32))
        assert torch.equal(model(x), ref)  # the merging path with nothing to merge
    rep = merge(model, [3], (3, 32, 32), metric="tokens" if "dinov2" in name else "keys")
    prefix = {"deit": 2, "deit-teacher": 2, "dinov2-registers": 3}.get(name, 1)
    assert rep["prefix_tokens"] == prefix and rep["tokens_in"] == [prefix + 16, prefix + 13]
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
             for b in merge_blocks(model)]  # fmt: skip
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    assert seen == rep["tokens_in"] and y.shape == (3, 5) and not torch.equal(y, ref)
    structure = json.loads(json.dumps(describe_structure(model, build_from_info(loaded.info))))
    with write_artifact(tmp_path / "art", "model") as w:
        save_model(w, LoadedModel(model, dataclasses.replace(loaded.info, structure=structure)))
    again = load_model(str(tmp_path / "art"))
    with torch.no_grad():
        assert torch.equal(again.model(x), y)
    parity = export_loaded(again, tmp_path / "onnx", OnnxExportConfig()).meta["metrics"]["parity"]
    assert parity["ok"] and parity["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name", ["beit", "dinov2-registers"])
def test_removing_dead_heads_leaves_outputs_unchanged(name, x):
    """Head 1 of every block contributes nothing; removing it must keep every other head's
    weights and (BEiT) its column of the relative position bias table."""
    model = build(name)
    layout = vit_layout(wrapped(model))
    with torch.no_grad():
        for a in layout.attn:
            dead = list(range(8, 16))
            a.module.v_proj.weight[dead] = 0
            a.module.v_proj.bias[dead] = 0
            a.module.o_proj.weight[:, dead] = 0
        ref = layout.model(x)
    tables = [getattr(o, leaf).detach().clone() for a in layout.attn for _, o, leaf in a.per_head]
    prune(layout.model, PruneConfig(0.25, prune_heads=True, keep=("embed", "mlp")),
          example_input=x[:1])  # fmt: skip
    after = vit_layout(layout.model)
    assert [a.heads for a in after.attn] == [3, 3]
    with torch.no_grad():
        assert torch.allclose(layout.model(x), ref, atol=1e-5)
    now = [getattr(o, leaf) for a in after.attn for _, o, leaf in a.per_head]
    assert len(now) == (2 if name == "beit" else 0)
    for old, new in zip(tables, now, strict=True):
        assert torch.equal(new, old[:, [0, 2, 3]])


def wrapped(model):
    from tvc.models.hf import HFClassifier

    return HFClassifier(model)


def test_dinov2_classifier_loses_the_same_channels_of_both_tokens(x):
    """DINOv2's classifier reads [class token, mean patch token]: both halves lose the
    embedding channels that pruning removed, the other columns keep their weights."""
    model = wrapped(build("dinov2"))
    proj = model.inner.dinov2.embeddings.patch_embeddings.projection
    before_rows = proj.weight.detach().clone().flatten(1)
    before_head = model.inner.classifier.weight.detach().clone()
    prune(model, PruneConfig(0.25, keep=("attn", "mlp"), round_to=1), example_input=x[:1])
    rows = proj.weight.detach().flatten(1)
    kept = [int((before_rows - r).abs().sum(1).argmin()) for r in rows]
    assert len(kept) == 24 and len(set(kept)) == 24
    cols = kept + [32 + k for k in kept]
    assert torch.equal(model.inner.classifier.weight, before_head[:, cols])
    assert model.inner.dinov2.embeddings.mask_token.shape == (1, 24)
    with torch.no_grad():
        assert model(x).shape == (3, 5)


def test_shared_relative_position_bias_refuses_head_pruning(x):
    model = wrapped(build("beit-shared"))
    with pytest.raises(ConfigError, match="leave out --prune-heads"):
        prune(model, PruneConfig(0.5, prune_heads=True), example_input=x[:1])


def test_swiglu_dinov2_is_refused_with_the_layer_named(x):
    cfg = transformers.Dinov2Config(**TINY, use_swiglu_ffn=True)
    model = wrapped(transformers.Dinov2ForImageClassification(cfg).eval())
    with pytest.raises(UnsupportedModelError, match="SwiGLU"):
        prune(model, PruneConfig(0.5), example_input=x[:1])


def test_timm_dinov2_style_vit_with_layerscale_and_registers_prunes(x):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                              mlp_ratio=2, init_values=0.5, reg_tokens=2, no_embed_class=True,
                              num_classes=5).eval()  # fmt: skip
    assert vit_layout(model).name == "timm-vit"
    prune(model, PruneConfig(0.5, prune_heads=True, round_to=4), example_input=x[:1])
    assert model.reg_token.shape == (1, 2, 16) and model.blocks[0].ls1.gamma.shape == (16,)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all() and model(x).shape == (3, 5)


def test_hf_beit_prunes_and_distils_from_its_uncompressed_self(tmp_path, x):
    """`tvc compress DIR --prune R --distill --data D`: the pruned BEiT (relative position bias
    tables sliced) trains against the uncompressed one and its artifact rebuilds."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from tvc.artifact import load_artifact
    from tvc.cli import cli

    build("beit").save_pretrained(tmp_path / "beit")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c", "d", "e"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "data" / c / f"{i}.png")
    out = tmp_path / "small"
    args = ["compress", tmp_path / "beit", "--prune", "0.5", "--prune-heads", "--distill",
            "--data", tmp_path / "data", "--epochs", "1", "--batch-size", "4",
            "-o", out]  # fmt: skip
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    report = load_artifact(out).meta["metrics"]["compression"]
    assert report["distill"] and report["after"]["widths"]["blocks"][0]["heads"] == 2
    again = load_model(str(out))
    tables = [p for n, p in again.model.named_parameters() if n.endswith("bias_table")]
    assert tables and all(t.shape[-1] == 2 for t in tables)
    with torch.no_grad():
        assert torch.isfinite(again.model(x)).all()


def test_timm_beit_pruning_and_merging_are_refused_with_what_works(x):
    from timm.models.beit import Beit

    from tvc.compress.merge import check_mergeable

    beit = Beit(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=5)
    with pytest.raises(UnsupportedModelError, match=r"factorize Beit.*Hugging Face"):
        prune(beit, PruneConfig(0.5), example_input=x[:1])
    with pytest.raises(UnsupportedModelError, match=r"merge tokens of Beit"):
        check_mergeable(beit)
