"""timm models saved as a Hub folder (config.json naming an architecture + weights), written
here by timm's own save_for_hf, as `huggingface-cli download timm/NAME` would leave them."""

import json

import pytest
import torch

from tvc.errors import ModelNotFoundError, WeightsError
from tvc.models import load_model
from tvc.models.load import write_model_artifact
from tvc.models.registry import resolve

PICO = resolve("vit_pico")
IMAGENET = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]


def _save_timm_folder(path, safetensors: bool = True):
    """A vit_pico-sized timm model saved as timm writes Hub folders, with ImageNet statistics
    (not the architecture's default 0.5) in its pretrained_cfg; returns the model."""
    pytest.importorskip("huggingface_hub")  # save_for_hf needs it
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model(PICO.arch, pretrained=False, **PICO.kwargs).eval()
    save_for_hf(model, str(path), safe_serialization=safetensors)
    cfg = json.loads((path / "config.json").read_text())
    cfg["pretrained_cfg"]["mean"], cfg["pretrained_cfg"]["std"] = IMAGENET
    (path / "config.json").write_text(json.dumps(cfg))
    return model


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_timm_hub_folder_loads_with_its_own_statistics(tmp_path, safetensors):
    model = _save_timm_folder(tmp_path / "hub", safetensors)
    loaded = load_model(str(tmp_path / "hub"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))
    info = loaded.info
    assert (info.family, info.arch, info.num_classes) == ("timm", PICO.arch, 10)
    assert info.input_size == (3, 32, 32)
    assert [list(info.mean), list(info.std)] == IMAGENET  # the folder's, not the default tag's


