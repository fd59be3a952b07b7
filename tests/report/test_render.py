"""Reports from fixed records: comparisons, tables, plots, provenance, and the `tvc report` CLI."""

from __future__ import annotations

import re
import sys

import pytest
from click.testing import CliRunner

from tvc.cli import cli
from tvc.errors import ConfigError
from tvc.records import write_records
from tvc.report.plots import make_plots, pareto_front
from tvc.report.render import analyse, headline, render_html, render_markdown, write_report

CPU = "AMD EPYC 7B13 x2"
NANO = "NVIDIA Jetson Orin Nano Developer Kit"


def _row(analysis, variant, board, batch=1):
    return next(
        r
        for r in analysis.rows
        if (r.rec.variant, r.rec.board, r.rec.batch) == (variant, board, batch)
    )


def test_comparisons_use_the_baseline_on_the_same_board_and_batch(records):
    a = analyse(records)
    assert a.baseline == "teacher fp32"  # the first fp32 variant
    assert a.boards == [CPU, NANO, "NVIDIA Jetson AGX Orin Developer Kit"]
    int8 = _row(a, "student int8-qdq", CPU)
    assert int8.speedup == pytest.approx(4.0)  # 4.0 ms / 1.0 ms
    assert int8.size_ratio == pytest.approx(7.2)
    assert int8.d_quality == pytest.approx(-1.5)
    assert _row(a, "student int8-qdq", CPU, batch=8).speedup == pytest.approx(4.0)  # 24 / 6
    nano = _row(a, "student int8-qdq", NANO)
    assert nano.speedup == pytest.approx(4.0)  # 2.0 / 0.5 on the Nano, not against the CPU
    assert nano.size_ratio == pytest.approx(7.3 / 1.1)
    assert nano.d_quality == pytest.approx(-1.6)
    # no baseline at batch 8 on the Orins: no speed-up rather than a wrong one
    assert _row(a, "student fp32", CPU).speedup == pytest.approx(2.0)
    assert headline(a).startswith("student int8-qdq vs teacher fp32 on AMD EPYC 7B13 x2")
    assert "4.00x faster" in headline(a) and "7.20x smaller" in headline(a)
    assert "top-1 -1.50 pts (88.50% vs 90.00% on fashion-mnist test, n=10,000)" in headline(a)
    assert "no interval recorded" in headline(a)  # old records: a point estimate, said so
    assert "student fp32 vs teacher fp32" in headline(a, "student fp32")
    assert "2.00x faster" in headline(a, "student fp32")


def test_baseline_can_be_chosen_and_unknown_ones_are_named(records):
    a = analyse(records, "student fp32")
    assert _row(a, "student int8-qdq", CPU).speedup == pytest.approx(2.0)
    assert _row(a, "teacher fp32", CPU).speedup == pytest.approx(0.5)
    assert "2.00x slower" in headline(analyse(records[:2], "student fp32"))
    with pytest.raises(ConfigError, match="did you mean 'student fp32'"):
        analyse(records, "studnet fp32")


def test_markdown_has_board_tables_cross_board_table_and_commands(records):
    for r in records:  # compress counts MACs of what it makes; the teacher was not compressed
        r.model.macs = 60_000_000 if "student" in r.variant else None
    md = render_markdown(records)
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert sections[:3] == [CPU, NANO, "NVIDIA Jetson AGX Orin Developer Kit"]
    assert "All boards: p50 latency at batch 1" in sections
    # rows in lineage order, numbered as they appear: teacher, student fp32, student int8
    timing = _md_table(md, CPU)
    assert [(r["#"], r["Variant"], r["Batch"]) for r in timing] == [
        ("1", "teacher fp32 (baseline)", "1"),
        ("2", "teacher fp32 (baseline)", "8"),
        ("3", "student fp32", "1"),
        ("4", "student int8-qdq", "1"),
        ("5", "student int8-qdq", "8"),
    ]
    assert timing[3]["Backend"] == "ort CPU, 2 thr" and timing[3]["Speed-up"] == "4.00x"
    model = _md_table(md, CPU, "Model, quality and resources")
    assert (model[3]["Smaller"], model[3]["Top-1 %"], model[3]["Δ top-1"]) == (
        "7.20x",
        "88.50",
        "-1.50",
    )
    # every cell is filled or says why not: batch 8 ran without --data, the teacher has no MACs
    assert model[4]["Top-1 %"] == "–" and "- – in Top-1 %: benched without --data" in md
    assert model[0]["MACs"] == "–" and "only compressed artifacts record MACs" in md
    # the evaluation set beside the quality figures, under the table that shows them
    assert "- Top-1 % on fashion-mnist test, n=10,000\n" in md.split(f"## {NANO}")[0]
    # energy columns appear for the board that measured power, not for the others
    nano_table = md.split(f"## {NANO}")[1].split("\n## ")[0]
    assert "mJ/img" in nano_table and "| 4.00 |" in nano_table
    assert "mJ/img" not in md.split(f"## {CPU}")[1].split("\n## ")[0]
    # cross-board row: the int8 student on the CPU, the Nano and the AGX
    cross = md.split("## All boards")[1]
    assert re.search(
        r"\| student int8-qdq \| 1 ms \(ort, 4\.00x\) \[#4\] \| 0\.5 ms \(trt, "
        r"4\.00x\) \[#7\] \| 0\.25 ms \(trt, 3\.20x\) \[#9\]",
        cross,
    )
    # provenance: the command and versions of every number
    assert "tvc bench runs/student-onnx --batch 8" in md
    assert "tensorrt 10.3.0" in md and "power_mode 15W" in md


