"""Top-1 / top-5 accuracy and agreement with a reference model, for any predict function.

`predict` maps a float32 NCHW batch to logits (B, K); it can wrap a PyTorch model, an ONNX
Runtime session or a TensorRT engine, so the number is measured on the thing that ships.
numpy only: this runs on a board without torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tvc.data.base import ImageSet
from tvc.errors import ConfigError, DataError
from tvc.finite import check_finite_array

Predict = Callable[[np.ndarray], np.ndarray]


def evaluate(
    predict: Predict,
    data: ImageSet,
    *,
    batch_size: int = 64,
    reference: Predict | None = None,
) -> dict[str, Any]:
    """Accuracy of `predict` on `data` in percent, plus top-1 agreement with `reference`.

    top5 is None when the model has fewer than 6 classes (it would be trivially 100%).
    """
    if len(data) == 0:
        raise DataError(f"{data.name} {data.split} has no images to evaluate", "check --data")
    correct1 = correct5 = agree = 0
    n = 0
    num_classes = None
    for x, y in data.batches(batch_size):
        logits = _logits(predict(x), len(y), "model")
        num_classes = logits.shape[1]
        top1 = logits.argmax(1)
        correct1 += int((top1 == y).sum())
        if num_classes > 5:
            top5 = np.argpartition(-logits, 4, axis=1)[:, :5]
            correct5 += int((top5 == y[:, None]).any(1).sum())
        if reference is not None:
            ref = _logits(reference(x), len(y), "reference")
            if ref.shape[1] != num_classes:
                raise ConfigError(
                    f"the reference model has {ref.shape[1]} classes, the model {num_classes}",
                    "compare models with the same classifier",
                )
            agree += int((ref.argmax(1) == top1).sum())
        n += len(y)
    if num_classes is not None and int(data.labels.max()) >= num_classes:
        raise ConfigError(
            f"{data.name} has {data.num_classes} classes but the model predicts {num_classes}",
            "use a model trained on this dataset (or give --num-classes when training)",
        )
    return {
        "top1": 100.0 * correct1 / n,
        "top5": 100.0 * correct5 / n if num_classes and num_classes > 5 else None,
        "n": n,
        "agreement": 100.0 * agree / n if reference is not None else None,
        "dataset": data.name,
        "split": data.split,
    }


def _logits(out: np.ndarray, batch: int, who: str) -> np.ndarray:
    arr = np.asarray(out)
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise ConfigError(
            f"the {who} returned an output of shape {arr.shape} for a batch of {batch}",
            "evaluate a classifier whose output is logits (batch, classes)",
        )
    # NaN logits would still "score" (argmax of NaN is 0): a corrupt model, not an accuracy
    check_finite_array(arr, f"the {who}'s outputs", "its weights are corrupt: re-make the model")
    return arr.astype(np.float32, copy=False)
