"""Engine build configuration, trtexec command, metadata checks. No GPU or TensorRT needed.

Where the TensorRT API is involved, a recording stand-in checks how tvc calls it; none of these
tests produces or claims an engine. Real builds are in tests/runtime/test_trt_runner.py (marked
trt + gpu).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from tvc.deps import available
from tvc.errors import ArtifactError, ConfigError, ExportError, MissingDependencyError
from tvc.export import tensorrt as tx
from tvc.export.tensorrt import (
    EngineConfig,
    EngineMismatchError,
    check_engine_compatible,
    plan_build,
    trtexec_command,
)

# ------------------------------------------------------------------------- tiny ONNX models


def tiny_onnx(path: Path, *, batch="batch", precision: str = "fp32") -> Path:
    """input[batch,3,8,8] -> Flatten -> MatMul -> logits[batch,4], optionally Q/DQ or float16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "input"
    if precision == "int8":
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
        ]
        x = "xdq"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    w = rng.standard_normal((192, 4)).astype(np.float32)
    if precision == "fp16":
        inits.append(numpy_helper.from_array(w.astype(np.float16), "w"))
        nodes += [
            helper.make_node("Cast", ["flat"], ["flat16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["flat16", "w"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes.append(helper.make_node("MatMul", ["flat", "w"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dyn_onnx(tmp_path):
    return tiny_onnx(tmp_path / "model.onnx")


# ----------------------------------------------------------------------- config and planning


def test_plan_from_exported_vit_has_dynamic_batch_profile(pico_onnx):
    plan = plan_build(
        pico_onnx.file("model.onnx"), EngineConfig(min_batch=1, opt_batch=4, max_batch=8)
    )
    assert plan.input_name == "input"
    assert plan.input_shape[1:] == (3, 32, 32) and not isinstance(plan.input_shape[0], int)
    assert plan.profile == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert plan.graph_precision == "fp32"
    assert plan.profiles_json() == [
        {"input": "input", "min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, "min <= opt <= max"),
        ({"min_batch": 0}, "min <= opt <= max"),
        ({"precision": "int4"}, "unknown engine precision"),
        ({"workspace_mb": 0}, "--workspace-mb"),
        ({"dla_core": -1}, "--dla"),
    ],
)
def test_engine_config_rejects_bad_values(dyn_onnx, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan_build(dyn_onnx, EngineConfig(**kwargs))


def test_fixed_batch_model_cannot_take_a_batch_range(tmp_path):
    static = tiny_onnx(tmp_path / "static.onnx", batch=1)
    with pytest.raises(ConfigError, match="fixed batch of 1") as err:
        plan_build(static, EngineConfig())
    assert "--dynamic-batch" in err.value.fix
    plan = plan_build(static, EngineConfig(min_batch=1, opt_batch=1, max_batch=1))
    assert plan.profile is None
    assert plan.profiles_json()[0]["max"] == [1, 3, 8, 8]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_precision_is_read_from_the_graph(tmp_path, precision):
    path = tiny_onnx(tmp_path / f"{precision}.onnx", precision=precision)
    assert tx.graph_precision(path) == precision
    assert plan_build(path, EngineConfig(precision=precision)).graph_precision == precision


def test_asking_int8_of_a_float_graph_says_which_model_to_use(dyn_onnx):
    with pytest.raises(ConfigError, match="fp32 graph but a int8 engine") as err:
        plan_build(dyn_onnx, EngineConfig(precision="int8"))
    assert "model.int8.onnx" in err.value.fix


def test_asking_fp32_of_a_qdq_graph_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="int8 graph"):
        plan_build(tiny_onnx(tmp_path / "q.onnx", precision="int8"), EngineConfig())


def test_missing_onnx_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        plan_build(tmp_path / "none.onnx", EngineConfig())


# -------------------------------------------------------------------------------- trtexec


def _flags(cmd: str) -> dict[str, str]:
    out = {}
    for tok in shlex.split(cmd)[1:]:
        key, _, value = tok.partition("=")
        out[key] = value
    return out


def test_trtexec_command_is_strongly_typed_with_profiles_and_cache(tmp_path):
    cfg = EngineConfig(
        precision="fp16",
        min_batch=1,
        opt_batch=2,
        max_batch=16,
        workspace_mb=512,
        timing_cache=tmp_path / "my cache.bin",
    )
    cmd = trtexec_command(
        tmp_path / "model.fp16.onnx",
        tmp_path / "model.engine",
        cfg,
        input_name="input",
        input_shape=("batch", 3, 224, 224),
    )
    assert cmd.startswith("trtexec ")
    flags = _flags(cmd)
    assert flags["--onnx"] == str(tmp_path / "model.fp16.onnx")
    assert flags["--saveEngine"] == str(tmp_path / "model.engine")
    assert "--stronglyTyped" in flags
    assert flags["--minShapes"] == "input:1x3x224x224"
    assert flags["--optShapes"] == "input:2x3x224x224"
    assert flags["--maxShapes"] == "input:16x3x224x224"
    assert flags["--memPoolSize"] == "workspace:512M"
    assert flags["--timingCacheFile"] == str(tmp_path / "my cache.bin")  # quoted, survives split
    # precision comes from the graph: no weak-typing flags (TensorRT 11 removed them)
    assert not {"--fp16", "--int8", "--best", "--calib"} & set(flags)
    assert "--useDLACore" not in flags


def test_trtexec_command_for_dla_and_trt11(tmp_path):
    cfg = EngineConfig(precision="int8", dla_core=1)
    cmd = trtexec_command(
        Path("m.onnx"),
        Path("m.engine"),
        cfg,
        input_name="x",
        input_shape=(None, 3, 8, 8),
        trt_major=11,
    )
    flags = _flags(cmd)
    assert flags["--useDLACore"] == "1" and "--allowGPUFallback" in flags
    assert "--stronglyTyped" not in flags  # always on in TensorRT 11
    assert flags["--maxShapes"] == "x:8x3x8x8"


def test_trtexec_command_for_a_static_model_has_no_shapes():
    cmd = trtexec_command(
        Path("m.onnx"),
        Path("m.engine"),
        EngineConfig(min_batch=2, opt_batch=2, max_batch=2),
        input_name="input",
        input_shape=(2, 3, 8, 8),
    )
    assert "Shapes" not in cmd


def test_build_script_is_written_and_executable(tmp_path):
    path = tx.write_trtexec_script(tmp_path, "trtexec --onnx=m.onnx")
    assert path.name == "build_engine.sh"
    assert path.stat().st_mode & 0o111
    assert path.read_text().splitlines()[-1] == "trtexec --onnx=m.onnx"


# ------------------------------------------------------------------- TensorRT absent here


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_build_without_tensorrt_says_what_to_install(dyn_onnx, tmp_path):
    with pytest.raises(MissingDependencyError) as err:
        tx.build_engine(dyn_onnx, tmp_path / "model.engine", EngineConfig())
    assert "tvc[trt]" in err.value.message and "trtexec" in err.value.message
    assert not (tmp_path / "model.engine").exists()


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_engine_check_without_tensorrt_says_what_to_install():
    meta = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        check_engine_compatible(meta)


def test_broken_tensorrt_install_is_reported_as_missing(monkeypatch):
    import tvc.deps

    def boom(module, purpose):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(tvc.deps, "require", boom)
    with pytest.raises(MissingDependencyError, match=r"does not load.*libnvinfer"):
        tx.import_tensorrt("building a TensorRT engine")


# ------------------------------------------------------------------ engine compatibility


META = {"tensorrt": "10.3.0.30", "gpu": "Orin", "compute_capability": "8.7", "jetpack": "6.1"}


def test_engine_on_the_machine_that_built_it_is_accepted():
    # another build number of the same release is the same engine format
    check_engine_compatible(META, current={**META, "tensorrt": "10.3.0.26"})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"tensorrt": "10.7.0"}, "built with TensorRT 10.3.0.30, this machine has TensorRT 10.7.0"),
        ({"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}, "built for Orin"),
        ({"compute_capability": "8.6"}, "sm 8.7"),
        ({"jetpack": "6.2"}, "JetPack 6.1"),
    ],
)
def test_engine_for_another_gpu_or_tensorrt_must_be_rebuilt(change, match):
    with pytest.raises(EngineMismatchError, match=match) as err:
        check_engine_compatible(META, current={**META, **change})
    assert "rebuild the engine" in err.value.message


def test_tensorrt_release_is_checked_before_the_gpu():
    # no GPU is needed to see that the TensorRT release differs
    with pytest.raises(EngineMismatchError, match=r"TensorRT 11\.1\.0"):
        check_engine_compatible(META, trt_module=SimpleNamespace(__version__="11.1.0"))


def test_engine_metadata_without_target_fields_is_rejected():
    with pytest.raises(ArtifactError, match="lacks gpu, compute_capability"):
        check_engine_compatible({"tensorrt": "10.3.0"}, current=META)


def test_engine_metadata_records_target_profiles_and_build(dyn_onnx, tmp_path):
    cfg = EngineConfig(max_batch=4, timing_cache=tmp_path / "cache.bin")
    plan = plan_build(dyn_onnx, cfg)
    meta = tx.engine_metadata(
        cfg,
        plan,
        {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7", "jetpack": "6.1"},
        build_s=12.3456,
        strongly_typed=True,
        timing_cache_reused=False,
        onnx_name="model.onnx",
    )
    assert meta["precision"] == "fp32" and meta["strongly_typed"] is True
    assert meta["tensorrt"] == "10.3.0" and meta["jetpack"] == "6.1"
    assert meta["profiles"][0]["max"] == [4, 3, 8, 8]
    assert meta["build_seconds"] == 12.346
    assert meta["timing_cache"] == str(tmp_path / "cache.bin")
    check_engine_compatible(meta, current=META)  # what it records is what the check reads


# --------------------------------------------------- how tvc calls the TensorRT builder API


class Recorder:
    """Records every call made on it and on objects it returns."""

    def __init__(self, log: list, name: str, returns: dict | None = None) -> None:
        self._log, self._name, self._returns = log, name, returns or {}

    def __getattr__(self, attr):
        def call(*args, **kwargs):
            self._log.append((f"{self._name}.{attr}", args, kwargs))
            value = self._returns.get(attr)
            return value(*args, **kwargs) if callable(value) else value

        return call

    def __setattr__(self, attr, value):
        if attr.startswith("_"):
            object.__setattr__(self, attr, value)
        else:
            self._log.append((f"{self._name}.{attr}=", (value,), {}))


def fake_trt(version: str = "10.3.0", *, strongly_typed: bool = True, weak_flags: bool = True):
    """A stand-in for the `tensorrt` module: enums and a version, no builder."""
    flags = {"GPU_FALLBACK": "GPU_FALLBACK", "TF32": "TF32"}
    if weak_flags:
        flags |= {"FP16": "FP16", "INT8": "INT8"}
    creation = {"STRONGLY_TYPED": 1} if strongly_typed else {}
    return SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=SimpleNamespace(**creation),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        DeviceType=SimpleNamespace(DLA="DLA", GPU="GPU"),
        BuilderFlag=SimpleNamespace(**flags),
    )


@pytest.mark.parametrize(
    "trt, expected",
    [
        (fake_trt("10.3.0"), 1 << 1),
        (fake_trt("11.1.0", weak_flags=False), 0),  # always strongly typed; flag deprecated
        (fake_trt("10.0.1", strongly_typed=False), 0),
    ],
)
def test_network_is_created_strongly_typed_where_tensorrt_has_the_flag(trt, expected):
    assert tx.network_flags(trt) == expected


def test_builder_config_sets_workspace_profile_and_no_precision_flags(dyn_onnx):
    log: list = []
    config = Recorder(log, "config")
    profile = Recorder(log, "profile")
    builder = Recorder(
        log, "builder", {"create_builder_config": config, "create_optimization_profile": profile}
    )
    cfg = EngineConfig(min_batch=1, opt_batch=2, max_batch=8, workspace_mb=256)
    plan = plan_build(dyn_onnx, cfg)
    tx.configure_build(fake_trt("11.0.0", weak_flags=False), builder, None, plan, cfg)
    names = [c[0] for c in log]
    assert ("config.set_memory_pool_limit", ("WORKSPACE", 256 << 20), {}) in log
    assert ("profile.set_shape", ("input", (1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8)), {}) in log
    assert ("config.add_optimization_profile", (profile,), {}) in log
    assert "config.set_flag" not in names  # no FP16/INT8 flags: precision is in the graph
    assert "config.default_device_type=" not in names


def test_builder_config_for_dla_falls_back_to_gpu(dyn_onnx):
    log: list = []
    config = Recorder(log, "config")
    builder = Recorder(
        log,
        "builder",
        {"create_builder_config": config, "create_optimization_profile": Recorder(log, "p")},
    )
    builder.__dict__["num_DLA_cores"] = 2
    cfg = EngineConfig(dla_core=1)
    tx.configure_build(fake_trt(), builder, None, plan_build(dyn_onnx, cfg), cfg)
    assert ("config.default_device_type=", ("DLA",), {}) in log
    assert ("config.DLA_core=", (1,), {}) in log
    assert ("config.set_flag", ("GPU_FALLBACK",), {}) in log


def test_dla_on_a_gpu_without_dla_is_a_config_error(dyn_onnx):
    builder = Recorder([], "builder", {"create_builder_config": Recorder([], "c")})
    builder.__dict__["num_DLA_cores"] = 0
    cfg = EngineConfig(dla_core=0)
    with pytest.raises(ConfigError, match="this device has 0"):
        tx.configure_build(fake_trt(), builder, None, plan_build(dyn_onnx, cfg), cfg)


class FakeTimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob + b"+new timings"


class FakeConfig:
    def __init__(self, accept: bool = True) -> None:
        self.accept, self.created, self.cache = accept, [], None

    def create_timing_cache(self, blob: bytes) -> FakeTimingCache:
        self.created.append(bytes(blob))
        return FakeTimingCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.cache = cache
        return self.accept or cache.blob == b""

    def get_timing_cache(self) -> FakeTimingCache:
        return self.cache


def test_timing_cache_is_created_then_reused_across_builds(tmp_path):
    path = tmp_path / "caches" / "trt.cache"
    first = FakeConfig()
    assert tx.load_timing_cache(first, path) is False  # nothing to reuse yet
    assert first.created == [b""]
    tx.save_timing_cache(first, path)
    assert path.read_bytes() == b"+new timings"
    second = FakeConfig()
    assert tx.load_timing_cache(second, path) is True
    assert second.created == [b"+new timings"]
    assert not list(path.parent.glob(".*tmp*"))  # written atomically, no leftovers


def test_timing_cache_from_another_gpu_is_replaced(tmp_path):
    path = tmp_path / "trt.cache"
    path.write_bytes(b"other gpu")
    config = FakeConfig(accept=False)
    assert tx.load_timing_cache(config, path) is False
    assert config.created == [b"other gpu", b""] and config.cache.blob == b""


class FakeParser:
    num_errors = 1

    def __init__(self, network, logger) -> None:
        self.parsed = None

    def parse_from_file(self, path: str) -> bool:
        self.parsed = path
        return False

    def get_error(self, i: int) -> str:
        return "In node 3 (Foo): UNSUPPORTED_NODE: no importer for op Foo"


class OkParser(FakeParser):
    log: ClassVar[list] = []

    def parse_from_file(self, path: str) -> bool:
        self.log.append(("parser.parse_from_file", (path,), {}))
        return True


class FakeLogger:
    WARNING = "W"

    def __init__(self, level) -> None:
        self.level = level


def _builder_module(log: list, *, parse_ok: bool) -> SimpleNamespace:
    trt = fake_trt()
    config = Recorder(
        log, "config", {"create_timing_cache": lambda b: ("cache", b), "set_timing_cache": True}
    )
    builder = Recorder(
        log,
        "builder",
        {
            "create_network": "network",
            "create_builder_config": config,
            "create_optimization_profile": Recorder(log, "profile"),
            "build_serialized_network": None,  # the build fails: no engine is produced
        },
    )
    OkParser.log = log
    trt.Logger = FakeLogger
    trt.Builder = lambda logger: builder
    trt.OnnxParser = OkParser if parse_ok else FakeParser
    return trt


TARGET = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


def test_parse_errors_are_reported(dyn_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(tx, "current_target", lambda trt: TARGET)
    with pytest.raises(ExportError, match=r"cannot parse model\.onnx: In node 3"):
        tx.build_engine(
            dyn_onnx,
            tmp_path / "e.engine",
            EngineConfig(),
            trt_module=_builder_module([], parse_ok=False),
        )


def test_failed_build_raises_and_writes_no_engine(dyn_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(tx, "current_target", lambda trt: TARGET)
    log: list = []
    with pytest.raises(ExportError, match="failed to build an engine"):
        tx.build_engine(
            dyn_onnx,
            tmp_path / "e.engine",
            EngineConfig(),
            trt_module=_builder_module(log, parse_ok=True),
        )
    assert not (tmp_path / "e.engine").exists()
    assert ("builder.create_network", (2,), {}) in log  # STRONGLY_TYPED on TensorRT 10
    assert ("parser.parse_from_file", (str(dyn_onnx),), {}) in log
    assert ("config.create_timing_cache", (b"",), {}) in log
    assert [c for c in log if c[0] == "config.set_flag"] == []
