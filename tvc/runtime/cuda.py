"""The few CUDA runtime calls the TensorRT runner needs, behind one small interface.

TensorRT executes on a CUDA stream but leaves memory to the caller. This module gives it
page-locked (pinned) host buffers, device buffers, a stream, asynchronous copies, CUDA events
for GPU-side timing and, with cuda-python, CUDA graph capture. Two implementations:

- `CudaPython`: NVIDIA's cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6).
  Every call returns a tuple `(error, *values)`; `_check` turns a non-success code into an error.
- `Pycuda`: pycuda, accepted where a board already has it (no CUDA graphs).

`AsyncPipeline` is the one place where inputs are copied in, the model runs, and outputs are
copied out on a stream; the TensorRT runner and the GPU self-check (benchmarks/) both use it.
No torch here: this installs on a board with `pip install tvc[trt]`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from tvc.errors import MissingDependencyError, TvcError


class GpuError(TvcError):
    """No usable NVIDIA GPU, or a CUDA call failed."""


def load_cudart() -> ModuleType:
    """The cuda-python runtime module, under its current or pre-12.6 name."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6

        return cudart
    except ImportError as exc:
        raise MissingDependencyError(
            "running TensorRT engines needs cuda-python (or pycuda), which is not installed",
            "install it with: pip install 'tvc[trt]'",
        ) from exc


# ------------------------------------------------------------------------------- cuda-python


