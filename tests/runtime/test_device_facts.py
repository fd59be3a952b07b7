"""Board facts: Jetson release/power mode/clocks from a fake filesystem, GPU facts from NVML."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tvc.runtime import device
from tvc.runtime.device import clocks_locked, jetson_facts, parse_nvpmodel


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def orin_nano(root: Path, *, gpu_min: int = 1020000000) -> Path:
    write(
        root / "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n",
    )
    write(root / "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    write(gpu / "min_freq", f"{gpu_min}\n")
    write(gpu / "max_freq", "1020000000\n")
    for cpu in ("cpu0", "cpu1"):
        write(root / f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_min_freq", "1728000\n")
        write(root / f"sys/devices/system/cpu/{cpu}/cpufreq/scaling_max_freq", "1728000\n")
    write(root / "sys/class/devfreq/3d00000.pcie/min_freq", "1")  # not the GPU: ignored
    write(root / "sys/class/devfreq/3d00000.pcie/max_freq", "2")
    return root


def test_jetson_release_board_and_locked_clocks(tmp_path):
    facts = jetson_facts(orin_nano(tmp_path))
    assert facts == {
        "l4t": "36.4.3",
        "jetpack": "6.2",
        "clocks_locked": True,
        "board": "NVIDIA Jetson Orin Nano Developer Kit",
    }


def test_clocks_not_locked_when_the_gpu_scales(tmp_path):
    orin_nano(tmp_path, gpu_min=306000000)
    assert clocks_locked(tmp_path) is False
    assert jetson_facts(tmp_path)["clocks_locked"] is False


def test_unknown_l4t_release_leaves_jetpack_out(tmp_path):
    write(tmp_path / "etc/nv_tegra_release", "# R39 (release), REVISION: 1.0, GCID: 1\n")
    facts = jetson_facts(tmp_path)
    assert facts["l4t"] == "39.1.0" and "jetpack" not in facts and "clocks_locked" not in facts


def test_not_a_jetson(tmp_path):
    assert jetson_facts(tmp_path) is None
    assert clocks_locked(tmp_path) is None


def test_nvpmodel_output():
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == {
        "power_mode": "MAXN_SUPER",
        "power_mode_id": 2,
    }
    assert parse_nvpmodel("NVPM WARN: no such file") == {}


class FakePynvml:
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return b"580.159.04"

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return 9, 0

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=81559 << 20)

    def nvmlDeviceGetClockInfo(self, h, clock):
        return {1: 345, 2: 2619}[clock]

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        return 1980

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 700_000

    def nvmlDeviceGetApplicationsClock(self, h, clock):
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetPersistenceMode(self, h):
        return 1

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 31


def test_gpu_facts_from_nvml():
    (gpu,) = device._nvml_gpus(FakePynvml())
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["compute_capability"] == "9.0"
    assert gpu["driver"] == "580.159.04" and gpu["memory_mib"] == "81559"
    assert gpu["sm_clock_mhz"] == "345" and gpu["max_sm_clock_mhz"] == "1980"
    assert gpu["power_limit_w"] == "700" and gpu["persistence_mode"] == "on"
    assert gpu["source"] == "nvml" and "app_sm_clock_mhz" not in gpu  # not supported: left out


def test_nvml_without_a_driver_gives_nothing():
    assert device._nvml_gpus(FakePynvml(fail_init=True)) == []


ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 sha_ni
"""
ZEN4 = ZEN1.replace("23", "25").replace("avx2 sha_ni", "avx2 avx512f avx512_vnni")
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd aes asimddp i8mm sve\nCPU part\t: 0xd40\n"


def test_cpu_generation_and_simd_tell_apart_cpus_with_one_name():
    """Both say "AMD EPYC": the generation and the vector extensions are what differ (Zen 1 ran
    deit_small 6x slower than Zen 4), so a board's label must carry them."""
    from tvc.environment import cpu_generation, cpu_label, cpu_simd

    zen1 = {"cpu": "AMD EPYC", "cpu_generation": cpu_generation(ZEN1), "cpu_simd": cpu_simd(ZEN1)}
    zen4 = {"cpu": "AMD EPYC", "cpu_generation": cpu_generation(ZEN4), "cpu_simd": cpu_simd(ZEN4)}
    assert zen1["cpu_simd"] == ["avx2", "fma"]  # sha_ni is not a GEMM extension: left out
    assert zen4["cpu_simd"] == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_label(zen1) == "AMD EPYC (family 23 model 1; avx2/fma)"
    assert device.board_name({**zen4, "cpu_count": 2}) == (
        "AMD EPYC (family 25 model 1; avx2/fma/avx512f/avx512_vnni) x2"
    )
    assert cpu_simd(GRAVITON) == ["asimd", "asimddp", "i8mm", "sve"]
    assert cpu_generation(GRAVITON) is None
    # a record written before these were recorded keeps its old label
    assert device.board_name({"cpu": "AMD EPYC", "cpu_count": 2}) == "AMD EPYC x2"
