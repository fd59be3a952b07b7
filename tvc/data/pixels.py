"""Pixels as tokens for Image GPT: a colour palette and raster-ordered token sequences.

iGPT (Chen et al., 2020) quantizes each pixel to the nearest of K palette colours (k-means on
RGB values) and reads an image as a sequence of H*W tokens in raster order (row by row, left to
right). For greyscale images a fixed number of evenly spaced levels replaces k-means. The palette
travels with the model artifact (`Palette.to_json`), so training, export and the runtime quantize
and decode pixels the same way. numpy only: this module runs on a board without torch.

DATA specs of this kind: `fashion-mnist-pixels`, `pixels:fashion-mnist`,
`pixels:fashion-mnist:/dir/with/idx/files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvc.errors import ConfigError, DataError

PIXEL_SPECS = ("fashion-mnist-pixels", "pixels:fashion-mnist")


@dataclass(frozen=True)
class Palette:
    """K colours (K x C, values on 0..255); a pixel's token is the index of its nearest colour."""

    centers: np.ndarray  # (K, C) float32
    kind: str = "levels"  # "levels" (fixed greyscale levels) or "kmeans"

    @property
    def size(self) -> int:
        return int(self.centers.shape[0])

    @property
    def channels(self) -> int:
        return int(self.centers.shape[1])

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W) or (N, H, W, C) -> int64 tokens (N, H, W)."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[-1] != self.channels:
            raise DataError(
                f"images have {x.shape[-1]} channel(s) but the palette has {self.channels}",
                "quantize with a palette fitted to images of the same kind",
            )
        flat = x.reshape(-1, self.channels)
        tokens = np.empty(flat.shape[0], dtype=np.int64)
        c = self.centers.astype(np.float32)
        for s in range(0, flat.shape[0], 1 << 18):  # bounded memory: rows x K distances
            d = ((flat[s : s + (1 << 18), None, :] - c[None]) ** 2).sum(-1)
            tokens[s : s + (1 << 18)] = d.argmin(1)
        return tokens.reshape(x.shape[:-1])

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """int tokens (..., H, W) -> uint8 images (..., H, W) greyscale or (..., H, W, C)."""
        t = np.asarray(tokens, dtype=np.int64)
        if t.size and (t.min() < 0 or t.max() >= self.size):
            raise DataError(
                f"tokens outside the palette (0..{self.size - 1})",
                "decode tokens made with this palette",
            )
        rgb = np.clip(np.rint(self.centers[t]), 0, 255).astype(np.uint8)
        return rgb[..., 0] if self.channels == 1 else rgb

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centers": np.asarray(self.centers, np.float64).round(4).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Palette:
        try:
            centers = np.asarray(d["centers"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"the palette in the artifact is unreadable ({exc})",
                "re-export the model with this tvc",
            ) from exc
        if centers.ndim != 2 or centers.shape[0] < 2:
            raise DataError(
                f"palette has shape {centers.shape}; expected (K>=2, C)",
                "re-export the model with this tvc",
            )
        return cls(centers, str(d.get("kind", "levels")))


def levels_palette(k: int) -> Palette:
    """K evenly spaced grey levels: level i covers [256 i / K, 256 (i+1) / K) and decodes to its
    centre."""
    if not 2 <= k <= 256:
        raise ConfigError(f"a greyscale palette needs 2..256 levels, got {k}", "use e.g. 16")
    centers = (np.arange(k, dtype=np.float32) + 0.5) * (256.0 / k) - 0.5
    return Palette(centers[:, None], "levels")


def kmeans_palette(
    pixels: np.ndarray, k: int, *, iters: int = 20, seed: int = 0, max_points: int = 100_000
) -> Palette:
    """K colours by k-means (k-means++ start, Lloyd iterations) on pixel values (M, C) 0..255."""
    x = np.asarray(pixels, dtype=np.float64).reshape(-1, np.asarray(pixels).shape[-1])
    if k < 2:
        raise ConfigError(f"a palette needs at least 2 colours, got {k}", "use e.g. 16 or 512")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    if len(np.unique(x, axis=0)) < k:
        raise DataError(f"the pixels hold fewer than {k} distinct colours", "use a smaller palette")
    centers = [x[rng.integers(len(x))]]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum()
        centers.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
    c = np.stack(centers)
    for _ in range(iters):
        assign = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
        new = c.copy()
        for j in range(k):
            members = x[assign == j]
            if len(members):
                new[j] = members.mean(0)
        if np.allclose(new, c):
            break
        c = new
    order = np.lexsort(c.T[::-1])  # stable order: sorted by the first channel
    return Palette(c[order].astype(np.float32), "kmeans")


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 images (N, H, W[, C]) -> (N, h, w[, C]) uint8: block means for integer factors
    (28 -> 14), bilinear with half-pixel centres otherwise (28 -> 16)."""
    from tvc.data.base import bilinear_matrix

    x = np.asarray(images)
    h, w = size
    n, hin, win = x.shape[:3]
    if (hin, win) == (h, w):
        return x.astype(np.uint8, copy=False)
    f = x.astype(np.float32)
    if hin % h == 0 and win % w == 0:
        fh, fw = hin // h, win // w
        f = f.reshape(n, h, fh, w, fw, *x.shape[3:]).mean(axis=(2, 4))
    else:
        mh, mw = bilinear_matrix(hin, h), bilinear_matrix(win, w)
        f = np.einsum("ah,nhw...->naw...", mh, f)
        f = np.einsum("bw,naw...->nab...", mw, f)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def raster(tokens: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H*W) int64, row by row."""
    t = np.asarray(tokens, dtype=np.int64)
    return t.reshape(t.shape[0], -1)


def unraster(seq: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H*W) -> (N, H, W)."""
    s = np.asarray(seq)
    if s.shape[-1] != size[0] * size[1]:
        raise DataError(
            f"a sequence of {s.shape[-1]} tokens is not a {size[0]}x{size[1]} image",
            "use sequences made at the model's resolution",
        )
    return s.reshape(*s.shape[:-1], *size)


@dataclass
class PixelSet:
    """Token sequences (N, H*W) int64 of one split, with labels when the source has them."""

    tokens: np.ndarray
    labels: np.ndarray | None
    palette: Palette
    size: tuple[int, int]
    name: str
    split: str

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def subset(self, n: int) -> PixelSet:
        """The first `n` images (splits are already in a fixed order)."""
        labels = None if self.labels is None else self.labels[:n]
        return PixelSet(self.tokens[:n], labels, self.palette, self.size, self.name, self.split)

    def images(self, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """The quantized images (decoded palette colours) of a selection, uint8."""
        t = self.tokens if idx is None else self.tokens[idx]
        return self.palette.decode(unraster(t, self.size))


def is_pixel_spec(spec: str) -> bool:
    s = str(spec)
    return s in PIXEL_SPECS or s.startswith("pixels:")


def _source(spec: str) -> tuple[str, Path]:
    """('fashion-mnist', directory) for a pixel DATA spec."""
    from tvc.data.fashion_mnist import DEFAULT_DIR

    s = str(spec)
    if s == "fashion-mnist-pixels":
        return "fashion-mnist", DEFAULT_DIR
    if s.startswith("pixels:"):
        rest = s[len("pixels:") :]
        name, _, directory = rest.partition(":")
        if name == "fashion-mnist":
            return name, Path(directory) if directory else DEFAULT_DIR
    raise DataError(
        f"'{spec}' is not pixel data tvc knows",
        "use --data fashion-mnist-pixels or pixels:fashion-mnist[:/dir/with/idx/files]",
    )


def load_pixels(
    spec: str,
    split: str,
    palette: Palette,
    size: tuple[int, int],
    *,
    limit: int | None = None,
    seed: int = 0,
) -> PixelSet:
    """Split `split` ('train', 'val', 'test') of pixel DATA `spec`, quantized with `palette` at
    resolution `size`; `limit` takes a seeded random subset."""
    from tvc.data.fashion_mnist import load_split

    if split not in ("train", "val", "test"):
        raise ConfigError(f"unknown split '{split}'", "use train, val or test")
    name, directory = _source(spec)
    try:
        images, labels = load_split(directory, split)
    except DataError as exc:  # its fix names the classification spec; pixel data has its own
        fix = (exc.fix or "").replace("--data fashion-mnist:", "--data pixels:fashion-mnist:")
        raise DataError(exc.problem, fix or None) from None
    if limit is not None and limit < len(labels):
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}", "use e.g. --limit 1000")
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), limit, replace=False))
        images, labels = images[pick], labels[pick]
    tokens = raster(palette.encode(resize(images, size)))
    return PixelSet(tokens, labels, palette, tuple(size), name, split)


def synthetic_pixels(
    n: int, size: tuple[int, int], palette: Palette, *, seed: int = 0, classes: int = 2
) -> PixelSet:
    """Seeded token images with learnable structure (a class-dependent band on noise), for tests
    and for sample inputs when no data is given."""
    rng = np.random.default_rng(seed)
    h, w = size
    labels = rng.integers(0, classes, n).astype(np.int64)
    k = palette.size
    img = rng.integers(0, max(1, k // 4), (n, h, w))
    for i, c in enumerate(labels):
        rows = slice((c * h) // classes, ((c + 1) * h) // classes)
        img[i, rows, :] = k - 1 - rng.integers(0, max(1, k // 4), (rows.stop - rows.start, w))
    return PixelSet(raster(img), labels, palette, (h, w), "synthetic", "test")
