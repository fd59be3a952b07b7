"""ONNX -> TensorRT engine, built on the machine that will run it. No torch here.

An engine is compiled for one GPU model and one TensorRT version, so the workflow is: export
ONNX anywhere, build the engine on the board. Precision lives in the ONNX graph, not in builder
flags: explicit Q/DQ nodes make an INT8 engine, float16 tensors an FP16 one, and the network is
built strongly typed (TensorRT 10; always on in 11, which removed the INT8 calibrator and the
FP16/INT8 builder flags). So one code path serves TensorRT 10 and 11.

- `EngineConfig`: profiles (min/opt/max batch), workspace, timing cache, DLA core.
- `plan_build`: what an ONNX model plus a config give (input, profile, precision check).
- `trtexec_command`: the same build as a trtexec command line, for machines where only the
  TensorRT tools exist, or to build on the board without Python.
- `build_engine`: builds with the TensorRT Python API, checks the engine against ONNX Runtime
  on the same inputs, and returns the engine's metadata (what it was built for and with).
- `check_engine_compatible` (runtime/engine.py): fails with "rebuild the engine" on another GPU
  or TensorRT.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from tvc.errors import (
    ConfigError,
    ExportError,
    TvcError,
)

# What an engine is tied to and its check live in runtime (the runner needs them too);
# re-exported here for the builder's callers.
from tvc.runtime.engine import (  # noqa: F401
    INSTALL_HINT,
    REBUILD,
    EngineMismatchError,
    check_engine_compatible,
    current_target,
    import_tensorrt,
)

log = logging.getLogger("tvc")

ENGINE_FILE = "model.engine"
TRTEXEC_SCRIPT = "build_engine.sh"
PRECISIONS = ("fp32", "fp16", "int8")
# Tolerances of engine-vs-ONNX Runtime parity, per precision: (atol, rtol of max |reference|).
# FP32 engines may use TF32 on Ampere and newer; INT8 kernels round differently from ORT's.
PARITY_TOLERANCE = {"fp32": (1e-3, 1e-2), "fp16": (1e-2, 2e-2), "int8": (5e-2, 5e-2)}


@dataclass
class EngineConfig:
    precision: str = "fp32"  # fp32 | fp16 | int8: which ONNX variant the engine is built from
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 8
    workspace_mb: int = 1024
    timing_cache: Path | None = None  # reused across builds: a second build skips most timing
    dla_core: int | None = None  # Jetson DLA core; layers DLA cannot run fall back to the GPU

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown engine precision '{self.precision}'",
                f"use one of: {', '.join(PRECISIONS)}",
            )
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got min {self.min_batch}, "
                f"opt {self.opt_batch}, max {self.max_batch}",
                "e.g. --min-batch 1 --opt-batch 1 --max-batch 8",
            )
        if self.workspace_mb < 1:
            raise ConfigError(
                f"--workspace-mb must be >= 1, got {self.workspace_mb}", "e.g. --workspace-mb 1024"
            )
        if self.dla_core is not None and self.dla_core < 0:
            raise ConfigError(
                f"--dla must be a DLA core index >= 0, got {self.dla_core}",
                "Jetson AGX Orin has DLA cores 0 and 1",
            )


# --------------------------------------------------------------------------- build planning


@dataclass
class BuildPlan:
    """What the builder does for one ONNX model and config."""

    input_name: str
    input_shape: tuple  # as in the ONNX model; the batch dimension may be symbolic
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None  # None: static
    graph_precision: str

    def profiles_json(self) -> list[dict[str, Any]]:
        if self.profile is None:
            shape = [int(d) for d in self.input_shape]
            return [{"input": self.input_name, "min": shape, "opt": shape, "max": shape}]
        lo, opt, hi = self.profile
        return [{"input": self.input_name, "min": list(lo), "opt": list(opt), "max": list(hi)}]


def onnx_input(onnx_path: Path) -> tuple[str, tuple]:
    """Name and shape of the model's single graph input (dims: int, or str/None if dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(
            f"{onnx_path.name} has {len(inputs)} inputs; tvc builds engines for one image input",
            "export the model with a single image input",
        )
    dims = []
    for d in inputs[0].type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return inputs[0].name, tuple(dims)


