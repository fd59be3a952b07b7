"""Small, learnable stand-ins for Fashion-MNIST, written in its IDX format (tests, offline demos).

Each class is a bright bar at its own height on a noisy background, so a tiny model learns it in a
few steps; the files go through exactly the same reader as the real dataset.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x00000800 + ndim, big-endian sizes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_images(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images and labels: class k is a bar at rows 2+2.5k .. 4+2.5k."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        top = 2 + int(2.5 * k)
        images[i, top : top + 2, 4:24] = 220
    return images, labels.astype(np.uint8)


def write_fake_fashion_mnist(directory: Path, n_train: int = 200, n_test: int = 50,
                             seed: int = 0) -> Path:  # fmt: skip
    """Write the four Fashion-MNIST IDX files with synthetic images into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for part, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = make_images(n, s)
        write_idx(directory / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{part}-labels-idx1-ubyte.gz", labels)
    return directory
