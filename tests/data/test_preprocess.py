"""Image files read as a pretrained checkpoint's authors evaluate it: crop_pct, interpolation
and squash, from timm's pretrained_cfg and Hugging Face's preprocessor_config.json."""

import json

import numpy as np
import pytest
import torch

from tvc.data import load_images
from tvc.errors import ConfigError
from tvc.models import load_model
from tvc.models.preprocess import hf_preprocess, timm_preprocess
from tvc.tasks.classification import ClassificationTask

VIEW = {"input_size": (3, 8, 8), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _framed(path, size=(40, 40), frame=10):
    """A white square in a black frame `frame` pixels wide."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = np.zeros((size[1], size[0], 3), np.uint8)
    im[frame:-frame, frame:-frame] = 255
    Image.fromarray(im).save(path)


def _thirds(path):
    """A wide 60x20 image: red, green and blue thirds from left to right."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = np.zeros((20, 60, 3), np.uint8)
    for i in range(3):
        im[:, 20 * i : 20 * (i + 1), i] = 255
    Image.fromarray(im).save(path)


@pytest.fixture
def folder(tmp_path):
    _framed(tmp_path / "d/a/framed.png")
    _thirds(tmp_path / "d/b/thirds.png")
    return tmp_path / "d"


def test_crop_pct_keeps_the_centre_and_squash_keeps_the_whole_width(folder):
    whole = load_images(str(folder), **VIEW).take([0, 1])[0]
    crop = load_images(str(folder), crop_pct=0.25, **VIEW).take([0, 1])[0]
    # the centre quarter of the framed image is all white; the whole image has its black frame
    assert crop[0].min() == pytest.approx(1.0) and whole[0].min() == pytest.approx(0.0)
    # by the shorter side the wide image's centre crop is its green third; squashed, all three
    assert whole[1].mean(axis=(1, 2)).argmax() == 1 and whole[1].mean(axis=(1, 2))[1] > 0.9
    squashed = load_images(str(folder), squash=True, **VIEW).take([0, 1])[0]
    assert squashed[1].mean(axis=(1, 2)) == pytest.approx([1 / 3] * 3, abs=0.05)
    bicubic = load_images(str(folder), interpolation="bicubic", **VIEW).take([0, 1])[0]
    assert bicubic.shape == whole.shape
    with pytest.raises(ConfigError, match="crop_pct must be in"):
        load_images(str(folder), crop_pct=1.5, **VIEW)
    with pytest.raises(ConfigError, match="unknown interpolation 'lanczos'"):
        load_images(str(folder), interpolation="lanczos", **VIEW)


def test_hugging_face_processor_configs():
    vit = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2}
    assert hf_preprocess(vit) == {"interpolation": "bilinear", "squash": True}
    deit = {"size": {"height": 256, "width": 256}, "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224}, "resample": 3}  # fmt: skip
    assert hf_preprocess(deit) == {"interpolation": "bicubic", "squash": True, "crop_pct": 0.875}
    dinov2 = {"size": {"shortest_edge": 256}, "do_center_crop": True,
              "crop_size": {"height": 224, "width": 224}, "resample": 3}  # fmt: skip
    assert hf_preprocess(dinov2) == {"interpolation": "bicubic", "crop_pct": 0.875}
    convnext = {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3}
    assert hf_preprocess(convnext) == {"interpolation": "bicubic", "crop_pct": 0.875}
    assert hf_preprocess({"size": "big", "resample": 9, "crop_pct": 7}) == {}
    # older processors store bare numbers: ViT and DeiT mean a square, Bit a shorter side
    old_vit = {"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "resample": 2}
    assert hf_preprocess(old_vit) == {"interpolation": "bilinear", "squash": True}
    old_deit = {"feature_extractor_type": "DeiTFeatureExtractor", "size": 256,
                "do_center_crop": True, "crop_size": 224, "resample": 3}  # fmt: skip
    assert hf_preprocess(old_deit) == {"interpolation": "bicubic", "squash": True,
                                       "crop_pct": 0.875}  # fmt: skip
    old_bit = {"image_processor_type": "BitImageProcessor", "size": 256,
               "do_center_crop": True, "crop_size": 224}  # fmt: skip
    assert hf_preprocess(old_bit) == {"crop_pct": 0.875}


def test_timm_pretrained_cfg():
    cfg = {"crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "center"}
    assert timm_preprocess(cfg) == {"crop_pct": 0.9, "interpolation": "bicubic"}
    assert timm_preprocess({"crop_mode": "squash", "crop_pct": 2}) == {"squash": True}


def test_checkpoints_carry_their_crop_to_the_data_and_tvc_models_do_not(tmp_path, folder):
    """A timm architecture with --weights reads image folders as timm evaluates it; tvc's own
    small configs (and random models) see whole images, as they always did."""
    import timm

    from tvc.models.load import timm_from_name
    from tvc.models.registry import Resolved

    kwargs = {"img_size": 8, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
              "num_classes": 2}  # fmt: skip
    torch.save(
        timm.create_model("deit_tiny_patch16_224", **kwargs).state_dict(), tmp_path / "w.pth"
    )
    deit = timm_from_name(Resolved("deit_tiny_patch16_224", "deit_tiny_patch16_224", kwargs),
                          weights=tmp_path / "w.pth", num_classes=None, input_size=None,
                          pretrained=False, warn_random=False)  # fmt: skip
    assert deit.info.extra["preprocess"] == {"crop_pct": 0.9, "interpolation": "bicubic"}
    got = ClassificationTask().load_data(str(folder), "test", deit.info).take([0, 1])[0]
    mean, std = deit.info.mean, deit.info.std
    want = load_images(str(folder), input_size=(3, 8, 8), mean=mean, std=std, crop_pct=0.9,
                       interpolation="bicubic").take([0, 1])[0]  # fmt: skip
    np.testing.assert_array_equal(got, want)
    whole = load_images(str(folder), input_size=(3, 8, 8), mean=mean, std=std).take([0, 1])[0]
    assert not np.array_equal(got, whole)
    assert "preprocess" not in load_model("vit_pico").info.extra


def test_hugging_face_directory_records_its_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_labels=3,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64)  # fmt: skip
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "hf")
    proc = {"size": {"height": 36, "width": 36}, "do_center_crop": True,
            "crop_size": {"height": 32, "width": 32}, "resample": 3,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # fmt: skip
    (tmp_path / "hf/preprocessor_config.json").write_text(json.dumps(proc))
    info = load_model(str(tmp_path / "hf")).info
    assert info.extra["preprocess"] == {
        "interpolation": "bicubic",
        "squash": True,
        "crop_pct": pytest.approx(32 / 36),
    }
