"""The TensorRT runner and its CUDA memory/stream/timing layer.

Without a GPU: the CUDA layer runs against a stand-in for cuda-python whose "device" memory is
host memory (copies really move bytes, graphs really replay recorded copies), and the runner's
error paths are checked. Tests that build and run real engines are marked trt + gpu and skip
where TensorRT or a GPU is absent; nothing here pretends an engine was built.
"""

from __future__ import annotations

import ctypes
import itertools
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tvc.artifact import write_artifact
from tvc.deps import available
from tvc.errors import ConfigError, MissingDependencyError
from tvc.runtime.cuda import AsyncPipeline, CudaPython, GpuError, HostDeviceBuffer, cuda_api
from tvc.runtime.engine import EngineMismatchError

# ------------------------------------------------------------------ a stand-in cuda-python


class FakeCudart:
    """cuda.bindings.runtime's call convention ((error, value...) tuples) over host memory."""

    cudaStreamNonBlocking = 1
    cudaMemcpyKind = SimpleNamespace(
        cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2, cudaMemcpyDeviceToDevice=3
    )
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.host: dict[int, ctypes.Array] = {}
        self.dev: dict[int, ctypes.Array] = {}
        self.copies: list[tuple[int, int]] = []  # (kind, bytes) actually executed
        self.capturing: dict[int, list] = {}
        self._ids = itertools.count(1)

    def _alloc(self, table, n):
        buf = ctypes.create_string_buffer(n)
        table[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    def cudaGetErrorName(self, err):
        return 0, {35: b"cudaErrorInsufficientDriver"}.get(int(err), b"cudaErrorUnknown")

    def cudaGetDeviceCount(self):
        return (0, self.devices) if self.devices else (35, 0)

    def cudaSetDevice(self, d):
        return (0,)

    def cudaGetDeviceProperties(self, d):
        props = SimpleNamespace(
            name=b"Fake GPU\0\0\0",
            major=8,
            minor=7,
            totalGlobalMem=8 << 30,
            multiProcessorCount=16,
            integrated=1,
        )
        return 0, props

    def cudaRuntimeGetVersion(self):
        return 0, 12060

    def cudaDriverGetVersion(self):
        return 0, 12080

    def cudaMallocHost(self, n):
        return self._alloc(self.host, n)

    def cudaFreeHost(self, ptr):
        del self.host[ptr]
        return (0,)

    def cudaMalloc(self, n):
        return self._alloc(self.dev, n)

    def cudaFree(self, ptr):
        del self.dev[ptr]
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, next(self._ids)

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamDestroy(self, s):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if stream in self.capturing:
            self.capturing[stream].append((dst, src, n, kind))
        else:
            ctypes.memmove(dst, src, n)
            self.copies.append((kind, n))
        return (0,)

    def cudaEventCreate(self):
        return 0, SimpleNamespace(t=None)

    def cudaEventRecord(self, ev, stream):
        ev.t = time.perf_counter()
        return (0,)

    def cudaEventSynchronize(self, ev):
        return (0,)

    def cudaEventElapsedTime(self, a, b):
        return 0, (b.t - a.t) * 1e3

    def cudaEventDestroy(self, ev):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing[stream] = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        return 0, self.capturing.pop(stream)

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGraphLaunch(self, ops, stream):
        for dst, src, n, kind in ops:
            ctypes.memmove(dst, src, n)
            self.copies.append((kind, n))
        return (0,)

    def cudaGraphExecDestroy(self, g):
        return (0,)


@pytest.fixture
def fake():
    rt = FakeCudart()
    return rt, CudaPython(rt)


def _copy_pipeline(api, nbytes):
    src, dst = HostDeviceBuffer(api, nbytes), HostDeviceBuffer(api, nbytes)
    pipe = AsyncPipeline(
        api, [src], [dst], lambda h: api.dtod(dst.device, src.device, nbytes, pipe.stream)
    )
    return src, dst, pipe


def test_pipeline_copies_in_computes_and_copies_out(fake):
    rt, api = fake
    src, dst, pipe = _copy_pipeline(api, 256)
    data = np.arange(256, dtype=np.uint8)
    np.copyto(src.host.array, data)
    pipe.run([256], [256])
    assert np.array_equal(dst.host.array, data)
    assert [k for k, _ in rt.copies] == [1, 3, 2]  # host->device, model, device->host
    # a smaller batch moves only its bytes
    rt.copies.clear()
    np.copyto(src.host.view((64,), np.float32), np.ones(64, np.float32))
    pipe.run([128], [128])
    assert [n for k, n in rt.copies if k != 3] == [128, 128]
    pipe.close()
    src.free()
    dst.free()
    assert rt.host == {} and rt.dev == {}  # everything allocated was freed


def test_pinned_views_share_memory_and_reject_overflow(fake):
    _, api = fake
    buf = api.pinned(64)
    view = buf.view((4, 4), np.float32)
    view[:] = 2.0
    assert buf.array[:4].view(np.float32)[0] == 2.0
    with pytest.raises(ValueError, match="do not fit"):
        buf.view((5, 4), np.float32)
    api.free_pinned(buf)


def test_cuda_graph_replays_the_captured_work_on_new_inputs(fake):
    _rt, api = fake
    src, dst, pipe = _copy_pipeline(api, 32)
    pipe.run([32], [32])
    graph = pipe.graph(1)
    assert pipe.graph(1) is graph and pipe.has_graph(1)  # captured once per key
    for seed in range(3):
        data = np.random.default_rng(seed).integers(0, 255, 32, dtype=np.uint8)
        np.copyto(src.host.array, data)
        pipe.run([32], [32], graph=graph)
        assert np.array_equal(dst.host.array, data)
    pipe.close()


def test_event_timing_reports_compute_and_end_to_end(fake):
    _, api = fake
    _src, _dst, pipe = _copy_pipeline(api, 64)
    t = pipe.time([64], [64], iters=5, warmup=1)
    assert len(t.compute_ms) == len(t.end_to_end_ms) == 5
    assert all(0 <= c <= e for c, e in zip(t.compute_ms, t.end_to_end_ms, strict=True))
    pipe.close()


class FakePycudaDriver:
    """pycuda.driver's calls over host memory, for boards that only have pycuda."""

    class Alloc:
        def __init__(self, n):
            self.buf = ctypes.create_string_buffer(n)
            self.freed = False

        def __int__(self):
            return ctypes.addressof(self.buf)

        def free(self):
            self.freed = True

    class Stream:
        handle = 1234

        def synchronize(self):
            pass

    class Event:
        def record(self, stream):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def time_since(self, start):
            return (self.t - start.t) * 1e3

    def __init__(self):
        self.allocs = []

    def pagelocked_empty(self, n, dtype):
        return np.zeros(n, dtype)

    def mem_alloc(self, n):
        self.allocs.append(self.Alloc(n))
        return self.allocs[-1]

    def memcpy_htod_async(self, dst, src, stream):
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(self, dst, src, stream):
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    def memcpy_dtod_async(self, dst, src, n, stream):
        ctypes.memmove(int(dst), int(src), n)


def test_pycuda_binding_runs_the_same_pipeline_without_graphs():
    from tvc.runtime.cuda import Pycuda

    drv = FakePycudaDriver()
    api = Pycuda(drv)
    src, dst, pipe = _copy_pipeline(api, 48)
    np.copyto(src.host.array, np.arange(48, dtype=np.uint8))
    pipe.run([48], [48])
    assert np.array_equal(dst.host.array, np.arange(48, dtype=np.uint8))
    assert api.stream_handle(pipe.stream) == 1234 and not api.supports_graphs
    with pytest.raises(GpuError, match="CUDA graphs need cuda-python"):
        pipe.graph(1)
    assert len(pipe.time([48], [48], iters=3, warmup=0).compute_ms) == 3
    pipe.close()
    src.free()
    dst.free()
    assert all(a.freed for a in drv.allocs)


def test_device_facts_come_from_the_cuda_runtime(fake):
    facts = fake[1].device_facts()
    assert facts["name"] == "Fake GPU" and facts["compute_capability"] == "8.7"
    assert facts["cuda_runtime"] == "12.6" and facts["integrated"] is True


def test_cuda_errors_name_the_failure():
    with pytest.raises(GpuError, match="no usable GPU \\(cudaErrorInsufficientDriver\\)"):
        CudaPython(FakeCudart(devices=0))


def test_this_machine_without_a_gpu_gets_a_clear_error():
    if not available("cuda"):
        pytest.skip("cuda-python is not installed")
    try:
        api = cuda_api("cuda-python")
    except GpuError as exc:
        assert "no usable GPU" in exc.problem
    else:
        assert api.device_count() >= 1  # a GPU machine: the real binding works


@pytest.mark.skipif(available("pycuda"), reason="pycuda is installed here")
def test_pycuda_asked_for_but_absent():
    with pytest.raises(MissingDependencyError, match="pycuda"):
        cuda_api("pycuda")


# ----------------------------------------------------------------- runner without TensorRT


def _engine_artifact(path, meta):
    with write_artifact(path, "engine", spec={"stage": "test"}) as w:
        w.path_for("model.engine").write_bytes(b"not a real engine")
        w.meta["engine"] = meta
    return path


def test_runner_needs_an_engine(tmp_path):
    from tvc.runtime.trt import TrtRunner

    with pytest.raises(ConfigError, match="does not exist"):
        TrtRunner(tmp_path / "none.engine")
    with write_artifact(tmp_path / "onnx_only", "onnx") as w:
        w.path_for("model.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match="has no TensorRT engine"):
        TrtRunner(tmp_path / "onnx_only")


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_runner_without_tensorrt_says_what_to_install(tmp_path):
    from tvc.runtime.trt import TrtRunner

    path = _engine_artifact(
        tmp_path / "art", {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    )
    with pytest.raises(MissingDependencyError) as err:
        TrtRunner(path)
    assert "tvc[trt]" in err.value.message


def test_runner_refuses_an_engine_from_another_tensorrt(tmp_path):
    from tvc.runtime.trt import TrtRunner

    path = _engine_artifact(
        tmp_path / "art", {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    )
    with pytest.raises(EngineMismatchError, match="rebuild the engine"):
        TrtRunner(path / "model.engine", trt_module=SimpleNamespace(__version__="10.8.0"))


# ------------------------------------------------------------- real engines (GPU + TensorRT)


def _need_trt_gpu():
    if not available("tensorrt"):
        pytest.skip("TensorRT is not installed (pip install 'tvc[trt]' on a GPU machine)")
    try:
        cuda_api()
    except Exception as exc:
        pytest.skip(f"no usable NVIDIA GPU: {exc}")


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not available("tensorrt"), reason="TensorRT is not installed")
def test_engine_builds_matches_ort_and_times(pico_onnx, tmp_path):
    _need_trt_gpu()
    from tvc.export.tensorrt import EngineConfig, build_engine, check_engine_compatible
    from tvc.runtime.ort import OrtRunner
    from tvc.runtime.trt import TrtRunner

    cache = tmp_path / "timing.cache"
    cfg = EngineConfig(min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache)
    engine = tmp_path / "model.engine"
    meta = build_engine(pico_onnx.file("model.onnx"), engine, cfg)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    assert meta["parity"]["ok"] and meta["profiles"][0]["max"] == [4, 3, 32, 32]
    check_engine_compatible(meta)
    again = build_engine(pico_onnx.file("model.onnx"), tmp_path / "again.engine", cfg)
    assert again["timing_cache_reused"] is True

    with TrtRunner(engine, meta=meta) as trt, OrtRunner(pico_onnx.file("model.onnx")) as ort:
        assert trt.batch_range == (1, 4)
        for batch in (1, 3, 4):
            x = trt.sample_feeds(batch, seed=batch)
            np.testing.assert_allclose(
                trt.infer(x)["logits"], ort.infer(x)["logits"], atol=1e-2, rtol=1e-2
            )
        with pytest.raises(ConfigError, match="outside the engine's profile"):
            trt.infer(trt.sample_feeds(5))
        t = trt.gpu_time_ms(2, iters=20, warmup=2)
        assert 0 < t["gpu_compute_ms"]["p50"] <= t["end_to_end_ms"]["p50"]
        g = trt.gpu_time_ms(2, iters=20, warmup=2, cuda_graph=True)
        assert g["cuda_graph"] and g["gpu_compute_ms"]["n"] == 20

    with TrtRunner(engine, meta=meta, cuda_graph=True) as graphed:
        x = graphed.sample_feeds(2)
        first = graphed.infer(x)["logits"]
        np.testing.assert_array_equal(graphed.infer(x)["logits"], first)


# ------------------------------------------------------------------------------ tvc info


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_info_says_why_tensorrt_is_unavailable():
    from click.testing import CliRunner

    from tvc.cli import cli

    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "tensorrt" in line.split()[1:2])
    assert row.startswith("no") and "pip install 'tvc[trt]'" in row and "trtexec" in row


def test_info_reports_a_tensorrt_that_does_not_load(monkeypatch):
    import sys

    from tvc.runtime import availability

    monkeypatch.setattr(availability, "available", lambda name: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what a broken install looks like
    name, ok, detail = availability.trt_row()
    assert (name, ok) == ("tensorrt", False) and "does not load" in detail
