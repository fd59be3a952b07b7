"""Preprocessing of detection images: bilinear resize, normalisation, and letterboxing.

Letterboxing keeps an image's aspect ratio: it is scaled to fit the model's input, placed in
the top-left corner, and the rest is padding (0 after normalisation, as DETR pads) that the
pixel mask marks with 0. Boxes are normalised by the whole canvas, so `canvas_extent` maps a
prediction back to the image's own pixels. numpy only.
"""

from __future__ import annotations

import numpy as np

from tvc.errors import DataError


def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an (H, W[, C]) uint8 image with half-pixel centres (like PIL/cv2)."""
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) == (h, w):
        return img.copy()

    def axis(n_out: int, n_in: int):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(h, in_h)
    x0, x1, wx = axis(w, in_w)
    f = img.astype(np.float32)
    if f.ndim == 3:
        wy, wx = wy[:, None, None], wx[None, :, None]
    else:
        wy, wx = wy[:, None], wx[None, :]
    top = f[y0][:, x0] * (1 - wx) + f[y0][:, x1] * wx
    bottom = f[y1][:, x0] * (1 - wx) + f[y1][:, x1] * wx
    return np.clip(top * (1 - wy) + bottom * wy + 0.5, 0, 255).astype(np.uint8)


RESIZE_MODES = ("letterbox", "stretch")


def letterbox_size(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image scaled to fit `input_hw` with its aspect ratio kept."""
    h, w = (int(v) for v in image_hw)
    out_h, out_w = (int(v) for v in input_hw)
    scale = min(out_h / h, out_w / w)
    return max(1, min(out_h, round(h * scale))), max(1, min(out_w, round(w * scale)))


def canvas_extent(
    image_hw: tuple[int, int], input_hw: tuple[int, int], resize: str = "letterbox"
) -> tuple[float, float]:
    """How many image widths and heights the model's input canvas spans (x, y): 1 when the
    image fills it, more when letterbox padding follows. A normalised box times the image's
    size times this extent is the box in the image's own pixels."""
    if resize == "stretch":
        return 1.0, 1.0
    nh, nw = letterbox_size(image_hw, input_hw)
    return input_hw[1] / nw, input_hw[0] / nh


def preprocess_letterbox(
    image: np.ndarray,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    resize: str = "letterbox",
) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W[, 3]) uint8 image -> ((C, H, W) float32, (H, W) int64 pixel mask).

    Letterbox: scaled with its aspect ratio kept into the top-left corner; the rest is 0 after
    normalisation (DETR's padding) and 0 in the mask. "stretch" fills the input."""
    if resize not in RESIZE_MODES:
        raise DataError(f"unknown resize mode '{resize}'", f"use one of: {', '.join(RESIZE_MODES)}")
    c, h, w = input_size
    if resize == "stretch":
        return preprocess(image, input_size, mean, std), np.ones((h, w), np.int64)
    nh, nw = letterbox_size(image.shape[:2], (h, w))
    x = np.zeros((c, h, w), np.float32)
    x[:, :nh, :nw] = preprocess(image, (c, nh, nw), mean, std)
    mask = np.zeros((h, w), np.int64)
    mask[:nh, :nw] = 1
    return x, mask


def preprocess(
    image: np.ndarray,
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> np.ndarray:
    """One (H, W[, 3]) uint8 image -> (C, H, W) float32, resized and normalised."""
    c, h, w = input_size
    img = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    img = resize_bilinear(img, h, w)[:, :, :c].astype(np.float32) / 255.0
    img = (img - np.asarray(mean, np.float32)[:c]) / np.asarray(std, np.float32)[:c]
    return np.ascontiguousarray(img.transpose(2, 0, 1))