def graph_precision(onnx_path: Path) -> str:
    """'int8' if the graph has Q/DQ nodes, 'fp16' if it computes in float16, else 'fp32'."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == fp16 for i in model.graph.initializer):
        return "fp16"
    for n in nodes:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute):
            return "fp16"
    return "fp32"


def _is_fixed(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d > 0


def _profile(input_name: str, input_shape: tuple, cfg: EngineConfig):
    """(min, opt, max) shapes for a dynamic batch, or None for a fully static input."""
    if not input_shape:
        raise ConfigError(
            f"input {input_name} has no shape in the ONNX model",
            "re-export the model with tvc export",
        )
    rest = input_shape[1:]
    if not all(_is_fixed(d) for d in rest):
        raise ConfigError(
            f"input {input_name} {list(input_shape)} has dynamic dimensions besides the batch",
            "export with a fixed image size (--input-size)",
        )
    batch = input_shape[0]
    if _is_fixed(batch):
        if (cfg.min_batch, cfg.opt_batch, cfg.max_batch) != (batch, batch, batch):
            raise ConfigError(
                f"the ONNX model has a fixed batch of {batch}, so its engine cannot take batches "
                f"{cfg.min_batch}..{cfg.max_batch}",
                f"re-export with --dynamic-batch, or use --min-batch {batch} --opt-batch {batch} "
                f"--max-batch {batch}",
            )
        return None
    rest = tuple(int(d) for d in rest)
    return ((cfg.min_batch, *rest), (cfg.opt_batch, *rest), (cfg.max_batch, *rest))


def plan_build(onnx_path: Path, cfg: EngineConfig) -> BuildPlan:
    """Check `cfg` against the ONNX model and derive the input profile and precision."""
    cfg.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigError(f"ONNX model {onnx_path} does not exist", "check the path")
    name, shape = onnx_input(onnx_path)
    found = graph_precision(onnx_path)
    if found != cfg.precision:
        fixes = {
            "int8": "build INT8 engines from the Q/DQ model (tvc export --int8 static writes "
            "model.int8.onnx)",
            "fp16": "build FP16 engines from the float16 model (tvc export --fp16 writes "
            "model.fp16.onnx)",
            "fp32": f"this graph is {found}: ask for --{found} or pass the FP32 model.onnx",
        }
        raise ConfigError(
            f"{onnx_path.name} is a {found} graph but a {cfg.precision} engine was asked for "
            "(TensorRT takes precision from the graph: Q/DQ nodes for INT8, float16 for FP16)",
            fixes[cfg.precision],
        )
    return BuildPlan(name, shape, _profile(name, shape, cfg), found)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(
    onnx_path: Path,
    engine_path: Path,
    cfg: EngineConfig,
    *,
    input_name: str,
    input_shape: tuple,
    trt_major: int = 10,
) -> str:
    """A trtexec command line that builds the same engine as `build_engine`.

    Strongly typed (precision comes from the graph; no --fp16/--int8, which TensorRT 11 removed),
    with min/opt/max shapes for a dynamic batch, a persistent timing cache and DLA when asked.
    `trt_major` 11 or newer drops --stronglyTyped, which is always on there.
    """
    cfg.validate()
    q = shlex.quote
    parts = ["trtexec", f"--onnx={q(str(onnx_path))}", f"--saveEngine={q(str(engine_path))}"]
    if trt_major < 11:
        parts.append("--stronglyTyped")
    profile = _profile(input_name, tuple(input_shape), cfg)
    if profile is not None:
        for flag, shape in zip(("min", "opt", "max"), profile, strict=True):
            parts.append(f"--{flag}Shapes={q(input_name)}:{_dims(shape)}")
    parts.append(f"--memPoolSize=workspace:{cfg.workspace_mb}M")
    if cfg.timing_cache is not None:
        parts.append(f"--timingCacheFile={q(str(cfg.timing_cache))}")
    if cfg.dla_core is not None:
        parts += [f"--useDLACore={cfg.dla_core}", "--allowGPUFallback"]
    return " ".join(parts)


def write_trtexec_script(directory: Path, command: str) -> Path:
    """Write `build_engine.sh` holding `command` into `directory`; return its path."""
    path = Path(directory) / TRTEXEC_SCRIPT
    path.write_text(
        "#!/bin/sh\n"
        "# Builds the TensorRT engine on the machine that will run it (a Jetson, a desktop GPU).\n"
        "# Written by tvc because TensorRT was not available where the model was exported.\n"
        "set -e\n"
        f"{command}\n"
    )
    path.chmod(0o755)
    return path


def trt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


# ---------------------------------------------------------------------------------- build


def configure_build(
    trt: ModuleType, builder: Any, network: Any, plan: BuildPlan, cfg: EngineConfig
) -> Any:
    """A builder config: workspace, optimization profile, DLA. Sets no precision flags."""
    if cfg.dla_core is not None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if cfg.dla_core >= cores:
            raise ConfigError(
                f"--dla {cfg.dla_core} asked for a DLA core, but this device has {cores}",
                "DLA exists on Jetson AGX Orin / Orin NX; omit --dla elsewhere",
            )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if plan.profile is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input_name, *plan.profile)
        config.add_optimization_profile(profile)
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def load_timing_cache(config: Any, path: Path | None) -> bool:
    """Attach a timing cache to `config`, from `path` if it exists; True if one was reused."""
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False) is False and data:
        # a cache from another GPU or TensorRT version: start a fresh one instead
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return False
    return bool(data)


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the config's (now richer) timing cache to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = config.get_timing_cache().serialize()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(bytes(memoryview(blob)))
    os.replace(tmp, path)


def network_flags(trt: ModuleType) -> int:
    """STRONGLY_TYPED where TensorRT has it (10.x); 11 is always strongly typed."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None or trt_major(trt) >= 11:
        return 0
    return 1 << int(flag)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    cfg: EngineConfig,
    *,
    check_parity: bool = True,
    trt_module: ModuleType | None = None,
) -> dict:
    """Build `engine_path` from `onnx_path` with TensorRT; return the engine's metadata.

    After the build the engine is run against ONNX Runtime on the same inputs (at the min,
    opt and max batch); a mismatch beyond the precision's tolerance raises ParityError and
    removes the engine.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    plan = plan_build(onnx_path, cfg)
    trt = trt_module or import_tensorrt("building a TensorRT engine")
    target = current_target(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
            f"{'; '.join(errors[:3]) or 'no detail'}",
            "check the opset and ops against TensorRT's ONNX support matrix",
        )
    config = configure_build(trt, builder, network, plan, cfg)
    reused = load_timing_cache(config, cfg.timing_cache)
    log.info("building a %s TensorRT engine from %s", cfg.precision, onnx_path.name)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} "
            "(see its log above)",
            "try a larger --workspace-mb, or check that the graph's ops are supported",
        )
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(memoryview(serialized)))
    if cfg.timing_cache is not None:
        save_timing_cache(config, cfg.timing_cache)
    meta = engine_metadata(
        cfg,
        plan,
        target,
        build_s=build_s,
        strongly_typed=True,
        timing_cache_reused=reused,
        onnx_name=onnx_path.name,
        engine_name=engine_path.name,
    )
    if check_parity:
        try:
            meta["parity"] = engine_parity(engine_path, onnx_path, cfg, meta=meta).as_dict()
        except TvcError:
            engine_path.unlink(missing_ok=True)
            raise
    return meta


def engine_metadata(
    cfg: EngineConfig,
    plan: BuildPlan,
    target: dict[str, Any],
    *,
    build_s: float,
    strongly_typed: bool,
    timing_cache_reused: bool,
    onnx_name: str,
    engine_name: str = ENGINE_FILE,
) -> dict[str, Any]:
    """What an engine was built for and with; stored as artifact.json "engine"."""
    return {
        "file": engine_name,
        "onnx": onnx_name,
        "precision": cfg.precision,
        "strongly_typed": strongly_typed,
        **target,  # tensorrt, gpu, compute_capability, (jetpack, l4t)
        "profiles": plan.profiles_json(),
        "workspace_mb": cfg.workspace_mb,
        "dla_core": cfg.dla_core,
        "timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None,
        "timing_cache_reused": timing_cache_reused,
        "build_seconds": round(build_s, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def engine_parity(
    engine_path: Path,
    onnx_path: Path,
    cfg: EngineConfig,
    *,
    meta: dict | None = None,
    seed: int = 0,
):
    """Run the engine and ONNX Runtime on the same random inputs; raise ParityError on mismatch.

    Compared at each distinct batch of the profile. Returns the worst Parity.
    """
    from tvc.errors import ParityError
    from tvc.export.parity import compare
    from tvc.runtime.ort import OrtRunner
    from tvc.runtime.trt import TrtRunner

    atol, rtol = PARITY_TOLERANCE[cfg.precision]
    batches = sorted({cfg.min_batch, cfg.opt_batch, cfg.max_batch})
    worst = None
    with OrtRunner(onnx_path, threads=None) as ort, TrtRunner(engine_path, meta=meta) as trt:
        if ort.inputs[0].shape and isinstance(ort.inputs[0].shape[0], int):
            batches = [ort.inputs[0].shape[0]]  # a fixed-batch model
        for i, batch in enumerate(batches):
            feeds = ort.sample_feeds(batch, seed=seed + i)
            ref = next(iter(ort.infer(feeds).values()))
            got = trt.infer(feeds)[ort.outputs[0].name]
            p = compare(
                np.asarray(ref, np.float32), np.asarray(got, np.float32), atol=atol, rtol=rtol
            )
            if not p.ok:
                raise ParityError(
                    f"the {cfg.precision} TensorRT engine does not match ONNX Runtime at batch "
                    f"{batch}: max abs diff {p.max_abs_diff:.3g} > tolerance {p.tolerance:.3g} "
                    f"(top-1 agreement {p.top1_agreement:.1%}); the engine was removed",
                    "keep LayerNorm/Softmax/residual adds out of FP16/INT8 in the ONNX graph, "
                    "or report the TensorRT version and model",
                )
            if worst is None or p.max_abs_diff - p.tolerance > worst.max_abs_diff - worst.tolerance:
                worst = p
    return worst
