"""PyTorch eager runner, for comparing an exported model with its source on the same machine.

Classifiers return `logits` (N, classes). Detectors (DETR, Deformable DETR) return `logits`
(N, queries, classes[+1 "no object"]) and `boxes` (N, queries, 4, normalised cxcywh): the names
and shapes of their ONNX export, so the same evaluation code reads either backend.
"""

from __future__ import annotations

import numpy as np

from tvc.runtime.base import Runner, TensorSpec


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, loaded, *, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        from tvc.models.detection import is_detector

        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.device = torch.device(device)
        self.model = loaded.model.eval().to(self.device)
        c, h, w = loaded.info.input_size
        self._inputs = [TensorSpec("input", (None, c, h, w), np.dtype(np.float32))]
        f32 = np.dtype(np.float32)
        extra = loaded.info.extra or {}
        if is_detector(loaded):
            queries = extra.get("num_queries", getattr(self.model, "num_queries", None))
            no_object = extra.get("no_object_class", getattr(self.model, "no_object_class", False))
            classes = loaded.info.num_classes + (1 if no_object else 0)
            self._outputs = [
                TensorSpec("logits", (None, queries, classes), f32),
                TensorSpec("boxes", (None, queries, 4), f32),
            ]
        else:
            self._outputs = [TensorSpec("logits", (None, loaded.info.num_classes), f32)]

    @property
    def provider(self) -> str:
        return str(self.device)

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads}

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(feeds["input"]).to(self.device)
        with torch.inference_mode():
            y = self.model(x)
        if self.is_detector:
            logits, boxes = y
            return {"logits": logits.float().cpu().numpy(), "boxes": boxes.float().cpu().numpy()}
        return {"logits": y.float().cpu().numpy()}
