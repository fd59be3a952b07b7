"""ImageSet: images prepared for one model, as float32 NCHW batches with int64 labels.

Sources keep their pixels compactly (uint8 at native or model resolution) and an ImageSet turns
any selection of them into the model's input on request: resize, grayscale to 3 channels, scale to
[0, 1], normalise with the model's mean/std. So a 60k-image training set costs 47 MB, not the
740 MB its float32 tensors would take. numpy only: this module runs on a board without torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tvc.errors import ConfigError, DataError

# (indices) -> float32 (len(indices), C, H, W)
Reader = Callable[[np.ndarray], np.ndarray]


INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """What the model wants: input size (C, H, W) and per-channel mean/std on [0, 1] pixels;
    for image files also how a pretrained checkpoint was evaluated (timm's crop_pct and
    interpolation; `squash`: resized to a square, as Hugging Face's ViT processor does, rather
    than by the shorter side). The defaults (whole image, bilinear) are tvc's own models'."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0  # the centre crop's share of the resized image
    interpolation: str = "bilinear"
    squash: bool = False

    def __post_init__(self) -> None:
        c = self.input_size[0]
        if c not in (1, 3):
            raise ConfigError(
                f"models with {c} input channels are not supported by the image loaders",
                "use a model with 1 (grayscale) or 3 (RGB) input channels",
            )
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, c):
                raise ConfigError(
                    f"{name} has {len(vals)} values for a {c}-channel input",
                    f"give 1 or {c} values",
                )
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}", "check the model's std")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(
                f"crop_pct must be in (0, 1], got {self.crop_pct}", "check the model's config"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation '{self.interpolation}'",
                f"use one of: {', '.join(INTERPOLATIONS)}",
            )

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Pixels 0..255 (B, C, H, W) -> float32 normalised, C already matching the model."""
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32, copy=False)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with half-pixel centres.

    The same sampling as torch's `F.interpolate(mode="bilinear", align_corners=False)` without
    antialiasing; written as a matrix so a whole batch resizes with two matmuls.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m.astype(np.float32)


def gray_reader(raw: np.ndarray, pre: Preprocess) -> Reader:
    """A reader for grayscale uint8 images (N, H, W): resize, expand channels, normalise."""
    c, h, w = pre.input_size
    same = raw.shape[1:] == (h, w)
    mh = None if same else bilinear_matrix(raw.shape[1], h)
    mw = None if same else bilinear_matrix(raw.shape[2], w)

    def read(idx: np.ndarray) -> np.ndarray:
        x = raw[idx].astype(np.float32)
        if not same:
            x = mh @ x @ mw.T  # (h, H) @ (B, H, W) @ (W, w) -> (B, h, w)
        x = x[:, None]
        if c == 3:
            x = np.repeat(x, 3, axis=1)
        return pre.normalise(x)

    return read


def chw_reader(raw: np.ndarray, pre: Preprocess) -> Reader:
    """A reader for uint8 images already at the model's size and channels (N, C, H, W)."""

    def read(idx: np.ndarray) -> np.ndarray:
        return pre.normalise(raw[idx])

    return read


class ImageSet:
    """Images resized + normalised for one model: float32 NCHW batches with int64 labels."""

    def __init__(
        self,
        reader: Reader,
        labels: np.ndarray,
        *,
        name: str,
        split: str,
        class_names: list[str],
        input_size: tuple[int, int, int],
        skipped: int = 0,
        fingerprint: str = "",
    ) -> None:
        self._read = reader
        self._labels = np.asarray(labels, dtype=np.int64)
        self.name = name
        self.split = split
        self.class_names = list(class_names)
        self.input_size = tuple(input_size)
        self.skipped = skipped  # unreadable files left out when loading
        # identifies exactly these images under this preprocessing (used to key logit caches)
        self.fingerprint = fingerprint or hashlib.sha256(self._labels.tobytes()).hexdigest()[:16]

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __repr__(self) -> str:
        return f"ImageSet({self.summary()})"

    @property
    def labels(self) -> np.ndarray:
        """All labels (int64, read-only view)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        text = (
            f"{self.name} {self.split}: {len(self)} images, {self.num_classes} classes, "
            f"input {'x'.join(str(d) for d in self.input_size)}"
        )
        if self.skipped:
            text += f" ({self.skipped} unreadable file(s) skipped)"
        return text

    def take(self, indices: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels at `indices` (positions in this set), in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a set of {len(self)} images")
        return self._read(idx), self._labels[idx]

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every image once, in order: x (B, C, H, W) float32, y (B,) int64."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}", "use e.g. 64")
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(start + batch_size, len(self))))

    def subset(self, indices: np.ndarray | list[int], *, split: str | None = None) -> ImageSet:
        """A new ImageSet holding the images at `indices` of this one."""
        idx = np.asarray(indices, dtype=np.int64)
        parent = self._read
        fp = hashlib.sha256(self.fingerprint.encode() + idx.tobytes()).hexdigest()[:16]
        return ImageSet(lambda i: parent(idx[i]), self._labels[idx], name=self.name,
                        split=split or self.split, class_names=self.class_names,
                        input_size=self.input_size, fingerprint=fp)  # fmt: skip

    def relabel(self, order: np.ndarray, class_names: list[str]) -> ImageSet:
        """The same images in another list of classes: label k becomes `order[k]`."""
        order = np.asarray(order, dtype=np.int64)
        fp = hashlib.sha256(self.fingerprint.encode() + order.tobytes()).hexdigest()[:16]
        return ImageSet(self._read, order[self._labels], name=self.name, split=self.split,
                        class_names=class_names, input_size=self.input_size,
                        skipped=self.skipped, fingerprint=fp)  # fmt: skip

    @classmethod
    def from_arrays(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        *,
        name: str = "arrays",
        split: str = "test",
        class_names: list[str] | None = None,
    ) -> ImageSet:
        """Wrap model-ready inputs: x float32 (N, C, H, W), y integer labels (N,)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 4:
            raise DataError(f"images must have shape (N, C, H, W), got {x.shape}", "reshape them")
        if y.shape != (x.shape[0],):
            raise DataError(
                f"{x.shape[0]} images but labels of shape {y.shape}", "pass one label per image"
            )
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
            raise DataError("labels must be non-negative integers", "map class names to 0..K-1")
        if class_names is None:
            k = int(y.max()) + 1 if y.size else 0
            class_names = [str(i) for i in range(k)]
        fp = hashlib.sha256(x.tobytes() + y.astype(np.int64).tobytes()).hexdigest()[:16]
        return cls(lambda i: x[i], y.astype(np.int64), name=name, split=split,
                   class_names=class_names, input_size=tuple(x.shape[1:]),
                   fingerprint=fp)  # fmt: skip


def seeded_subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Positions of a seeded random subset of `limit` out of `n` (all of them when no limit)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}", "e.g. --limit 512")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False))
