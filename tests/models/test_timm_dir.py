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
