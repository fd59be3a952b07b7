"""Fashion-MNIST from its IDX files (Debian's `dataset-fashion-mnist`, or any directory).

60,000 training and 10,000 test images, 28x28 grayscale, 10 classes. tvc never downloads: the
files come from /usr/share/datasets/fashion-mnist or a directory the user names. The `val` split
is a fixed hold-out of 5,000 training images; `train` is the other 55,000.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tvc.errors import DataError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
VAL_SIZE = 5000
VAL_FRACTION_SMALL = 0.1  # for directories holding fewer training images than the real set
_SPLIT_SEED = 20240601  # fixed: the val hold-out must not move with --seed

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
INSTALL_FIX = (
    "install it with 'apt-get install dataset-fashion-mnist', or pass "
    "--data fashion-mnist:/dir/holding/the/idx/files"
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 TT DD, DD big-endian sizes, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"cannot read {path} ({exc})", "the file is damaged; " + INSTALL_FIX
        ) from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)", INSTALL_FIX)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(data) - header} data bytes for shape {shape}",
            "the file is damaged; " + INSTALL_FIX,
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def has_idx_files(directory: Path) -> bool:
    return all(_find(directory, s) is not None for pair in FILES.values() for s in pair)


def read_part(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' files."""
    img_stem, lbl_stem = FILES[part]
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST directory {directory} does not exist", INSTALL_FIX)
    paths = [_find(directory, img_stem), _find(directory, lbl_stem)]
    missing = [s for s, p in zip((img_stem, lbl_stem), paths, strict=True) if p is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not in {directory} (missing {missing[0]}.gz)", INSTALL_FIX
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths[0]} does not hold 8-bit grayscale images", INSTALL_FIX)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{paths[1]} holds {labels.shape[0] if labels.ndim == 1 else '?'} labels for "
            f"{images.shape[0]} images",
            INSTALL_FIX,
        )
    if labels.size and (labels.max() >= len(CLASS_NAMES) or labels.min() < 0):
        raise DataError(
            f"{paths[1]} has labels outside 0..{len(CLASS_NAMES) - 1} "
            f"({int(labels.min())}..{int(labels.max())})",
            "IDX data is read as a 10-class set (Fashion-MNIST, MNIST); give data of another "
            "class count as an image folder (DIR/<class>/<image>)",
        )
    return images, labels.astype(np.int64)


def split_positions(n_train: int) -> dict[str, np.ndarray]:
    """Fixed positions of 'train' and 'val' inside the training files."""
    n_val = VAL_SIZE if n_train > 2 * VAL_SIZE else max(1, int(n_train * VAL_FRACTION_SMALL))
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n_train)
    return {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}


def load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images and labels of one split: 'train', 'val' or 'test'."""
    if split == "test":
        return read_part(directory, "test")
    images, labels = read_part(directory, "train")
    pos = split_positions(len(labels))[split]
    return images[pos], labels[pos]
