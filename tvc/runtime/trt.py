"""TensorRT runner: a serialized engine behind the same Runner interface as ONNX Runtime.

Memory follows NVIDIA's recipe: one page-locked host buffer and one device buffer per tensor,
sized for the profile's largest batch and allocated once; each call copies inputs in, runs
`execute_async_v3` and copies outputs out on one CUDA stream, then synchronizes. A smaller batch
sets the input shape (`set_input_shape`) and copies only the bytes it needs.

`gpu_time_ms` measures the GPU's own time with CUDA events: the model alone, and end to end with
the copies; optionally replaying a captured CUDA graph, which removes per-kernel launch cost.
No torch import: this runs on a board with `pip install tvc[trt]`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tvc.artifact import is_artifact, load_artifact
from tvc.errors import ArtifactError, ConfigError, UnsupportedModelError
from tvc.runtime.base import Runner, TensorSpec
from tvc.runtime.cuda import AsyncPipeline, GpuError, HostDeviceBuffer, cuda_api
from tvc.runtime.engine import check_engine_compatible, import_tensorrt

log = logging.getLogger("tvc")
ENGINE_FILE = "model.engine"


def locate_engine(path: str | os.PathLike) -> tuple[Path, dict | None]:
    """The engine file for `path` (an artifact directory or an .engine file) and its metadata."""
    p = Path(path)
    if p.is_dir():
        art = load_artifact(p)
        if not art.has(ENGINE_FILE):
            raise ConfigError(
                f"{p} has no TensorRT engine",
                f"build one on this machine: tvc export {p} --trt -o OUT",
            )
        return art.file(ENGINE_FILE), art.meta.get("engine")
    if not p.is_file():
        raise ConfigError(f"TensorRT engine {p} does not exist", "check the path")
    if is_artifact(p.parent):
        return p, load_artifact(p.parent).meta.get("engine")
    return p, None


class TrtRunner(Runner):
    """Runs a TensorRT engine. `path`: an export artifact holding model.engine, or the file."""

    backend = "trt"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        cuda_graph: bool = False,
        check_compatibility: bool = True,
        meta: dict | None = None,
        cuda: str | None = None,
        trt_module: ModuleType | None = None,
    ) -> None:
        self.engine_path, found = locate_engine(path)
        self.meta = meta if meta is not None else found
        trt = trt_module or import_tensorrt("running a TensorRT engine")
        self.trt = trt
        if check_compatibility and self.meta:
            check_engine_compatible(self.meta, trt_module=trt)
        elif not self.meta:
            log.warning(
                "%s has no tvc metadata; TensorRT itself will refuse it if it was built "
                "for another GPU or version",
                self.engine_path,
            )
        self.api = cuda_api(cuda)
        self.cuda_graph = bool(cuda_graph) and self.api.supports_graphs
        if cuda_graph and not self.cuda_graph:
            log.warning("CUDA graphs need cuda-python; timing without them (%s)", self.api.name)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"TensorRT {trt.__version__} cannot load {self.engine_path} (built for another "
                "GPU or TensorRT version, or damaged)",
                "rebuild the engine on this machine: tvc export MODEL --trt -o OUT",
            )
        self.context = self.engine.create_execution_context()
        self._inputs, self._outputs, self._ranges = self._read_io()
        self._buffers: dict[str, HostDeviceBuffer] = {}
        self._pipeline: AsyncPipeline | None = None
        self._batch: int | None = None
        self._allocate()

    # ------------------------------------------------------------------ engine description

    def _read_io(self):
        trt, engine = self.trt, self.engine
        inputs, outputs, ranges = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            try:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            except TypeError as exc:  # bf16, fp8, int4 have no numpy type
                raise UnsupportedModelError(
                    f"engine tensor {name} has type {engine.get_tensor_dtype(name)}, which numpy "
                    "cannot hold",
                    "keep the model's inputs and outputs in float32 or float16",
                ) from exc
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, tuple(d if d >= 0 else None for d in shape), dtype)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
                if any(d < 0 for d in shape):
                    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
                    ranges[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
                else:
                    ranges[name] = (shape, shape)
            else:
                outputs.append(spec)
        return inputs, outputs, ranges

    @property
    def batch_range(self) -> tuple[int, int]:
        """Smallest and largest batch the engine's optimization profile accepts."""
        lo, hi = self._ranges[self._inputs[0].name]
        return lo[0], hi[0]

    @property
    def provider(self) -> str:
        gpu = (self.meta or {}).get("gpu", "GPU")
        return f"TensorRT {self.trt.__version__} on {gpu}"

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cuda": self.api.name,
            "cuda_graph": self.cuda_graph,
            "precision": (self.meta or {}).get("precision"),
        }

    # ---------------------------------------------------------------------------- buffers

    def _allocate(self) -> None:
        """One pinned + device buffer per tensor, sized for the largest batch of the profile."""
        for spec in self._inputs:
            hi = self._ranges[spec.name][1]
            self._set_shape(spec.name, hi)
            self._buffers[spec.name] = HostDeviceBuffer(self.api, _nbytes(hi, spec.dtype))
        for spec in self._outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise UnsupportedModelError(
                    f"output {spec.name} has a data-dependent shape {shape}",
                    "tvc runs classification engines with shapes known from the input",
                )
            self._buffers[spec.name] = HostDeviceBuffer(self.api, _nbytes(shape, spec.dtype))
        for name, buf in self._buffers.items():
            if not self.context.set_tensor_address(name, buf.device):
                raise GpuError(f"TensorRT refused the device buffer of {name}", "report this bug")
        self._pipeline = AsyncPipeline(
            self.api,
            [self._buffers[s.name] for s in self._inputs],
            [self._buffers[s.name] for s in self._outputs],
            self._execute,
        )

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, shape):
            raise ConfigError(
                f"TensorRT rejected shape {shape} for input {name}",
                "pass inputs within the engine's optimization profile",
            )

    def _execute(self, stream_handle: int) -> None:
        if not self.context.execute_async_v3(stream_handle):
            raise GpuError(
                "TensorRT failed to run the engine (see its log above)",
                "check the inputs, or rebuild the engine",
            )

    def _prepare(self, batch: int) -> None:
        """Set the input shapes for `batch` (a no-op if they are already set)."""
        if batch == self._batch:
            return
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise ConfigError(
                f"batch {batch} is outside the engine's profile ({lo}..{hi})",
                f"rebuild the engine with --min-batch/--max-batch covering {batch}",
            )
        for spec in self._inputs:
            self._set_shape(spec.name, (batch, *self._ranges[spec.name][1][1:]))
        self._batch = batch

    def _sizes(self) -> tuple[list[int], list[tuple[int, ...]]]:
        shapes_in = [
            tuple(int(d) for d in self.context.get_tensor_shape(s.name)) for s in self._inputs
        ]
        shapes_out = [
            tuple(int(d) for d in self.context.get_tensor_shape(s.name)) for s in self._outputs
        ]
        return shapes_in, shapes_out

    def _load_inputs(self, feeds: dict[str, np.ndarray]) -> tuple[list[int], list[tuple]]:
        shapes_in, shapes_out = self._sizes()
        sizes_in = []
        for spec, shape in zip(self._inputs, shapes_in, strict=True):
            buf = self._buffers[spec.name]
            np.copyto(buf.host.view(shape, spec.dtype), feeds[spec.name], casting="no")
            sizes_in.append(_nbytes(shape, spec.dtype))
        return sizes_in, shapes_out

    # ---------------------------------------------------------------------------- running

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = int(next(iter(feeds.values())).shape[0])
        self._prepare(batch)
        sizes_in, shapes_out = self._load_inputs(feeds)
        sizes_out = [_nbytes(s, o.dtype) for s, o in zip(shapes_out, self._outputs, strict=True)]
        graph = None
        if self.cuda_graph:
            if not self._pipeline.has_graph(batch):
                self._pipeline.run(sizes_in, sizes_out)  # TensorRT's first run is not captured
            graph = self._pipeline.graph(batch)
        self._pipeline.run(sizes_in, sizes_out, graph=graph)
        return {
            o.name: self._buffers[o.name].host.view(s, o.dtype).copy()
            for o, s in zip(self._outputs, shapes_out, strict=True)
        }

    def gpu_time_ms(
        self,
        batch: int = 1,
        *,
        iters: int = 100,
        warmup: int = 10,
        cuda_graph: bool | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """GPU time per inference from CUDA events, as Latency dicts (milliseconds).

        `gpu_compute_ms`: the engine alone; `end_to_end_ms`: copy in + engine + copy out.
        `cuda_graph` (default: the runner's setting) replays a captured graph of the engine.
        """
        from tvc.records import Latency

        use_graph = self.cuda_graph if cuda_graph is None else bool(cuda_graph)
        if use_graph and not self.api.supports_graphs:
            raise GpuError("CUDA graphs need cuda-python", "pip install cuda-python")
        feeds = self.sample_feeds(batch, seed=seed)
        self.check_feeds(feeds)
        self._prepare(batch)
        sizes_in, shapes_out = self._load_inputs(feeds)
        sizes_out = [_nbytes(s, o.dtype) for s, o in zip(shapes_out, self._outputs, strict=True)]
        self._pipeline.run(sizes_in, sizes_out)  # settles shapes before timing or capture
        graph = self._pipeline.graph(batch) if use_graph else None
        t = self._pipeline.time(sizes_in, sizes_out, iters=iters, warmup=warmup, graph=graph)
        return {
            "batch": batch,
            "cuda_graph": use_graph,
            "gpu_compute_ms": Latency.from_samples(np.array(t.compute_ms) / 1e3).as_dict(),
            "end_to_end_ms": Latency.from_samples(np.array(t.end_to_end_ms) / 1e3).as_dict(),
        }

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        # TensorRT objects are freed when their last reference goes: context before engine
        self.context = None
        self.engine = None
        self._runtime = None


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
