"""ONNX Runtime runner (CPU; CUDA and TensorRT execution providers where installed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tvc.errors import ConfigError, ExportError
from tvc.runtime.base import Runner, TensorSpec

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def session_from_onnx(
    path: str | os.PathLike, *, threads: int | None = None, provider: str = "cpu"
):  # -> onnxruntime.InferenceSession
    """An InferenceSession with an explicit thread count (ORT's default pool fights on 2 cores)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX model {path} does not exist", "check the path")
    name = PROVIDER_ALIASES.get(provider, provider)
    if name not in ort.get_available_providers():
        raise ConfigError(
            f"ONNX Runtime provider {name} is not available here "
            f"(available: {', '.join(ort.get_available_providers())})",
            "use --provider cpu, or install onnxruntime-gpu on a machine with a GPU",
        )
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=[name])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"ONNX Runtime cannot load {path}: {first}",
            "the file is not a valid ONNX model; re-run 'tvc export'",
        ) from exc


class OrtRunner(Runner):
    backend = "ort"

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, provider: str = "cpu"
    ) -> None:
        self.path = Path(path)
        self.threads = threads
        self.session = session_from_onnx(path, threads=threads, provider=provider)
        self._inputs = [self._spec(i) for i in self.session.get_inputs()]
        self._outputs = [self._spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @staticmethod
    def _spec(arg) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
        return TensorSpec(arg.name, shape, np.dtype(_ORT_TYPES.get(arg.type, np.float32)))

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads}

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outs, strict=True))