@dataclass
class PinnedBuffer:
    """Page-locked host memory seen as a flat uint8 numpy array."""

    ptr: int
    nbytes: int
    array: np.ndarray  # a view over the pinned memory; valid until the buffer is freed

    def view(self, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """The first bytes of the buffer as an array of `shape` and `dtype`."""
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if n > self.nbytes:
            raise ValueError(f"{n} bytes do not fit a pinned buffer of {self.nbytes}")
        return self.array[:n].view(dtype).reshape(shape)


class CudaPython:
    """CUDA runtime through cuda-python. Handles are cuda-python objects; pointers are ints."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: ModuleType | None = None, device: int = 0) -> None:
        self.rt = cudart or load_cudart()
        count = self.device_count()
        if count <= device:
            raise GpuError(
                f"CUDA device {device} does not exist ({count} visible)",
                "run on a machine with an NVIDIA GPU, or check CUDA_VISIBLE_DEVICES",
            )
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self.device = device

    # cuda-python returns (error, value...) from every call
    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, name = self.rt.cudaGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise GpuError(
                f"{what} failed with {name}",
                "check the NVIDIA driver (nvidia-smi) and that the GPU is free",
            )
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        err, count = self.rt.cudaGetDeviceCount()
        if int(err) != 0:
            _, name = self.rt.cudaGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise GpuError(
                f"CUDA reports no usable GPU ({name})",
                "install the NVIDIA driver, or run on the board / GPU machine",
            )
        return int(count)

    def device_facts(self) -> dict[str, Any]:
        """Name, compute capability and memory of the current device, from the CUDA runtime."""
        props = self._check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return {
            "name": name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_mib": int(props.totalGlobalMem) // (1 << 20),
            "multiprocessors": int(props.multiProcessorCount),
            "integrated": bool(props.integrated),  # True on Jetson (shared memory)
            "cuda_runtime": _cuda_version(self._check(self.rt.cudaRuntimeGetVersion(), "version")),
            "cuda_driver": _cuda_version(self._check(self.rt.cudaDriverGetVersion(), "version")),
        }

    # memory
    def pinned(self, nbytes: int) -> PinnedBuffer:
        nbytes = max(int(nbytes), 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))
        return PinnedBuffer(ptr, nbytes, array)

    def free_pinned(self, buf: PinnedBuffer) -> None:
        self._check(self.rt.cudaFreeHost(buf.ptr), "cudaFreeHost")

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    # streams and copies
    def stream(self) -> Any:
        return self._check(
            self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking),
            "cudaStreamCreateWithFlags",
        )

    def stream_handle(self, stream: Any) -> int:
        """The raw cudaStream_t address, as TensorRT's execute_async_v3 wants it."""
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def htod(self, dst: int, src: PinnedBuffer, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ptr, nbytes, kind, stream), "copy to GPU")

    def dtoh(self, dst: PinnedBuffer, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ptr, src, nbytes, kind, stream), "copy from GPU")

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "copy on GPU")

    # events: GPU-side timestamps, so the timing excludes Python and launch overhead
    def event(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record(self, event: Any, stream: Any) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    # CUDA graphs: record the kernels of one inference once, then replay them with one launch
    def capture(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        try:
            return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


def _cuda_version(v: int) -> str:
    """12040 -> '12.4'."""
    return f"{int(v) // 1000}.{(int(v) % 1000) // 10}"


# ------------------------------------------------------------------------------------ pycuda


class Pycuda:
    """The same interface over pycuda, for boards that already have it. No CUDA graphs."""

    name = "pycuda"
    supports_graphs = False

    def __init__(self, driver: ModuleType | None = None, device: int = 0) -> None:
        if driver is None:
            try:
                import pycuda.autoinit  # noqa: F401 - creates the context on device 0
                import pycuda.driver as driver
            except ImportError as exc:
                raise MissingDependencyError(
                    "running TensorRT engines needs cuda-python or pycuda, neither is installed",
                    "install it with: pip install 'tvc[trt]'",
                ) from exc
            except Exception as exc:  # pycuda.autoinit raises driver errors without a GPU
                raise GpuError(
                    f"pycuda cannot open a GPU ({exc})", "check the NVIDIA driver and the GPU"
                ) from exc
        self.cuda = driver
        self.device = device
        self._allocs: dict[int, Any] = {}  # pycuda frees memory when its object is collected

    def device_count(self) -> int:
        return int(self.cuda.Device.count())

    def device_facts(self) -> dict[str, Any]:
        dev = self.cuda.Device(self.device)
        major, minor = dev.compute_capability()
        return {
            "name": dev.name(),
            "compute_capability": f"{major}.{minor}",
            "memory_mib": int(dev.total_memory()) // (1 << 20),
        }

    def pinned(self, nbytes: int) -> PinnedBuffer:
        array = self.cuda.pagelocked_empty(max(int(nbytes), 1), np.uint8)
        return PinnedBuffer(int(array.ctypes.data), array.nbytes, array)

    def free_pinned(self, buf: PinnedBuffer) -> None:
        base = getattr(buf.array, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def malloc(self, nbytes: int) -> Any:
        alloc = self.cuda.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def destroy_stream(self, stream: Any) -> None:
        pass  # freed with the Python object

    def htod(self, dst: int, src: PinnedBuffer, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, src.array[:nbytes], stream)

    def dtoh(self, dst: PinnedBuffer, src: int, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(dst.array[:nbytes], src, stream)

    def dtod(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtod_async(dst, src, nbytes, stream)

    def event(self) -> Any:
        return self.cuda.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def destroy_event(self, event: Any) -> None:
        pass

    def capture(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        raise GpuError(
            "CUDA graphs need cuda-python; this board uses pycuda",
            "pip install cuda-python, or time without --cuda-graph",
        )

    def launch(self, graph_exec: Any, stream: Any) -> None:
        raise GpuError("CUDA graphs need cuda-python", "pip install cuda-python")

    def destroy_graph(self, graph_exec: Any) -> None:
        pass


CudaApi = CudaPython | Pycuda


def cuda_api(prefer: str | None = None, device: int = 0) -> CudaApi:
    """cuda-python when installed, else pycuda; `prefer` forces one ('cuda-python' | 'pycuda')."""
    if prefer not in (None, "cuda-python", "pycuda"):
        raise ValueError(f"unknown CUDA binding {prefer!r}")
    if prefer == "pycuda":
        return Pycuda(device=device)
    try:
        cudart = load_cudart()
    except MissingDependencyError:
        if prefer == "cuda-python":
            raise
        return Pycuda(device=device)
    return CudaPython(cudart, device=device)


# --------------------------------------------------------------------------------- pipeline


class HostDeviceBuffer:
    """A pinned host buffer and a device buffer of the same size, for one tensor."""

    def __init__(self, api: CudaApi, nbytes: int) -> None:
        self.api = api
        self.nbytes = int(nbytes)
        self.host = api.pinned(self.nbytes)
        self.device = api.malloc(self.nbytes)

    def free(self) -> None:
        if self.device is not None:
            self.api.free(self.device)
            self.api.free_pinned(self.host)
            self.device = None


@dataclass
class Timing:
    """Per-iteration milliseconds from CUDA events."""

    compute_ms: list[float]  # the model alone (or the graph launch replaying it)
    end_to_end_ms: list[float]  # copy in + model + copy out, as the GPU saw it


class AsyncPipeline:
    """Copy inputs in, run `compute(stream_handle)`, copy outputs out, all on one stream.

    `sizes_in` / `sizes_out` give the bytes to copy per call (a smaller batch copies less than
    the buffers hold). With `graph` set, the compute step replays a captured CUDA graph.
    """

    def __init__(
        self,
        api: CudaApi,
        inputs: list[HostDeviceBuffer],
        outputs: list[HostDeviceBuffer],
        compute: Callable[[int], None],
    ) -> None:
        self.api = api
        self.inputs, self.outputs = inputs, outputs
        self.compute = compute
        self.stream = api.stream()
        self.handle = api.stream_handle(self.stream)
        self._events = [api.event() for _ in range(4)]
        self._graphs: dict[Any, Any] = {}

    def enqueue(
        self,
        sizes_in: Sequence[int],
        sizes_out: Sequence[int],
        *,
        graph: Any = None,
        timed: bool = False,
    ) -> None:
        api, ev = self.api, self._events
        if timed:
            api.record(ev[0], self.stream)
        for buf, n in zip(self.inputs, sizes_in, strict=True):
            api.htod(buf.device, buf.host, n, self.stream)
        if timed:
            api.record(ev[1], self.stream)
        if graph is not None:
            api.launch(graph, self.stream)
        else:
            self.compute(self.handle)
        if timed:
            api.record(ev[2], self.stream)
        for buf, n in zip(self.outputs, sizes_out, strict=True):
            api.dtoh(buf.host, buf.device, n, self.stream)
        if timed:
            api.record(ev[3], self.stream)

    def run(self, sizes_in: Sequence[int], sizes_out: Sequence[int], *, graph: Any = None) -> None:
        """One synchronous call: after it, the outputs' pinned host buffers hold the results."""
        self.enqueue(sizes_in, sizes_out, graph=graph)
        self.api.synchronize(self.stream)

    def has_graph(self, key: Any) -> bool:
        return key in self._graphs

    def graph(self, key: Any) -> Any:
        """The CUDA graph of `compute` for `key` (e.g. the batch size), captured once.

        Call `run` once with the same shapes first: TensorRT finishes shape-dependent setup
        on the first execution, and that setup must not be captured.
        """
        if key not in self._graphs:
            self._graphs[key] = self.api.capture(self.stream, lambda: self.compute(self.handle))
        return self._graphs[key]

    def time(
        self,
        sizes_in: Sequence[int],
        sizes_out: Sequence[int],
        *,
        iters: int = 100,
        warmup: int = 10,
        graph: Any = None,
    ) -> Timing:
        """GPU compute and end-to-end milliseconds per iteration, measured with CUDA events."""
        for _ in range(warmup):
            self.enqueue(sizes_in, sizes_out, graph=graph)
        self.api.synchronize(self.stream)
        compute, e2e = [], []
        ev = self._events
        for _ in range(iters):
            self.enqueue(sizes_in, sizes_out, graph=graph, timed=True)
            e2e.append(self.api.elapsed_ms(ev[0], ev[3]))
            compute.append(self.api.elapsed_ms(ev[1], ev[2]))
        return Timing(compute, e2e)

    def close(self) -> None:
        for g in self._graphs.values():
            self.api.destroy_graph(g)
        self._graphs.clear()
        for e in self._events:
            self.api.destroy_event(e)
        self._events = []
        if self.stream is not None:
            self.api.synchronize(self.stream)
            self.api.destroy_stream(self.stream)
            self.stream = None
