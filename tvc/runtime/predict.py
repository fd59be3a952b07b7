"""predict(x) over an open Runner: the shape every evaluation reads (tvc.tasks' `Predict`).

`runner_outputs(runner)` maps a float32 batch of any length to the model's outputs by name. A
model exported with a fixed batch gets the images in chunks of that size, the last chunk padded
by repeating its last image and the padding rows dropped again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from tvc.runtime.base import Runner

Outputs = dict[str, np.ndarray]


def runner_outputs(runner: Runner) -> Callable[[np.ndarray], Outputs]:
    """predict(x) -> {output name: array} over `runner`, for any number of images."""
    spec = runner.inputs[0]
    first = spec.shape[0]
    fixed = first if isinstance(first, int) and first > 0 else None

    def predict(x: np.ndarray) -> Outputs:
        x = x.astype(spec.dtype, copy=False)
        if fixed is None:
            return runner.infer(np.ascontiguousarray(x))
        parts: list[Outputs] = []
        for start in range(0, len(x), fixed):
            chunk = x[start : start + fixed]
            n = len(chunk)
            if n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            parts.append({k: v[:n] for k, v in runner.infer(np.ascontiguousarray(chunk)).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

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
