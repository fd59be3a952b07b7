"""Labels mean the same class in every split, and the model's class for its outputs."""

import logging

import numpy as np
import pytest

from tvc.data import ImageSet, load_images
from tvc.data.classes import align_classes
from tvc.errors import DataError
from tvc.models.info import ModelInfo, model_class_names

RGB32 = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}


def _png(path, value=100):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20, 20), value).save(path)


def _folder(root, split, classes, n=2):
    for c in classes:
        for i in range(n):
            _png(root / split / c / f"{i}.png")


def test_a_split_missing_a_class_keeps_the_training_labels(tmp_path):
    _folder(tmp_path, "train", ["ant", "bee", "cow"])
    _folder(tmp_path, "test", ["ant", "cow"])  # no bee in the test split
    test = load_images(str(tmp_path), "test", **RGB32)
    assert test.class_names == ["ant", "bee", "cow"]
    assert test.labels.tolist() == [0, 0, 2, 2]  # cow is 2, as in train, not 1
    _folder(tmp_path, "test", ["dog"])
    with pytest.raises(DataError, match=r"class folder.*dog.*training split lacks"):
        load_images(str(tmp_path), "test", **RGB32)


def test_train_and_val_without_test_score_on_val(tmp_path, caplog):
    _folder(tmp_path, "train", ["a", "b"], n=3)
    _folder(tmp_path, "val", ["a", "b"], n=1)
    with caplog.at_level(logging.INFO, logger="tvc"):
        test = load_images(str(tmp_path), "test", **RGB32)
    assert len(test) == 2 and "scoring on val/" in caplog.text
    assert len(load_images(str(tmp_path), "train", **RGB32)) == 6


def test_an_empty_class_folder_is_refused(tmp_path):
    _folder(tmp_path, "", ["a", "b"])
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) c .*hold no files"):
        load_images(str(tmp_path), "test", **RGB32)


def _set(names, labels):
    x = np.zeros((len(labels), 1, 2, 2), np.float32)
    return ImageSet.from_arrays(x, np.array(labels), class_names=names)


def test_labels_follow_the_model_classes_by_name(caplog):
    data = _set(["cat", "dog"], [0, 1, 1])
    # the same names in another order, and a subset of the model's classes: matched by name
    assert align_classes(data, ["dog", "cat"]).labels.tolist() == [1, 0, 0]
    wider = align_classes(data, ["bird", "cat", "dog"])
    assert wider.labels.tolist() == [1, 2, 2] and wider.class_names == ["bird", "cat", "dog"]
    assert wider.fingerprint != data.fingerprint  # other labels, another logit cache key
    # unknown or equal names: the labels stay as they are
    assert align_classes(data, None) is data and align_classes(data, ["cat", "dog"]) is data
    assert align_classes(data, ["n01", "n02"]) is data
    # a shared name at the same position is consistent: kept, with a warning
    with caplog.at_level(logging.WARNING, logger="tvc"):
        assert align_classes(data, ["cat", "fox"]) is data
    assert "dog" in caplog.text and "by position" in caplog.text
    # a shared name at another position: refused, naming it and the model's classes
    with pytest.raises(DataError, match=r"'dog' is label 1 there but output 0.*\(dog, fox\)"):
        align_classes(data, ["dog", "fox"])


def _info(num_classes=2, **kw):
    base = {"name": "m", "family": "hf", "arch": "vit", "kwargs": {}, "num_classes": num_classes,
            "input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}  # fmt: skip
    return ModelInfo(**{**base, **kw})


def test_model_class_names_come_from_training_or_the_config():
    assert model_class_names(_info()) is None
    assert model_class_names(_info(extra={"class_names": ["a", "b"]})) == ["a", "b"]
    named = _info(kwargs={"id2label": {"1": "cat", "0": "dog"}})
    assert model_class_names(named) == ["dog", "cat"]
    defaults = _info(kwargs={"id2label": {"0": "LABEL_0", "1": "LABEL_1"}})
    assert model_class_names(defaults) is None
    # names of another head (replaced since) say nothing about this one
    assert model_class_names(_info(3, kwargs={"id2label": {"0": "a", "1": "b"}})) is None
    assert model_class_names(_info(3, extra={"class_names": ["a", "b"]})) is None
