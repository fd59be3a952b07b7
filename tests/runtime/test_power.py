"""Power sampling against fake Jetson sysfs trees, tegrastats lines and a stand-in NVML."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tvc.errors import ConfigError
from tvc.records import Energy
from tvc.runtime.power import (
    Ina3221Hwmon,
    Ina3221Iio,
    Nvml,
    PowerSampler,
    find_power_source,
    parse_tegrastats,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def hwmon_tree(root: Path, rails: dict[str, tuple[int, int]]) -> Path:
    """JetPack 5/6 layout: in<N>_label, in<N>_input (mV), curr<N>_input (mA)."""
    d = root / "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    for n, (label, (mv, ma)) in enumerate(rails.items(), start=1):
        write(d / f"in{n}_label", label)
        write(d / f"in{n}_input", str(mv))
        write(d / f"curr{n}_input", str(ma))
    write(d / "in7_label", "sum of shunt voltages")  # a channel with no current: skipped
    write(d / "in7_input", "1234")
    return d


def test_orin_nano_uses_its_input_rail(tmp_path):
    hwmon_tree(tmp_path, {"VDD_IN": (5000, 1200), "VDD_CPU_GPU_CV": (5000, 300)})
    src = find_power_source(tmp_path, use_tools=False)
    assert isinstance(src, Ina3221Hwmon) and src.rails == ["VDD_IN"]
    assert src.read_w() == pytest.approx(6.0)  # 5000 mV * 1200 mA


def test_agx_orin_without_input_rail_sums_its_rails(tmp_path):
    hwmon_tree(
        tmp_path,
        {"VDD_GPU_SOC": (5000, 800), "VDD_CPU_CV": (5000, 200), "VIN_SYS_5V0": (5000, 900)},
    )
    src = find_power_source(tmp_path, use_tools=False)
    assert src.rails == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]
    assert src.read_w() == pytest.approx(9.5)


def test_jetpack4_iio_layout(tmp_path):
    d = tmp_path / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for n, (rail, mw) in enumerate({"POM_5V_IN": 2500, "POM_5V_GPU": 100}.items()):
        write(d / f"rail_name_{n}", rail)
        write(d / f"in_power{n}_input", str(mw))
    src = find_power_source(tmp_path, use_tools=False)
    assert isinstance(src, Ina3221Iio) and src.rails == ["POM_5V_IN"]
    assert src.read_w() == pytest.approx(2.5)


def test_no_power_source_gives_no_energy(tmp_path):
    assert find_power_source(tmp_path, use_tools=False) is None
    with PowerSampler(None) as power:
        time.sleep(0.01)
    assert power.energy(10) is None and power.avg_power_w is None


def test_sampler_integrates_constant_power_into_energy_per_inference(tmp_path):
    hwmon_tree(tmp_path, {"VDD_IN": (5000, 1200)})
    with PowerSampler(sysfs=tmp_path, interval_s=0.01) as power:
        time.sleep(0.2)
    assert len(power.samples) >= 5
    assert power.avg_power_w == pytest.approx(6.0, rel=0.05)
    assert power.energy_j == pytest.approx(6.0 * power.duration_s, rel=0.05)
    energy = power.energy(100)
    Energy(**energy)  # fits the bench record's schema
    assert energy["source"] == "ina3221 sysfs (VDD_IN)"
    assert energy["joules_per_inference"] == pytest.approx(power.energy_j / 100)


def test_sampler_follows_changing_power(tmp_path):
    d = hwmon_tree(tmp_path, {"VDD_IN": (5000, 400)})  # 2 W
    source = find_power_source(tmp_path, use_tools=False)
    with PowerSampler(source, interval_s=0.005) as power:
        time.sleep(0.15)
        write(d / "curr1_input", "1600")  # 8 W
        time.sleep(0.15)
    assert power.avg_power_w == pytest.approx(5.0, rel=0.2)
    assert min(w for _, w in power.samples) == pytest.approx(2.0)
    assert max(w for _, w in power.samples) == pytest.approx(8.0)


def test_sampler_rejects_a_bad_interval():
    with pytest.raises(ConfigError, match="interval"):
        PowerSampler(None, interval_s=0)


def test_tegrastats_lines_of_orin_and_nano():
    orin = (
        "RAM 2210/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,0%@729] "
        "EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] cpu@47.5C VDD_IN 4939mW/4939mW "
        "VDD_CPU_GPU_CV 515mW/515mW VDD_SOC 1431mW/1431mW"
    )
    assert parse_tegrastats(orin) == {"VDD_IN": 4.939, "VDD_CPU_GPU_CV": 0.515, "VDD_SOC": 1.431}
    nano = (
        "RAM 1700/3964MB (lfb 100x4MB) SWAP 0/1982MB (cached 0MB) CPU [2%@102] "
        "EMC_FREQ 0% GR3D_FREQ 0% PLL@25C PMIC@100C POM_5V_IN 2166/2166 POM_5V_GPU 41/41"
    )
    assert parse_tegrastats(nano) == {"POM_5V_IN": 2.166, "POM_5V_GPU": 0.041}


class FakeNvml:
    """nvidia-ml-py's calls; the energy counter advances 300 W of wall time."""

    class NVMLError(Exception):
        pass

    def __init__(self, counter: bool = True) -> None:
        self.counter, self.t0, self.shut = counter, time.perf_counter(), False

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetHandleByIndex(self, i):
        return SimpleNamespace(index=i)

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPowerUsage(self, h):
        return 250_000  # mW: a reading that lags, unlike the counter

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.counter:
            raise self.NVMLError("not supported")
        return int((time.perf_counter() - self.t0) * 300_000)  # mJ


def test_nvml_energy_counter_is_preferred_over_power_readings():
    nv = FakeNvml()
    src = find_power_source(Path("/nonexistent"), pynvml=nv, use_tools=False)
    assert isinstance(src, Nvml) and src.rails == ["NVIDIA H100 80GB HBM3"]
    with PowerSampler(src, interval_s=0.01) as power:
        time.sleep(0.2)
    assert power.avg_power_w == pytest.approx(300, rel=0.1)  # from the counter, not 250 W
    src.close()
    assert nv.shut


def test_nvml_without_counter_integrates_power_readings():
    src = Nvml(FakeNvml(counter=False))
    with PowerSampler(src, interval_s=0.01) as power:
        time.sleep(0.1)
    assert power.avg_power_w == pytest.approx(250, rel=0.05)
    assert power.energy(4)["source"] == "nvml (NVIDIA H100 80GB HBM3)"


def test_sampling_runs_in_a_background_thread(tmp_path):
    hwmon_tree(tmp_path, {"VDD_IN": (5000, 1000)})
    before = threading.active_count()
    with PowerSampler(sysfs=tmp_path, interval_s=0.01):
        assert threading.active_count() == before + 1
    assert threading.active_count() == before
