"""PyTorch eager runner, for comparing an exported model with its source on the same machine."""

from __future__ import annotations

import numpy as np

from tvc.runtime.base import Runner, TensorSpec


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, loaded, *, threads: int | None = None, device: str = "cpu") -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.device = torch.device(device)
        self.model = loaded.model.eval().to(self.device)
        c, h, w = loaded.info.input_size
        self._inputs = [TensorSpec("input", (None, c, h, w), np.dtype(np.float32))]
        self._outputs = [
            TensorSpec("logits", (None, loaded.info.num_classes), np.dtype(np.float32))
        ]

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
        return {"logits": y.float().cpu().numpy()}
