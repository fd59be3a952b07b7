import numpy as np
import pytest

from tvc.errors import ConfigError, ExportError
from tvc.records import Latency
from tvc.runtime.bench import time_calls
from tvc.runtime.ort import OrtRunner


def test_runner_validates_names_dtypes_and_shapes(pico_onnx):
    with OrtRunner(pico_onnx.path / "model.onnx", threads=1) as r:
        assert [s.name for s in r.inputs] == ["input"]
        with pytest.raises(ConfigError, match="dtype float64"):
            r.infer(np.zeros((1, 3, 32, 32)))
        with pytest.raises(ConfigError, match="expects input"):
            r.infer(np.zeros((1, 3, 32), np.float32))
        with pytest.raises(ConfigError, match="dimension 2 is fixed to 32"):
            r.infer(np.zeros((1, 3, 16, 32), np.float32))
        with pytest.raises(ConfigError, match="missing"):
            r.infer({"pixels": np.zeros((1, 3, 32, 32), np.float32)})
        out = r.infer(r.sample_feeds(2))
        assert out["logits"].shape == (2, 10)


def test_corrupt_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match="cannot load"):
        OrtRunner(bad)


def test_latency_stats_percentiles():
    s = Latency.from_samples([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s.n == 100
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.min == pytest.approx(1.0) and s.max == pytest.approx(100.0)
    assert s.mean == pytest.approx(50.5)


def test_time_calls_honours_min_runs():
    calls = []
    stats = time_calls(lambda: calls.append(1), warmup_s=0, min_runs=25, min_time_s=0)
    assert stats.n == 25
    assert len(calls) == 25 + 3  # three warm-up calls at least
