"""Data loading: Fashion-MNIST IDX files, image folders, splits, subsets and broken inputs."""

import gzip

import numpy as np
import pytest

from tvc.data import ImageSet, load_images
from tvc.data.base import bilinear_matrix
from tvc.data.synthetic import make_images, write_fake_fashion_mnist
from tvc.errors import ConfigError, DataError

RGB32 = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fm"), n_train=120, n_test=30)


def test_fashion_mnist_splits_are_fixed_and_disjoint(idx_dir):
    spec = f"fashion-mnist:{idx_dir}"
    train = load_images(spec, "train", **RGB32)
    val = load_images(spec, "val", **RGB32)
    test = load_images(spec, "test", **RGB32)
    assert (len(train), len(val), len(test)) == (108, 12, 30)
    assert train.class_names[0] == "T-shirt/top" and train.num_classes == 10
    # the split does not move with the subset seed
    assert np.array_equal(load_images(spec, "val", seed=7, **RGB32).labels, val.labels)
    # together, train and val are exactly the training file
    _, all_labels = make_images(120, seed=0)
    assert sorted([*train.labels, *val.labels]) == sorted(all_labels.tolist())


def test_images_are_resized_expanded_and_normalised(idx_dir):
    import torch
    import torch.nn.functional as F

    data = load_images(str(idx_dir), "test", **RGB32)  # a directory of IDX files works too
    x, y = data.take([0, 1])
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    raw, labels = make_images(30, seed=1)
    assert y.tolist() == labels[:2].tolist()
    assert np.array_equal(x[:, 0], x[:, 2])  # grayscale copied to every channel
    ref = F.interpolate(torch.from_numpy(raw[:2, None].astype(np.float32)), size=(32, 32),
                        mode="bilinear", align_corners=False).numpy()[:, 0]  # fmt: skip
    assert np.allclose(x[:, 0], (ref / 255 - 0.5) / 0.25, atol=1e-4)
    gray = load_images(str(idx_dir), "test", input_size=(1, 28, 28), mean=(0.0,), std=(1.0,))
    assert np.allclose(gray.take([0])[0][0, 0], raw[0] / 255.0)


def test_bilinear_matrix_rows_sum_to_one():
    m = bilinear_matrix(28, 32)
    assert m.shape == (32, 28) and np.allclose(m.sum(1), 1.0)


def test_limit_is_a_seeded_subset(idx_dir):
    spec = f"fashion-mnist:{idx_dir}"
    a = load_images(spec, "train", limit=20, seed=1, **RGB32)
    b = load_images(spec, "train", limit=20, seed=1, **RGB32)
    c = load_images(spec, "train", limit=20, seed=2, **RGB32)
    assert len(a) == 20
    assert np.array_equal(a.take(range(20))[0], b.take(range(20))[0])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert len(load_images(spec, "train", limit=10_000, **RGB32)) == 108
    with pytest.raises(ConfigError, match="--limit"):
        load_images(spec, "train", limit=0, **RGB32)


def test_batches_cover_every_image_once(idx_dir):
    data = load_images(f"fashion-mnist:{idx_dir}", "test", **RGB32)
    sizes, labels = [], []
    for x, y in data.batches(8):
        sizes.append(len(x))
        labels.extend(y.tolist())
    assert sizes == [8, 8, 8, 6] and labels == data.labels.tolist()


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    from tvc.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIR", tmp_path / "nope")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_images("fashion-mnist", **RGB32)
    with pytest.raises(DataError, match="missing t10k-images"):
        load_images(f"fashion-mnist:{tmp_path}", **RGB32)


def test_damaged_idx_file_is_a_clear_error(tmp_path):
    d = write_fake_fashion_mnist(tmp_path / "fm", n_train=20, n_test=10)
    with gzip.open(d / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_images(str(d), "test", **RGB32)
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        load_images(str(d), "test", **RGB32)


def test_idx_labels_beyond_ten_classes_point_to_image_folders(tmp_path):
    """EMNIST-style IDX files (26 letters) are not silently read as 10 Fashion-MNIST classes."""
    d = write_fake_fashion_mnist(tmp_path / "fm", n_train=20, n_test=10)
    header = bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big")
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + bytes(range(16, 26)))
    with pytest.raises(DataError, match=r"outside 0\.\.9 \(16\.\.25\).*image folder"):
        load_images(str(d), "test", **RGB32)


def _png(path, value, size=(40, 30), mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def test_image_folder_skips_and_counts_unreadable_files(tmp_path, caplog):
    for i in range(3):
        _png(tmp_path / "cat" / f"{i}.png", 10 * i)
        _png(tmp_path / "dog" / f"{i}.jpg", 200, mode="RGB")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"ignored")
    data = load_images(str(tmp_path), "test", **RGB32)
    assert len(data) == 6 and data.skipped == 2
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert "2 unreadable" in data.summary()
    x, _ = data.take([1, 3])
    assert x.shape == (2, 3, 32, 32)
    assert np.allclose(x[0], (10 / 255 - 0.5) / 0.25, atol=1e-5)  # gray 10 -> 3 equal channels
    assert np.allclose(x[1], (200 / 255 - 0.5) / 0.25, atol=1e-5)
    # the flat layout: val is a fixed hold-out, train the rest, test everything
    train = load_images(str(tmp_path), "train", **RGB32)
    val = load_images(str(tmp_path), "val", **RGB32)
    assert len(val) + val.skipped == 1  # 10% of the 8 files
    assert len(train) + len(val) == 6 and train.skipped + val.skipped == 2


def test_image_folder_split_directories(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / c / f"{i}.png", 100)
    assert len(load_images(str(tmp_path), "test", **RGB32)) == 4
    assert (
        len(load_images(str(tmp_path), "train", **RGB32))
        + len(load_images(str(tmp_path), "val", **RGB32))
        == 8
    )


def test_image_folder_with_nothing_usable_fails(tmp_path):
    for c in "ab":
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.png").write_text("text")
    with pytest.raises(DataError, match="none of the 2 file"):
        load_images(str(tmp_path), **RGB32)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_text("text")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_images(str(flat), **RGB32)


def test_bad_specs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_images("imagenet-22k", **RGB32)
    with pytest.raises(DataError, match="COCO"):
        load_images(str(tmp_path / "instances.json"), **RGB32)
    with pytest.raises(DataError, match="unknown split"):
        load_images("fashion-mnist", "dev", **RGB32)


def test_from_arrays_validates():
    x = np.zeros((4, 3, 8, 8), np.float32)
    data = ImageSet.from_arrays(x, np.array([0, 1, 2, 1]))
    assert len(data) == 4 and data.class_names == ["0", "1", "2"]
    with pytest.raises(DataError, match="one label per image"):
        ImageSet.from_arrays(x, np.array([0, 1]))
    with pytest.raises(DataError, match="non-negative integers"):
        ImageSet.from_arrays(x, np.array([0.5, 1, 2, 1]))


@pytest.mark.skipif(not __import__("pathlib").Path(
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist not installed")  # fmt: skip
def test_real_fashion_mnist_test_split():
    data = load_images("fashion-mnist", "test", **RGB32)
    assert len(data) == 10_000
    assert np.bincount(data.labels).tolist() == [1000] * 10
