"""`tvc report` without -o writes beside its inputs, and never replaces a report unasked."""

from click.testing import CliRunner

from tvc.cli import cli
from tvc.records import BenchRecord, Latency, ModelRef, write_records


def _records(path):
    lat = Latency(p50=1.0, p90=1.1, p99=1.2, mean=1.0, std=0.1, min=0.9, max=2.0, n=10)
    recs = [BenchRecord(variant=f"{name} fp32", model=ModelRef(name="m"), precision="fp32",
                        backend="ort", provider="CPUExecutionProvider", batch=1, latency_ms=lat,
                        throughput_ips=1e3, board="box", environment={}, command="tvc bench",
                        created="now") for name in ("teacher", "student")]  # fmt: skip
    write_records(recs, path)


def test_report_defaults_to_beside_its_first_input_and_refuses_to_replace(tmp_path):
    (tmp_path / "bench").mkdir()
    _records(tmp_path / "bench/records.json")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "bench/records.json")])
    assert res.exit_code == 0, res.output
    page = tmp_path / "bench/report/report.html"
    assert f"wrote {page}" in res.output and page.read_text().startswith("<!")
    page.write_text("mine")
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "bench/records.json")])
    assert res.exit_code == 2
    assert f"error: {page} already exists; pass --force" in res.output
    assert page.read_text() == "mine"  # untouched
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "bench/records.json"), "--force"])
    assert res.exit_code == 0, res.output
    assert page.read_text() != "mine"


def test_report_refuses_an_unwritable_output_before_reading_anything(tmp_path):
    _records(tmp_path / "records.json")
    res = CliRunner().invoke(
        cli, ["report", str(tmp_path / "records.json"), "-o", "/proc/x/r.html"]
    )
    assert res.exit_code == 7 and "cannot write -o /proc/x/r.html" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
