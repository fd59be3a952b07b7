"""The `torch` backend: PyTorch eager, for comparing an exported model with its source on the
same machine. It sits above runtime (a board never imports torch) and registers itself in
runtime's backend registry like any other backend; torch is imported only when it runs.

Classifiers return `logits` (N, classes). Detectors (DETR, Deformable DETR) return `logits`
(N, queries, classes[+1 "no object"]) and `boxes` (N, queries, 4, normalised cxcywh): the names
and shapes of their ONNX export, so the same evaluation code reads either backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tvc.deps import available
from tvc.errors import ConfigError
from tvc.models.info import LoadedModel, is_detector
from tvc.runtime.backends import register_backend
from tvc.runtime.base import Runner, TensorSpec
from tvc.runtime.targets import Variant
from tvc.tasks import task_for_info


class TorchRunner(Runner):
    backend = "torch"

    def __init__(
        self, loaded: LoadedModel, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.device = torch.device(device)
        self.model = loaded.model.eval().to(self.device)
        c, h, w = loaded.info.input_size
        f32 = np.dtype(np.float32)
        extra = loaded.info.extra or {}
        # Tasks beyond classification and detection (Image GPT's tokens, LSTR's lanes) run
        # through their task adapter, which returns the outputs its ONNX graph names.
        self._task = None
        task = task_for_info(loaded.info)
        if task.name not in ("classification", "detection"):
            io = task.onnx_io(loaded.info)
            if task.input_kind == "tokens":
                spec = TensorSpec(io.inputs[0], (None, self.model.seq_len), np.dtype(np.int64))
            else:
                spec = TensorSpec(io.inputs[0], (None, c, h, w), f32)
            self._inputs, self._task = [spec], task
            # one call on a sample batch tells the outputs' shapes
            sample = task.outputs(self.model, self.sample_feeds(1)[spec.name])
            self._outputs = [TensorSpec(n, (None, *sample[n].shape[1:]), f32) for n in io.outputs]
            return
        self._inputs = [TensorSpec("input", (None, c, h, w), f32)]
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

        if self._task is not None:
            return self._task.outputs(self.model, feeds[self._inputs[0].name])
        x = torch.from_numpy(feeds["input"]).to(self.device)
        with torch.inference_mode():
            y = self.model(x)
        if self.is_detector:
            logits, boxes = y
            return {"logits": logits.float().cpu().numpy(), "boxes": boxes.float().cpu().numpy()}
        return {"logits": y.float().cpu().numpy()}


def _open(variant: Variant, *, threads: int | None, provider: str) -> Runner:
    return TorchRunner(variant.model, threads=threads)


def _variants(target: str, model_kwargs: dict[str, Any]) -> list[Variant]:
    """The PyTorch model behind `target` (a model name, HF directory or artifact), loaded."""
    from tvc.models import load_model

    if Path(target).suffix == ".onnx":
        raise ConfigError(
            f"{target} is an ONNX file; the torch backend needs the PyTorch model",
            "pass the model name or its model artifact, or use --backend ort",
        )
    loaded = load_model(target, **model_kwargs)
    art = loaded.artifact
    name = loaded.info.name
    v = Variant(f"{name} fp32", "fp32", None, art, name, art.size_bytes if art else None)
    v.model = loaded
    if art is None:
        v.extra["params"] = int(sum(p.numel() for p in loaded.model.parameters()))
    return [v]


register_backend(
    "torch",
    _open,
    lambda: available("torch"),
    variants=_variants,
    needs="PyTorch",
    install="install it with: pip install 'tvc[torch]', or use --backend ort",
)
