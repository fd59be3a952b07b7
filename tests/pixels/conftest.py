"""Tiny Image GPT fixtures: igpt_pico (8x8 images, 8 levels, ~20k parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvc.data.pixels import levels_palette, synthetic_pixels
from tvc.models.igpt import CONFIGS, ImageGPT


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def igpt():
    torch.manual_seed(0)
    return ImageGPT(CONFIGS["igpt_pico"]).eval()


@pytest.fixture
def igpt_loaded():
    from tvc.models.igpt import igpt_from_name

    torch.manual_seed(0)
    return igpt_from_name("igpt_pico", warn_random=False)


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, 8, (3, 64)).astype(np.int64)


@pytest.fixture
def synth():
    """Two classes of 8x8 token images with a class-dependent bright band."""
    return synthetic_pixels(256, (8, 8), levels_palette(8), seed=0, classes=2)


def _write_idx(path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory):
    """A tiny Fashion-MNIST lookalike in IDX files: 60 train / 20 test 28x28 images, whose
    class decides which horizontal band is bright."""
    d = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for part, n in (("train", 60), ("t10k", 20)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c + 4 : 2 * c + 8] = 230
        _write_idx(d / f"{part}-images-idx3-ubyte", images)
        _write_idx(d / f"{part}-labels-idx1-ubyte", labels)
    return d
