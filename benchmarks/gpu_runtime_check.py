"""Self-check of tvc's GPU runtime code on a real NVIDIA GPU, with or without TensorRT.

Runs the exact code the TensorRT runner uses for memory and timing (tvc/runtime/cuda.py:
page-locked buffers, async copies on a stream, CUDA events, CUDA graph capture), with a
device-to-device copy standing in for the engine, and checks every byte that comes back. Also
records the GPU facts tvc reads (CUDA runtime, NVML, nvidia-smi), a power measurement, whether
TensorRT is installed, and what `tvc info` says.

    python benchmarks/gpu_runtime_check.py [--out benchmarks/results/gpu_runtime_check.json]

Every section is recorded as {"ok": bool, ...}; a failing section does not stop the others.
Exits 0 when all sections that could run passed, 1 otherwise, 2 when there is no GPU at all.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvc.runtime.device import _nvml_gpus, _smi_gpus, environment

MIB = 1 << 20


def section(results: dict, name: str):
    """Decorator: run a check, record its result or its traceback under `name`."""

    def wrap(fn):
        t0 = time.perf_counter()
        try:
            out = fn()
            results[name] = {"ok": True, **(out or {})}
        except Exception as exc:
            results[name] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc().splitlines()[-6:],
            }
        results[name]["seconds"] = round(time.perf_counter() - t0, 3)
        return fn

    return wrap


def shell(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60, check=False)
    return (r.stdout + r.stderr).strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_runtime_check.json"))
    ap.add_argument("--mib", type=int, default=64, help="buffer size for the copy checks")
    args = ap.parse_args()
    res: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    nbytes = args.mib * MIB

    @section(res, "tensorrt_installed")
    def _():
        libs = shell("ldconfig -p | grep -i nvinfer || true")
        imp = shell(
            f"{sys.executable} -c 'import tensorrt; print(tensorrt.__version__)' 2>&1 | tail -1"
        )
        return {"libnvinfer": libs or "none in ldconfig", "import_tensorrt": imp}

    @section(res, "gpu_facts")
    def _():
        from tvc.runtime.cuda import cuda_api

        api = cuda_api()
        return {
            "binding": api.name,
            "cuda_runtime": api.device_facts(),
            "nvml": _nvml_gpus(),
            "nvidia_smi": _smi_gpus(),
        }

    if not res["gpu_facts"]["ok"]:
        _write(args.out, res)
        return 2

    from tvc.runtime.cuda import AsyncPipeline, HostDeviceBuffer, cuda_api

    api = cuda_api()
    rng = np.random.default_rng(0)

    @section(res, "pinned_copy_pipeline")
    def _():
        src, dst = HostDeviceBuffer(api, nbytes), HostDeviceBuffer(api, nbytes)
        pipe = AsyncPipeline(
            api, [src], [dst], lambda s: api.dtod(dst.device, src.device, nbytes, pipe.stream)
        )
        try:
            data = rng.integers(0, 256, nbytes, dtype=np.uint8)
            np.copyto(src.host.array, data)
            dst.host.array[:] = 0
            pipe.run([nbytes], [nbytes])
            full_ok = bool(np.array_equal(dst.host.array, data))
            # a smaller "batch": only the first bytes move, the rest stays as it was
            half = nbytes // 2
            np.copyto(src.host.array, data[::-1])
            pipe.run([half], [half])
            partial_ok = bool(
                np.array_equal(dst.host.array[:half], data[::-1][:half])
                and np.array_equal(dst.host.array[half:], data[half:])
            )
            view = src.host.view((4, nbytes // 16), np.float32)
            t = pipe.time([nbytes], [nbytes], iters=20, warmup=3)
            compute, e2e = float(np.median(t.compute_ms)), float(np.median(t.end_to_end_ms))
            stream_int = api.stream_handle(pipe.stream)
        finally:
            pipe.close()
            src.free()
            dst.free()
        if not (full_ok and partial_ok):
            raise AssertionError(f"copied bytes differ: full {full_ok}, partial {partial_ok}")
        return {
            "bytes": nbytes,
            "full_copy_ok": full_ok,
            "partial_copy_ok": partial_ok,
            "pinned_view_shape": list(view.shape),
            "stream_handle_is_int": isinstance(stream_int, int) and stream_int != 0,
            "d2d_median_ms": round(compute, 4),
            "d2d_gb_per_s": round(2 * nbytes / compute / 1e6, 1),  # read + write
            "h2d_d2d_d2h_median_ms": round(e2e, 4),
            "pcie_gb_per_s_estimate": round(2 * nbytes / max(e2e - compute, 1e-6) / 1e6, 1),
        }

    @section(res, "cuda_graph")
    def _():
        n = 4 * MIB
        src, mid, dst = (HostDeviceBuffer(api, n) for _ in range(3))

        def two_copies(stream_handle: int) -> None:  # two "kernels" replayed by one launch
            api.dtod(mid.device, src.device, n, pipe.stream)
            api.dtod(dst.device, mid.device, n, pipe.stream)

        pipe = AsyncPipeline(api, [src], [dst], two_copies)
        try:
            pipe.run([n], [n])
            graph = pipe.graph("b1")
            ok = []
            for seed in range(3):  # new inputs each time: the graph must copy them, not replay old
                data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
                np.copyto(src.host.array, data)
                pipe.run([n], [n], graph=graph)
                ok.append(bool(np.array_equal(dst.host.array, data)))
            plain = pipe.time([n], [n], iters=50, warmup=5)
            graphed = pipe.time([n], [n], iters=50, warmup=5, graph=graph)
            same = pipe.graph("b1") is graph
        finally:
            pipe.close()
            for b in (src, mid, dst):
                b.free()
        if not all(ok):
            raise AssertionError(f"graph replay outputs: {ok}")
        return {
            "replays_ok": ok,
            "graph_cached": same,
            "compute_median_ms_plain": round(float(np.median(plain.compute_ms)), 4),
            "compute_median_ms_graph": round(float(np.median(graphed.compute_ms)), 4),
        }

    @section(res, "power_nvml")
    def _():
        from tvc.runtime.power import Nvml, PowerSampler, find_power_source

        source = find_power_source()
        if source is None:
            raise RuntimeError("no power source found")
        n = 256 * MIB
        a, b = api.malloc(n), api.malloc(n)
        stream = api.stream()
        copies = 0
        try:
            with PowerSampler(source, interval_s=0.05) as busy:
                end = time.perf_counter() + 2.0
                while time.perf_counter() < end:
                    for _ in range(20):
                        api.dtod(b, a, n, stream)
                    api.synchronize(stream)
                    copies += 20
            time.sleep(0.5)
            with PowerSampler(source, interval_s=0.05) as idle:
                time.sleep(1.0)
        finally:
            api.destroy_stream(stream)
            api.free(a)
            api.free(b)
            source.close()
        return {
            "source": source.name,
            "rails": source.rails,
            "energy_counter": isinstance(source, Nvml) and source._has_counter,
            "busy": {
                "samples": len(busy.samples),
                "seconds": round(busy.duration_s, 3),
                "avg_power_w": busy.avg_power_w,
                "energy": busy.energy(copies),
            },
            "idle": {"samples": len(idle.samples), "avg_power_w": idle.avg_power_w},
        }

    @section(res, "trt_runner_without_tensorrt")
    def _():
        from tvc.errors import TvcError
        from tvc.runtime.trt import TrtRunner

        engine = Path("/tmp/tvc_check.engine")
        engine.write_bytes(b"not an engine")
        try:
            TrtRunner(engine)
        except TvcError as exc:
            return {"error_class": type(exc).__name__, "message": exc.message}
        raise AssertionError("TrtRunner opened a fake engine")

    @section(res, "tvc_info")
    def _():
        from tvc.runtime.availability import backend_report

        return {"rows": [f"{'yes' if ok else 'no '}  {n}: {d}" for n, ok, d in backend_report()]}

    res["environment"] = environment()
    _write(args.out, res)
    failed = [k for k, v in res.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"sections failed: {failed or 'none'}")
    return 1 if failed else 0


def _write(out: Path, res: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
