import numpy as np
import pytest

from tvc.data.pixels import (
    Palette,
    is_pixel_spec,
    kmeans_palette,
    levels_palette,
    load_pixels,
    raster,
    resize,
    unraster,
)
from tvc.errors import ConfigError, DataError


def test_levels_palette_round_trip():
    pal = levels_palette(16)
    tokens = np.arange(16).reshape(1, 4, 4)
    assert np.array_equal(pal.encode(pal.decode(tokens)), tokens)
    grey = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    t = pal.encode(grey)
    assert np.array_equal(t.ravel(), np.arange(256) // 16)  # level i covers [16 i, 16 i + 16)
    assert np.abs(pal.decode(t).astype(int) - grey.astype(int)).max() <= 8


def test_palette_json_round_trip():
    pal = levels_palette(8)
    again = Palette.from_json(pal.to_json())
    assert np.allclose(again.centers, pal.centers, atol=1e-3) and again.kind == "levels"
    with pytest.raises(DataError):
        Palette.from_json({"centers": [[1.0]]})


def test_kmeans_palette_finds_colour_clusters():
    rng = np.random.default_rng(0)
    true = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [128, 128, 128]], float)
    pixels = np.concatenate([c + rng.normal(0, 3, (200, 3)) for c in true]).clip(0, 255)
    pal = kmeans_palette(pixels.astype(np.uint8), 4, seed=0)
    assert pal.kind == "kmeans" and pal.centers.shape == (4, 3)
    for c in true:
        assert np.abs(pal.centers - c).sum(1).min() < 10
    img = true[[0, 1, 2, 3]].reshape(1, 2, 2, 3).astype(np.uint8)
    decoded = pal.decode(pal.encode(img))
    assert decoded.shape == (1, 2, 2, 3) and np.abs(decoded.astype(int) - img).max() < 10
    assert np.array_equal(pal.encode(decoded), pal.encode(img))


def test_resize_raster_and_errors():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    small = resize(img, (2, 2))
    assert small[0, 0, 0] == round((0 + 10 + 40 + 50) / 4)
    assert resize(np.zeros((2, 28, 28), np.uint8), (16, 16)).shape == (2, 16, 16)
    seq = raster(np.arange(12).reshape(1, 3, 4))
    assert seq.tolist() == [list(range(12))]
    assert np.array_equal(unraster(seq, (3, 4)), np.arange(12).reshape(1, 3, 4))
    with pytest.raises(DataError):
        unraster(seq, (5, 5))
    with pytest.raises(ConfigError):
        levels_palette(1)
    with pytest.raises(DataError):
        levels_palette(4).decode(np.array([[4]]))


def test_specs():
    assert is_pixel_spec("fashion-mnist-pixels") and is_pixel_spec("pixels:fashion-mnist")
    assert not is_pixel_spec("fashion-mnist")
    with pytest.raises(DataError):
        load_pixels("pixels:cifar", "test", levels_palette(16), (14, 14))


def test_a_missing_directory_is_named_with_the_pixels_spec_to_fix_it(tmp_path):
    with pytest.raises(DataError, match="not in") as err:
        load_pixels(f"pixels:fashion-mnist:{tmp_path}", "test", levels_palette(16), (14, 14))
    assert "--data pixels:fashion-mnist:/dir" in err.value.fix


def test_fashion_mnist_tokens(fmnist_dir):
    pal = levels_palette(16)
    px = load_pixels(f"pixels:fashion-mnist:{fmnist_dir}", "test", pal, (14, 14), limit=20)
    assert px.tokens.shape == (20, 196) and px.tokens.dtype == np.int64
    assert px.tokens.min() >= 0 and px.tokens.max() < 16 and px.labels.shape == (20,)
    assert px.images().shape == (20, 14, 14)
