"""One headline per run: interval-aware, honest about noise and evaluation sets, and printed
identically by the report, `tvc report` and `tvc demo`."""

from __future__ import annotations

import html
from types import SimpleNamespace

from click.testing import CliRunner

from tvc.cli import cli
from tvc.records import write_records
from tvc.report.analysis import analyse
from tvc.report.headline import NO_DIFFERENCE, headline, run_headline
from tvc.report.render import render_html, render_markdown

from .conftest import CPU, record, timed


def test_headline_gives_the_interval_and_its_caveats(noisy_records):
    h = run_headline(noisy_records)
    assert (h.variant, h.baseline, h.verdict) == ("student-onnx int8-qdq", "teacher-onnx fp32",
                                                   "faster")  # fmt: skip
    assert h.text.startswith(
        "student-onnx int8-qdq vs teacher-onnx fp32 on AMD EPYC 7B13 x2 (ort CPU, 2 thr, batch 1):"
        " 3.00x faster (95% interval 2.90-3.26x; p50 1 ms vs 3 ms), 6.68x smaller, top-1 -1.75 "
        "pts (90.26% vs 92.01% on fashion-mnist test, n=10,000)"
    )
    assert h.caveats == [
        "the variant's timing (#5) is noisy: load average 4.5 on 2 CPU(s): other work competed"
    ]
    assert str(h) == h.text and h.text.endswith("other work competed")


def _pair(base_ci, var_ci, var_p50, **kw):
    return [
        timed(record("teacher fp32", CPU, 2.0, top1=90.0), *base_ci),
        timed(record("student fp32", CPU, var_p50, top1=89.0), *var_ci, **kw),
    ]


def test_headline_refuses_a_ratio_whose_intervals_overlap():
    recs = _pair((1.9, 2.1), (1.85, 1.95), 1.9)  # 1.05x on paper, but the intervals overlap
    h = run_headline(recs)
    assert h.verdict == NO_DIFFERENCE and "faster" not in h.text and "slower" not in h.text
    assert "no measurable difference in latency (intervals overlap: p50 1.9 ms vs 2 ms" in h.text
    assert "≈1x" in render_markdown(recs)
    # apart: a slow-down is claimed with its interval the same way round
    h = run_headline(_pair((1.9, 2.1), (3.8, 4.2), 4.0))
    assert h.verdict == "slower" and "2.00x slower (95% interval 1.81-2.21x;" in h.text


def test_headline_says_when_the_pair_was_not_timed_together():
    recs = _pair((1.9, 2.1), (0.95, 1.05), 1.0, run="run-2")
    text = run_headline(recs).text
    assert "caution: the two were timed in separate runs, not interleaved" in text
    assert "timed in 2 separate run(s)" in render_markdown(recs)


def test_variants_on_different_evaluation_sets_are_not_compared(records):
    a = records[:3]
    a[2] = a[2].model_copy(update={"accuracy": a[2].accuracy.model_copy(update={"n": 500})})
    h = headline(analyse(a), "student int8-qdq")
    assert "top-1 not compared: evaluated on different sets (fashion-mnist test, n=500 vs the " \
        "baseline's fashion-mnist test, n=10,000)" in h.text  # fmt: skip
    md = render_markdown(a)
    assert "top-1 was measured on different evaluation sets, so only variants on the same set " \
        "are compared: teacher fp32: fashion-mnist test, n=10,000; " in md  # fmt: skip
    assert "- top-1 of every variant" not in md
    assert (
        "- Top-1 % on different evaluation sets, compared only within one: #1: fashion-mnist "
        "test, n=10,000; #2: fashion-mnist test, n=10,000; #3: fashion-mnist test, n=500" in md
    )
    assert "- top-1 of every variant on fashion-mnist test, n=10,000" in render_markdown(records)


def test_report_cli_and_demo_print_one_headline(noisy_records, tmp_path, monkeypatch):
    text = run_headline(noisy_records).text
    assert f"**Headline:** {text}." in render_markdown(noisy_records)
    assert f"<strong>Headline:</strong> {html.escape(text)}." in render_html(noisy_records)

    write_records(noisy_records, tmp_path / "bench" / "records.json")
    res = CliRunner().invoke(
        cli, ["report", str(tmp_path / "bench" / "records.json"), "-o", str(tmp_path / "r.md")]
    )
    assert res.exit_code == 0, res.output
    assert f"headline: {text}\n" in res.output

    # the demo's last line: its recipe's records through the same function
    from tvc import demo
    from tvc.pipeline.runner import RECORDS_FILE

    write_records(noisy_records, tmp_path / "bench" / RECORDS_FILE)
    results = [
        SimpleNamespace(step=SimpleNamespace(kind="bench", options={}), output=tmp_path / "bench"),
        SimpleNamespace(step=SimpleNamespace(kind="report", options={}, formats=["html"]),
                        output=tmp_path / "report"),
    ]  # fmt: skip

    class FakeRunner:
        def __init__(self, recipe, out, echo, force=False):
            self.steps = [r.step for r in results]

        def run(self):
            return results

    monkeypatch.setattr(demo, "Runner", FakeRunner)
    monkeypatch.setattr(demo, "load_recipe", lambda name: name)
    lines = []
    demo.run_demo(tmp_path, echo=lines.append, progress=lambda s: None)
    assert lines[-1] == f"headline: {text}"
