import pytest
import torch

from tvc.artifact import write_artifact
from tvc.errors import ArtifactError, ModelNotFoundError, WeightsError
from tvc.models import load_model
from tvc.models.load import save_model
from tvc.models.registry import resolve


def test_aliases_resolve_to_timm_names():
    assert resolve("vit_b16").arch == "vit_base_patch16_224"
    assert resolve("deit_s").arch == "deit_small_patch16_224"
    assert resolve("deit_small_patch16_224").arch == "deit_small_patch16_224"
    assert resolve("vit_pico").kwargs["embed_dim"] == 64


def test_unknown_name_lists_closest():
    with pytest.raises(ModelNotFoundError, match=r"did you mean: .*deit_small"):
        resolve("deit_smal")


def test_small_config_shapes(pico):
    assert pico.info.input_size == (3, 32, 32)
    assert pico.info.num_classes == 10
    assert pico.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_random_init_warns(caplog):
    import logging

    logging.getLogger("tvc").propagate = True
    with caplog.at_level(logging.WARNING, logger="tvc"):
        load_model("vit_pico")
    assert "randomly initialised" in caplog.text


def test_pretrained_without_weights_is_an_error():
    with pytest.raises(WeightsError, match="never downloads"):
        load_model("vit_pico", pretrained=True)


def test_safetensors_and_pth_weights_roundtrip(tmp_path, pico):
    from safetensors.torch import save_file

    sd = {k: v.clone() for k, v in pico.model.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"model": sd}, tmp_path / "w.pth")
    x = torch.randn(1, 3, 32, 32)
    ref = pico.model(x)
    for f in ("w.safetensors", "w.pth"):
        m = load_model("vit_pico", weights=tmp_path / f)
        assert torch.equal(m.model(x), ref)
        assert m.info.weights.endswith(f)


def test_num_classes_inferred_from_weights(tmp_path):
    m = load_model("vit_pico", num_classes=7, warn_random=False)
    torch.save(m.model.state_dict(), tmp_path / "w.pth")
    again = load_model("vit_pico", weights=tmp_path / "w.pth")
    assert again.info.num_classes == 7


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="never unpickles"):
        load_model("vit_pico", weights=tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_mismatched_weights_explain(tmp_path, pico):
    torch.save(pico.model.state_dict(), tmp_path / "w.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        load_model("vit_nano", weights=tmp_path / "w.pth")


def test_model_artifact_roundtrip_bit_exact(tmp_path, pico):
    with write_artifact(tmp_path / "m", "model") as w:
        save_model(w, pico)
    again = load_model(str(tmp_path / "m"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again.model(x), pico.model(x))
    assert again.artifact is not None and again.info.arch == pico.info.arch


def test_path_errors(tmp_path, pico_onnx):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a tvc artifact"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="needs its architecture"):
        load_model(str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelNotFoundError, match="ONNX file"):
        load_model(str(pico_onnx.path / "model.onnx"))


def test_onnx_artifact_without_model_parent(pico_onnx):
    with pytest.raises(ArtifactError, match="not a PyTorch model artifact"):
        load_model(str(pico_onnx.path))


def test_hf_vit_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hfvit")
    m = load_model(str(tmp_path / "hfvit"))
    x = torch.randn(2, 3, 32, 32)
    assert m.info.family == "hf" and m.info.num_classes == 5 and m.info.input_size == (3, 32, 32)
    assert torch.allclose(m.model(x), hf(pixel_values=x).logits, atol=1e-6)


def test_hf_directory_with_sharded_weights(tmp_path):
    """Large checkpoints are saved in shards with an index; from_pretrained reads them."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_labels=3,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64)  # fmt: skip
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded/model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded/model.safetensors").exists()
    m = load_model(str(tmp_path / "sharded"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m.model(x), hf(pixel_values=x).logits, atol=1e-6)


def test_hf_directory_says_which_weights_are_new(tmp_path, caplog):
    """A backbone-only checkpoint (ViTModel, DINOv2) gets a random classifier; config.json
    asking for more layers than the weights hold leaves backbone weights random: both said."""
    import json

    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64)  # fmt: skip
    transformers.ViTModel(cfg).save_pretrained(tmp_path / "backbone")
    with caplog.at_level("WARNING", logger="tvc"):
        load_model(str(tmp_path / "backbone"))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "holds no weights for its head (classifier.bias" in said and "backbone weights" not in said
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="tvc"):
        load_model(str(tmp_path / "backbone"), num_classes=4)  # a new head was asked for
    assert "classifier" not in " ".join(r.getMessage() for r in caplog.records)
    conf = json.loads((tmp_path / "backbone/config.json").read_text())
    (tmp_path / "backbone/config.json").write_text(json.dumps({**conf, "num_hidden_layers": 2}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="tvc"):
        load_model(str(tmp_path / "backbone"))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "backbone weights of backbone are not in its checkpoint (e.g. vit." in said
    assert ".1." in said.split("(e.g. ")[1]  # the second layer, which the weights lack
