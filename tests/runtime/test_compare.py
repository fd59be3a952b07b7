"""Speed-ups with intervals and the lines `tvc bench` prints about each measurement."""

import shutil

import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.records import BenchRecord, Conditions, Latency, ModelRef
from tvc.runtime.compare import speedup, summary_lines


def _lat(p50: float, lo: float | None, hi: float | None) -> Latency:
    return Latency(p50=p50, p90=p50 * 1.1, p99=p50 * 1.3, mean=p50, std=0.1, min=p50 * 0.9,
                   max=p50 * 2, n=100, ci_low=lo, ci_high=hi)  # fmt: skip


def _rec(variant: str, lat: Latency, batch: int = 1, noisy: bool = False) -> BenchRecord:
    cond = Conditions(cpu_count=2, noisy=noisy, reasons=["load average 5.0 on 2 CPU(s)"] * noisy)
    return BenchRecord(variant=variant, model=ModelRef(name="m"), precision="fp32",
                       backend="ort", provider="CPUExecutionProvider", threads=1, batch=batch,
                       latency_ms=lat, throughput_ips=1.0, board="box", environment={},
                       command="tvc bench", created="now", conditions=cond)  # fmt: skip


def test_speedup_interval_comes_from_the_medians_intervals():
    s = speedup(_lat(3.0, 2.9, 3.1), _lat(1.0, 0.95, 1.05))
    assert s.ratio == pytest.approx(3.0)
    assert s.low == pytest.approx(2.9 / 1.05) and s.high == pytest.approx(3.1 / 0.95)
    assert s.measurable and s.text().startswith("3.00x faster (95% interval 2.76-3.26x)")
    slower = speedup(_lat(1.0, 0.95, 1.05), _lat(2.0, 1.9, 2.1))
    assert slower.measurable and slower.text().startswith("2.00x slower (95% interval 1.81-2.21x)")


def test_overlapping_intervals_are_no_measurable_difference():
    s = speedup(_lat(1.0, 0.9, 1.2), _lat(0.95, 0.85, 1.1))
    assert not s.measurable
    assert s.text().startswith("no measurable difference: 1.05x")
    # records without an interval (older files) never get a claimed speed-up
    assert not speedup(_lat(2.0, None, None), _lat(1.0, None, None)).measurable


def test_summary_prints_each_p50_with_its_interval_and_the_ratios_per_batch():
    recs = [_rec("teacher fp32", _lat(3.0, 2.9, 3.1)),
            _rec("student int8", _lat(1.0, 0.95, 1.05), noisy=True),
            _rec("teacher fp32", _lat(20.0, 19.0, 21.0), batch=8),
            _rec("student int8", _lat(19.5, 18.0, 21.0), batch=8)]  # fmt: skip
    lines = summary_lines(recs)
    assert lines[0] == ("teacher fp32 (CPUExecutionProvider, 1 thread(s), batch 1): "
                        "p50 3 ms (95% CI 2.9-3.1), p90 3.3, p99 3.9 ms")  # fmt: skip
    assert lines[1].endswith("[noisy]")
    ratios = [ln for ln in lines if " vs " in ln]
    assert len(ratios) == 2  # one per batch, each against that batch's first variant
    assert "batch 1): 3.00x faster" in ratios[0]
    assert "batch 8): no measurable difference" in ratios[1]


def test_cli_bench_of_several_targets_prints_intervals_and_ratios(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["export", "vit_pico", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    shutil.copytree(tmp_path / "e", tmp_path / "e2")
    args = ["bench", str(tmp_path / "e"), str(tmp_path / "e2"), "--names", "a,b", "--threads",
            "1", "--min-runs", "5", "--min-time-s", "0", "--max-time-s", "0.2", "--warmup-s",
            "0", "--rounds", "6"]  # fmt: skip
    r = runner.invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "a fp32 (CPUExecutionProvider, 1 thread(s), batch 1): p50 " in r.output
    assert "95% CI" in r.output and "p99" in r.output
    assert "b fp32 vs a fp32 (CPUExecutionProvider, 1 thread(s), batch 1): " in r.output


def test_load_is_judged_against_the_machine_not_the_pinned_cpus():
    """The load average is machine-wide: pinning the benchmark to one CPU must not make a load
    of 1.5 on a 2-CPU machine look like an overload."""
    import os

    from tvc.runtime.noise import cpu_count, pin_cpus, unpin

    pinned, previous = pin_cpus(1)
    assert pinned is None or len(os.sched_getaffinity(0)) == 1
    try:
        assert cpu_count() == (os.cpu_count() or 1)
    finally:
        unpin(previous)