def test_timm_hub_folder_rebuilds_from_its_artifact(tmp_path):
    """The artifact records the folder's constructor arguments, so it rebuilds without it."""
    _save_timm_folder(tmp_path / "hub")
    loaded = load_model(str(tmp_path / "hub"))
    write_model_artifact(loaded, tmp_path / "art", spec={}, metrics={})
    again = load_model(str(tmp_path / "art"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.model(x), loaded.model(x))
    assert list(again.info.mean) == IMAGENET[0]


def test_old_single_dict_config_is_read(tmp_path):
    """Early timm Hub configs put the pretrained config's fields at the top level."""
    _save_timm_folder(tmp_path / "hub")
    cfg = json.loads((tmp_path / "hub/config.json").read_text())
    flat = {"architecture": cfg["architecture"], **cfg["pretrained_cfg"]}
    (tmp_path / "hub/config.json").write_text(json.dumps({**flat, "model_args": PICO.kwargs}))
    loaded = load_model(str(tmp_path / "hub"))
    assert loaded.info.num_classes == 10 and list(loaded.info.std) == IMAGENET[1]


def test_timm_hub_folder_refusals(tmp_path):
    _save_timm_folder(tmp_path / "hub")
    with pytest.raises(WeightsError, match="carries its own weights"):
        load_model(str(tmp_path / "hub"), weights=tmp_path / "hub/model.safetensors")
    cfg = json.loads((tmp_path / "hub/config.json").read_text())

    def rewrite(**changes):
        (tmp_path / "hub/config.json").write_text(json.dumps({**cfg, **changes}))

    rewrite(architecture="vit_from_the_future")
    with pytest.raises(ModelNotFoundError, match="'vit_from_the_future', which timm"):
        load_model(str(tmp_path / "hub"))
    rewrite(model_args=[1, 2])
    with pytest.raises(ModelNotFoundError, match="model_args that are not a mapping"):
        load_model(str(tmp_path / "hub"))
    rewrite(architecture=7)
    with pytest.raises(ModelNotFoundError, match="not a timm model config"):
        load_model(str(tmp_path / "hub"))
    (tmp_path / "hub/config.json").write_text("[1, 2]")
    with pytest.raises(ModelNotFoundError, match="neither a transformers model_type nor a timm"):
        load_model(str(tmp_path / "hub"))
    rewrite()
    (tmp_path / "hub/model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_model(str(tmp_path / "hub"))


@pytest.mark.parametrize("form", ["folder", "name --weights"])
def test_num_classes_replaces_only_the_classifier(tmp_path, caplog, form):
    """Fine-tuning a checkpoint on data of another class count (--num-classes) keeps its
    backbone and gives it a new, random classifier, said in a warning."""
    model = _save_timm_folder(tmp_path / "hub")
    with caplog.at_level("WARNING", logger="tvc"):
        if form == "folder":
            loaded = load_model(str(tmp_path / "hub"), num_classes=5)
        else:
            loaded = load_model(
                "vit_pico", weights=tmp_path / "hub/model.safetensors", num_classes=5
            )
    assert "predicts 10 classes, 5 were asked for" in caplog.text
    state, saved = loaded.model.state_dict(), model.state_dict()
    assert state["head.weight"].shape == (5, 64) and loaded.info.num_classes == 5
    assert torch.equal(state["blocks.1.mlp.fc1.weight"], saved["blocks.1.mlp.fc1.weight"])


def _save_jax_npz(model, path) -> None:
    """`model`'s weights in the layout of Google's original ViT checkpoints (ViT-B_16.npz):
    HWIO patch kernel, per-head q/k/v kernels, Flax Dense kernels (in, out)."""
    import numpy as np

    d = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": model.patch_embed.proj.weight.permute(2, 3, 1, 0),
        "embedding/bias": model.patch_embed.proj.bias,
        "cls": model.cls_token,
        "Transformer/posembed_input/pos_embedding": model.pos_embed,
        "Transformer/encoder_norm/scale": model.norm.weight,
        "Transformer/encoder_norm/bias": model.norm.bias,
        "head/kernel": model.head.weight.T,
        "head/bias": model.head.bias,
    }
    for i, b in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        for n, wq, bq in zip(("query", "key", "value"), b.attn.qkv.weight.chunk(3),
                             b.attn.qkv.bias.chunk(3), strict=True):  # fmt: skip
            w[f"{mha}{n}/kernel"] = wq.T.reshape(d, heads, -1)
            w[f"{mha}{n}/bias"] = bq.reshape(heads, -1)
        w[f"{mha}out/kernel"] = b.attn.proj.weight.reshape(d, heads, -1).permute(1, 2, 0)
        w[f"{mha}out/bias"] = b.attn.proj.bias
        for ln, norm in (("LayerNorm_0", b.norm1), ("LayerNorm_2", b.norm2)):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = norm.weight, norm.bias
        for r, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = fc.weight.T
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = fc.bias
    np.savez(path, **{k: v.detach().numpy() for k, v in w.items()})


def test_jax_vit_checkpoint_loads_through_timms_reader(tmp_path, caplog):
    """Google's original ViT .npz checkpoints: the class count comes from the head, the
    outputs equal the model the file was written from, and a file for another architecture
    or with pickles is a one-line refusal."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(PICO.arch, pretrained=False, **{**PICO.kwargs, "num_classes": 7})
    _save_jax_npz(model.eval(), tmp_path / "ViT-pico.npz")
    custom = dict(PICO.kwargs)
    custom.pop("num_classes")
    from tvc.models.load import timm_from_name
    from tvc.models.registry import Resolved

    def load(path, **kw):
        return timm_from_name(Resolved("vit", PICO.arch, custom), weights=path, input_size=None,
                              pretrained=False, warn_random=True, **kw)  # fmt: skip

    with caplog.at_level("WARNING", logger="tvc"):
        loaded = load(tmp_path / "ViT-pico.npz", num_classes=None)
    assert loaded.info.num_classes == 7 and "randomly initialised" not in caplog.text
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x), atol=1e-5, rtol=1e-5)
    with caplog.at_level("WARNING", logger="tvc"):
        load(tmp_path / "ViT-pico.npz", num_classes=3)
    assert "holds a 7-class head: the 3-class head is new" in caplog.text
    with pytest.raises(WeightsError, match=r"do not fit the architecture"):
        load_model("vit_nano", weights=tmp_path / "ViT-pico.npz")
    import numpy as np

    np.savez(tmp_path / "pickled.npz", **{"head/bias": np.array([object()], dtype=object)})
    with pytest.raises(WeightsError, match=r"not a readable \.npz checkpoint"):
        load_model("vit_pico", weights=tmp_path / "pickled.npz")


def test_label_names_of_the_folder_name_the_outputs(tmp_path):
    """save_for_hf writes `label_names` when the model was given them: they say what each output
    means, so folders of those classes are matched by name."""
    from tvc.models.info import model_class_names

    _save_timm_folder(tmp_path / "hub")
    cfg = json.loads((tmp_path / "hub/config.json").read_text())
    names = [f"class{i}" for i in range(10)]
    (tmp_path / "hub/config.json").write_text(json.dumps({**cfg, "label_names": names}))
    assert model_class_names(load_model(str(tmp_path / "hub")).info) == names
    # names of another head (here 3 for 10 outputs) are left out, not trusted
    (tmp_path / "hub/config.json").write_text(json.dumps({**cfg, "label_names": names[:3]}))
    assert model_class_names(load_model(str(tmp_path / "hub")).info) is None