def test_html_is_self_contained_with_three_inline_plots(records):
    page = render_html(records, title="Orin & CPU <comparison>")
    assert "<title>Orin &amp; CPU &lt;comparison&gt;</title>" in page
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)  # nothing fetched
    assert "<script" not in page
    svgs = re.findall(r"<svg .*?</svg>", page, re.S)
    assert len(svgs) == 3 and "data:image" not in page  # plots inline as SVG, text as text
    for svg in svgs:
        assert re.search(r'viewBox="0 0 [\d.]+ [\d.]+"', svg) and "<text" in svg
    ids = re.findall(r'id="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # three SVGs in one page: no id defined twice
    assert 'id="rec-9"' in page and '<a href="#rec-3">3</a>' in page
    assert '<td class="num" title="baseline #1 p50 / this p50">4.00x</td>' in page
    assert "Headline:" in page


def test_plots_follow_the_data(records):
    plots, notes = make_plots(analyse(records))
    assert [p.name for p in plots] == [
        "latency_vs_accuracy",
        "size_per_variant",
        "latency_per_board",
    ]
    assert notes == []
    no_acc = [r.model_copy(update={"accuracy": None}) for r in records]
    plots, notes = make_plots(analyse(no_acc))
    assert [p.name for p in plots] == ["size_per_variant", "latency_per_board"]
    assert notes and "no record has accuracy" in notes[0]


def test_plots_are_left_out_with_a_note_without_matplotlib(records, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    page = render_html(records)
    assert "<svg" not in page
    assert "pip install &#x27;tvc[report]&#x27;" in page
    assert "| 4.00x |" in render_markdown(records, notes=make_plots(analyse(records))[1])


def test_pareto_front_keeps_only_undominated_points():
    pts = [(4.0, 90.0), (2.0, 89.0), (1.0, 88.5), (3.0, 85.0), (2.0, 80.0)]
    assert pareto_front(pts) == [2, 1, 0]


def test_markdown_report_writes_its_plots_beside_it(records, tmp_path):
    out = write_report(records, tmp_path / "r.md")
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [
        "r_plots/latency_vs_accuracy.png",
        "r_plots/size_per_variant.png",
        "r_plots/latency_per_board.png",
    ]
    assert all((tmp_path / link).read_bytes()[:4] == b"\x89PNG" for link in links)
    with pytest.raises(ConfigError, match=r"report\.html"):
        write_report(records, tmp_path / "r.pdf")


def test_report_cli_merges_files_from_several_boards(records, tmp_path):
    write_records(records[:5], tmp_path / "cpu.json")
    write_records(records[5:], tmp_path / "orin.json")
    res = CliRunner().invoke(
        cli,
        [
            "report",
            str(tmp_path / "cpu.json"),
            str(tmp_path / "orin.json"),
            "-o",
            str(tmp_path / "r.html"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "9 records, 3 board(s), baseline teacher fp32" in res.output
    assert "headline: student int8-qdq vs teacher fp32" in res.output
    page = (tmp_path / "r.html").read_text()
    assert NANO in page and CPU in page

    res = CliRunner().invoke(
        cli,
        [
            "report",
            str(tmp_path / "cpu.json"),
            "-o",
            str(tmp_path / "x.html"),
            "--baseline",
            "nope",
        ],
    )
    assert res.exit_code == 2 and "error: --baseline 'nope' is not a variant" in res.output
    (tmp_path / "bad.json").write_text('{"schema": "tvc.bench/1", "variant": 3}')
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "bad.json"), "-o", "x.html"])
    assert res.exit_code == 2 and "bad.json record 0: field" in res.output
    assert not (tmp_path / "x.html").exists()


def _md_table(md: str, board: str, table: str = "Timing") -> list[dict[str, str]]:
    section = md.split(f"## {board}\n")[1].split("\n## ")[0]
    section = section.split(f"### {table}\n")[1].split("\n### ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    return [dict(zip(header, row, strict=True)) for row in cells]


def test_detection_records_are_compared_in_map_points(detections, monkeypatch):
    a = analyse(detections)
    assert _row(a, "detr-student int8-qdq", CPU).d_quality == pytest.approx(-2.75)
    head = headline(a)
    assert head.startswith("detr-student int8-qdq vs detr fp32")
    assert "2.00x faster" in head and "4.00x smaller" in head
    assert "mAP -2.75 pts (27.25 vs 30.00 on fashion-mnist-det test, n=200)" in head
    assert "top-1" not in head

    md = render_markdown(detections)
    rows = _md_table(md, CPU, "Model, quality and resources")
    assert "Top-1 %" not in rows[0] and "Δ top-1" not in rows[0]
    assert [(r["mAP"], r["AP50"], r["Δ mAP"]) for r in rows] == [
        ("30.00", "50.00", "+0.00"),
        ("28.50", "48.50", "-1.50"),
        ("27.25", "47.25", "-2.75"),
    ]
    assert "Δ mAP in points" in md and "mAP -2.75 pts" in md
    assert '<td class="num">-2.75</td>' in render_html(detections)

    from matplotlib.axes import Axes

    labels = []
    monkeypatch.setattr(Axes, "set_ylabel", lambda self, text, **kw: labels.append(text))
    plots, notes = make_plots(a)
    assert plots[0].name == "latency_vs_accuracy" and notes == []
    assert labels == ["COCO mAP"]


def test_mixed_classification_and_detection_records_each_show_their_metric(records, detections):
    nano = [r.model_copy(update={"board": NANO}) for r in detections]
    mixed = records[:3] + nano
    md = render_markdown(mixed)
    quality = "Model, quality and resources"
    cpu_rows, nano_rows = _md_table(md, CPU, quality), _md_table(md, NANO, quality)
    assert cpu_rows[2]["Top-1 %"] == "88.50" and "mAP" not in cpu_rows[0]
    assert nano_rows[2]["mAP"] == "27.25" and "Top-1 %" not in nano_rows[0]
    # the baseline is a classifier: there is no mAP to compare the detectors with
    assert "Δ mAP" not in nano_rows[0]
    assert "Δ top-1; Δ mAP in points" in md
    plots, notes = make_plots(analyse(mixed))
    assert plots[0].name == "latency_vs_accuracy"
    assert notes == [
        "Latency vs accuracy shows top-1 only: 3 record(s) with another metric are in the tables."
    ]
    assert "Headline:" in render_html(mixed)


def test_lane_and_pixel_records_show_their_own_columns(records):
    from tvc.records import Generation, Lanes, Pixels

    lanes = [
        r.model_copy(update={"accuracy": None,
                             "lanes": Lanes(dataset="lanes-synth", n=200, accuracy=a, f1=f)})
        for r, a, f in zip(records[:2], (93.5, 91.25), (80.0, 75.5), strict=True)
    ]  # fmt: skip
    rows = _md_table(render_markdown(lanes), CPU, "Model, quality and resources")
    assert [(r["TuSimple %"], r["F1 %"], r["Δ TuSimple"]) for r in rows] == [
        ("93.50", "80.00", "+0.00"),
        ("91.25", "75.50", "-2.25"),
    ]
    gen = Generation(decoder="decoder.onnx", tokens=196, tokens_per_s=4900.0, ms_per_image=40.0,
                     no_cache_tokens_per_s=490.0, speedup=10.0, same_tokens=True)  # fmt: skip
    px = Pixels(dataset="fashion-mnist", n=100, bpd=1.254, probe_accuracy=76.5)
    pixels = [records[0].model_copy(update={"accuracy": None, "pixels": px, "generation": gen})]
    row = _md_table(render_markdown(pixels), CPU, "Model, quality and resources")[0]
    assert (row["Bits/dim"], row["Probe %"], row["Gen tok/s"], row["ms/image"]) == (
        "1.254", "76.50", "4,900", "40.0"
    )  # fmt: skip
    assert "Top-1 %" not in row and "Fine-tuned %" not in row
