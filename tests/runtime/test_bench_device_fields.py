"""Bench records carry GPU compute time and energy when the runner and the host provide them."""

from tvc.records import Latency
from tvc.runtime.bench import device_measurements
from tvc.runtime.ort import OrtRunner
from tvc.runtime.power import PowerSource


class ConstantPower(PowerSource):
    """A source reading a constant 10 W, as a board's sensor would, with no energy counter."""

    name = "constant"

    def __init__(self) -> None:
        self.rails = ["VDD_IN"]

    def read_w(self) -> float:
        return 10.0

    def energy_j(self) -> float | None:
        return None


class TimedOrtRunner(OrtRunner):
    """ORT runner with a gpu_time_ms like TrtRunner's, returning fixed CUDA-event timings."""

    def gpu_time_ms(self, batch: int) -> dict:
        stats = Latency.from_samples([0.001, 0.002, 0.003]).as_dict()
        return {"batch": batch, "gpu_compute_ms": stats, "end_to_end_ms": stats}


def test_energy_and_gpu_time_fill_the_record(pico_onnx):
    with TimedOrtRunner(pico_onnx.path / "model.onnx", threads=1) as runner:
        fields = device_measurements(runner, batch=2, n=200, power=ConstantPower())
    assert fields["gpu_compute_ms"].p50 == 2.0 and fields["gpu_compute_ms"].n == 3
    energy = fields["energy"]
    assert abs(energy.avg_power_w - 10.0) < 0.1
    # 200 calls of batch 2: 400 images; joules per image = 10 W * duration / 400
    assert 0 < energy.joules_per_inference < 10.0
    assert energy.source.startswith("constant")


def test_plain_cpu_host_adds_nothing(pico_onnx):
    with OrtRunner(pico_onnx.path / "model.onnx", threads=1) as runner:
        assert device_measurements(runner, batch=1, n=5, power=None) == {}
