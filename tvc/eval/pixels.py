"""Quality of Image GPT: bits per dimension, the linear probe, and classification accuracy.

Everything here reads numpy arrays (the task's `predict` dict: `logits` (N, L, K), `features`
(N, D), `class_logits` (N, C)), so PyTorch, ONNX Runtime and TensorRT outputs are scored by the
same code; numpy only, so it runs on a board.

- bits/dim: the mean next-token negative log-likelihood per pixel, in bits (iGPT reports it per
  sub-pixel of its palette sequence; one token is one pixel here);
- linear probe: multinomial logistic regression (L2-regularised, full-batch Adam on standardised
  features) fitted on training-split features and scored on the evaluation split, as iGPT's
  probe on a middle layer's averaged features; the same probe on raw pixels is the baseline the
  features must beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2.0)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def nll_sum(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Summed next-token negative log-likelihood in nats."""
    lp = log_softmax(logits)
    t = np.asarray(tokens, dtype=np.int64)
    return float(-np.take_along_axis(lp, t[..., None], axis=-1).sum())


def bits_per_dim(logits: np.ndarray, tokens: np.ndarray) -> float:
    """Mean bits per pixel of `tokens` (N, L) under `logits` (N, L, K)."""
    return nll_sum(logits, tokens) / max(1, np.asarray(tokens).size) / LN2


@dataclass
class LinearProbe:
    """Standardise, then softmax regression. Fit once; `predict` gives class ids."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return z @ self.weight + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float((self.predict(x) == np.asarray(y)).mean())


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int | None = None,
    l2: float = 1e-4,
    iters: int = 300,
    lr: float = 0.05,
) -> LinearProbe:
    """Multinomial logistic regression by full-batch Adam (deterministic: zero start)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    c = int(num_classes or (y.max() + 1))
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    z = (x - mean) / scale
    n, d = z.shape
    w, b = np.zeros((d, c)), np.zeros(c)
    onehot = np.eye(c)[y]
    mw, vw, mb, vb = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, iters + 1):
        p = np.exp(log_softmax(z @ w + b))
        g = (p - onehot) / n
        gw = z.T @ g + l2 * w
        gb = g.sum(0)
        mw, vw = b1 * mw + (1 - b1) * gw, b2 * vw + (1 - b2) * gw**2
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb**2
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w -= step * mw / (np.sqrt(vw) + eps)
        b -= step * mb / (np.sqrt(vb) + eps)
    return LinearProbe(mean, scale, w, b)


def probe_accuracy(train_x, train_y, test_x, test_y, **kw: Any) -> float:
    return fit_probe(train_x, train_y, **kw).accuracy(test_x, test_y)


def classification_accuracy(class_logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(class_logits).argmax(1) == np.asarray(labels)).mean())


def collect(
    predict,
    tokens: np.ndarray,
    batch_size: int = 64,
    keys: tuple[str, ...] = ("logits", "features", "class_logits"),
):
    """Run `predict` over token batches; sums NLL on the fly (logits are not kept) and stacks the
    other outputs."""
    nll, n_tok = 0.0, 0
    kept: dict[str, list[np.ndarray]] = {k: [] for k in keys if k != "logits"}
    for s in range(0, len(tokens), batch_size):
        x = np.asarray(tokens[s : s + batch_size], dtype=np.int64)
        out = predict(x)
        if "logits" in keys and "logits" in out:
            nll += nll_sum(out["logits"], x)
            n_tok += x.size
        for k in kept:
            if k in out:
                kept[k].append(np.asarray(out[k]))
    result = {k: np.concatenate(v) for k, v in kept.items() if v}
    if n_tok:
        result["bpd"] = nll / n_tok / LN2
    return result


def save_grid(
    out, rows: list[np.ndarray], palette, *, scale: int = 4, gap: int = 2, missing=(200, 60, 60)
) -> str:
    """Save a picture grid: one row of images per array in `rows` (each (N, H, W) tokens, -1
    marks pixels not given, drawn in `missing`), scaled up `scale` times, PNG via Pillow."""
    import io
    from pathlib import Path

    from PIL import Image

    from tvc.safe_io import storage_errors, write_bytes_atomic

    n, h, w = rows[0].shape
    cell_h, cell_w = h * scale + gap, w * scale + gap
    canvas = np.full((len(rows) * cell_h + gap, n * cell_w + gap, 3), 255, np.uint8)
    for r, tokens in enumerate(rows):
        t = np.asarray(tokens)
        for i in range(n):
            known = t[i] >= 0
            img = palette.decode(np.where(known, t[i], 0))
            rgb = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
            rgb = np.where(known[..., None], rgb, np.asarray(missing, np.uint8))
            big = rgb.repeat(scale, 0).repeat(scale, 1)
            y, x = gap + r * cell_h, gap + i * cell_w
            canvas[y : y + h * scale, x : x + w * scale] = big
    png = io.BytesIO()
    Image.fromarray(canvas).save(png, format="PNG")
    out = Path(out)
    with storage_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, png.getvalue())  # an interrupted save keeps the previous grid
    return str(out)
