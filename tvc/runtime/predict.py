"""predict(x) over an open Runner: the shape every evaluation reads (tvc.tasks' `Predict`).

`runner_outputs(runner)` maps a float32 batch of any length to the model's outputs by name. A
model exported with a fixed batch gets the images in chunks of that size, the last chunk padded
by repeating its last image and the padding rows dropped again. A detector exported with
`--pixel-mask` also takes `predict(x, mask)`: the letterbox padding mask (1 = real pixel) goes
to its `pixel_mask` input (all ones when the batch has no padding); a model without that input
ignores the mask.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from tvc.runtime.base import Runner

Outputs = dict[str, np.ndarray]


MASK_INPUT = "pixel_mask"


def runner_outputs(runner: Runner) -> Callable[..., Outputs]:
    """predict(x[, mask]) -> {output name: array} over `runner`, for any number of images."""
    spec = runner.inputs[0]
    mask_spec = next((s for s in runner.inputs[1:] if s.name == MASK_INPUT), None)
    first = spec.shape[0]
    fixed = first if isinstance(first, int) and first > 0 else None

    def feeds(x: np.ndarray, mask: np.ndarray | None) -> dict[str, np.ndarray] | np.ndarray:
        if mask_spec is None:  # a one-input model takes the array as it is
            return np.ascontiguousarray(x)
        if mask is None:
            mask = np.ones((len(x), *x.shape[2:]), mask_spec.dtype)
        mask = np.ascontiguousarray(mask.astype(mask_spec.dtype, copy=False))
        return {spec.name: np.ascontiguousarray(x), MASK_INPUT: mask}

    def predict(x: np.ndarray, mask: np.ndarray | None = None) -> Outputs:
        x = x.astype(spec.dtype, copy=False)
        if fixed is None:
            return runner.infer(feeds(x, mask))
        parts: list[Outputs] = []
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            part = None if mask is None else mask[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
                if part is not None:
                    part = np.concatenate([part, np.repeat(part[-1:], fixed - n, axis=0)])
            parts.append({k: v[:n] for k, v in runner.infer(feeds(chunk, part)).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    predict.takes_mask = mask_spec is not None  # type: ignore[attr-defined]
    return predict


def runner_predict(runner: Runner) -> Callable[[np.ndarray], np.ndarray]:
    """predict(x) -> the model's first output (a classifier's logits) over `runner`."""
    outputs = runner_outputs(runner)
    name = runner.outputs[0].name
    return lambda x: outputs(x)[name]


def runner_predictor(
    runner: Runner, names: tuple[str, ...] = ("logits", "boxes")
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """predict(x) -> the named outputs as a tuple (a detector's logits and boxes)."""
    outputs = runner_outputs(runner)

    def predict(x: np.ndarray) -> tuple[np.ndarray, ...]:
        out = outputs(x)
        return tuple(out[n] for n in names)

    return predict


def onnx_predictor(
    path: str | os.PathLike,
    *,
    threads: int | None = None,
    provider: str = "cpu",
    names: tuple[str, ...] = ("logits", "boxes"),
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """runner_predictor over ONNX Runtime for the model file at `path`."""
    from tvc.runtime.ort import OrtRunner

    return runner_predictor(OrtRunner(path, threads=threads, provider=provider), names)
