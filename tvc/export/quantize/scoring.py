"""How far a quantized graph's first output (a classifier's logits) is from FP32's, measured
with in-memory ONNX Runtime sessions: the parity of every INT8 report and the layer ranking
of the accuracy gate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tvc.export.quantize.graph import input_spec, load_onnx

if TYPE_CHECKING:
    from onnx import ModelProto

    from tvc.data.base import ImageSet


def session(model: ModelProto):
    """An ORT CPU session on an in-memory model, with its input facts for batching."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return sess, input_spec(model, images=False)


def run_outputs(session, x: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Every output of `session` on inputs `x` (images, or tokens), in chunks (a fixed-batch
    model's last chunk is padded with its last input and the padding dropped)."""
    sess, spec = session
    x = np.ascontiguousarray(x, dtype=spec.dtype)
    names = [o.name for o in sess.get_outputs()]
    b = spec.fixed_batch or batch
    parts = []
    for start in range(0, len(x), b):
        chunk = x[start : start + b]
        n = len(chunk)
        if spec.fixed_batch and n < b:
            chunk = np.concatenate([chunk, chunk[-1:].repeat(b - n, axis=0)])
        parts.append([o[:n] for o in sess.run(None, {spec.name: chunk})])
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}


def predict_outputs(model: ModelProto) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """predict(x) -> every output by name, for an in-memory (or loaded) ONNX model: the shape
    tvc.tasks' `evaluate` reads."""
    opened = session(model)
    return lambda x: run_outputs(opened, x)


def predict_array(session, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The first output (a classifier's logits), one flat row per image."""
    first = next(iter(run_outputs(session, x, batch).values()))
    return first.reshape(len(x), -1)


def predict_all(session, data: ImageSet) -> np.ndarray:
    return np.concatenate([predict_array(session, x) for x, _ in data.batches(64)])


class Scorer:
    """Logit error of candidate models against FP32 on a fixed array of images."""

    def __init__(self, fp32: Path, x: np.ndarray) -> None:
        self.x = x
        self.ref = predict_array(session(load_onnx(fp32)), x)

    def score(self, model: ModelProto) -> dict[str, float]:
        return logit_errors(self.ref, predict_array(session(model), self.x))


def logit_errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    diff = (got.astype(np.float64) - ref.astype(np.float64)).reshape(len(ref), -1)
    energy = float(np.mean(ref.astype(np.float64) ** 2)) or 1.0
    a, b = (
        ref.astype(np.float64).reshape(len(ref), -1),
        got.astype(np.float64).reshape(len(ref), -1),
    )
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    cos = (a * b).sum(1) / norms
    return {
        "agreement": round(100.0 * float(np.mean(ref.argmax(1) == got.argmax(1))), 3),
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
        "mean_abs_diff": float(np.abs(diff).mean()) if diff.size else 0.0,
        "nmse": float(np.mean(diff**2) / energy),  # logit MSE relative to the logits' power
        "cosine_mean": round(float(cos.mean()), 6) if cos.size else 1.0,
        "cosine_min": round(float(cos.min()), 6) if cos.size else 1.0,
        "n": len(ref),
    }
