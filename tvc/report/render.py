"""Reports from bench records: Markdown, or one self-contained HTML page (plots inline).

Records from any number of machines merge into one comparison: tables are grouped by board, each
row is one variant on one backend at one batch size, and every row is compared with a baseline
variant measured on the same board at the same batch (speed-up in p50 latency, size, and the
change in quality: top-1 of classifiers, COCO mAP of detectors, each only against the same metric
on the same data). Every number links to the command and the package versions that produced it.
No torch.
"""

from __future__ import annotations

import base64
import difflib
import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tvc import __version__
from tvc.errors import ConfigError
from tvc.records import BenchRecord
from tvc.report.fmt import fmt_count, fmt_ms, times

# ----------------------------------------------------------------------------------- analysis


@dataclass
class Row:
    """One record with its comparison against the baseline."""

    n: int  # 1-based number of the record; its provenance entry is #rec-<n>
    rec: BenchRecord
    speedup: float | None  # baseline p50 / this p50, same board and batch
    size_ratio: float | None  # baseline size / this size
    d_quality: float | None  # change of the record's quality metric (top-1 or mAP), in points
    is_baseline: bool


@dataclass
class Analysis:
    records: list[BenchRecord]
    baseline: str
    boards: list[str]
    variants: list[str]
    rows: list[Row]

    def rows_for(self, board: str) -> list[Row]:
        rows = [r for r in self.rows if r.rec.board == board]
        return sorted(
            rows,
            key=lambda r: (self.variants.index(r.rec.variant), backend_label(r.rec), r.rec.batch),
        )


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def choose_baseline(records: list[BenchRecord], baseline: str | None) -> str:
    """The baseline variant: the one named, else the first FP32 variant, else the first."""
    variants = _unique(r.variant for r in records)
    if baseline is None:
        return next((r.variant for r in records if r.precision == "fp32"), variants[0])
    if baseline in variants:
        return baseline
    close = difflib.get_close_matches(baseline, variants, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"--baseline '{baseline}' is not a variant in these records",
        f"{hint}variants: {', '.join(variants)}",
    )


def _baseline_for(rec: BenchRecord, pool: list[BenchRecord]) -> BenchRecord | None:
    """The baseline record to compare `rec` with: same board and batch, same backend if any."""
    same = [b for b in pool if b.board == rec.board and b.batch == rec.batch]
    for match in (
        lambda b: b.backend == rec.backend and b.provider == rec.provider,
        lambda b: b.backend == rec.backend,
        lambda b: True,
    ):
        found = [b for b in same if match(b)]
        if found:
            return found[0]
    return None


def _quality_change(rec: BenchRecord, pool: list[BenchRecord]) -> float | None:
    """`rec`'s quality minus the baseline's, in points: the same metric on the same data, from
    the same board where there is one."""
    q = rec.quality
    if q is None:
        return None
    same = [b for b in pool if b.quality and (b.quality.name, b.quality.data) == (q.name, q.data)]
    base = next((b for b in same if b.board == rec.board), same[0] if same else None)
    return q.value - base.quality.value if base else None


def analyse(records: list[BenchRecord], baseline: str | None = None) -> Analysis:
    if not records:
        raise ConfigError("no bench records to report", "pass files written by 'tvc bench --json'")
    base = choose_baseline(records, baseline)
    pool = [r for r in records if r.variant == base]
    rows = []
    for n, rec in enumerate(records, 1):
        b = _baseline_for(rec, pool)
        # an engine's size depends on the board: prefer the baseline's size on the same board
        sizes = [x.size_bytes for x in pool if x.size_bytes and x.board == rec.board]
        sizes = sizes or [x.size_bytes for x in pool if x.size_bytes]
        rows.append(
            Row(
                n=n,
                rec=rec,
                speedup=b.latency_ms.p50 / rec.latency_ms.p50 if b else None,
                size_ratio=sizes[0] / rec.size_bytes if sizes and rec.size_bytes else None,
                d_quality=_quality_change(rec, pool),
                is_baseline=rec.variant == base,
            )
        )
    return Analysis(
        records=records,
        baseline=base,
        boards=_unique(r.board for r in records),
        variants=_unique(r.variant for r in records),
        rows=rows,
    )


def headline(analysis: Analysis, variant: str | None = None) -> str | None:
    """One sentence: `variant` (default: the fastest) against the baseline, on the baseline's
    first board at its smallest batch and on the baseline's backend."""
    first = next(r for r in analysis.rows if r.is_baseline)
    board = first.rec.board
    batch = min(r.rec.batch for r in analysis.rows if r.is_baseline and r.rec.board == board)
    rows = [
        r
        for r in analysis.rows
        if r.rec.board == board
        and r.rec.batch == batch
        and not r.is_baseline
        and r.speedup
        and r.rec.backend == first.rec.backend
        and variant in (None, r.rec.variant)
    ]
    if not rows:
        return None
    best = max(rows, key=lambda r: r.speedup or 0)
    base = _baseline_for(best.rec, [r.rec for r in analysis.rows if r.is_baseline])
    parts = [
        f"{best.rec.variant} vs {analysis.baseline} on {board} "
        f"({backend_label(best.rec)}, batch {batch}): {times(best.speedup, 'faster', 'slower')} "
        f"(p50 {fmt_ms(best.rec.latency_ms.p50)} ms vs {fmt_ms(base.latency_ms.p50)} ms)"
    ]
    if best.size_ratio:
        parts.append(times(best.size_ratio, "smaller", "larger"))
    if best.d_quality is not None:
        q = best.rec.quality
        parts.append(f"{q.name} {best.d_quality:+.2f} pts ({q.text()})")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- formatting


def backend_label(rec: BenchRecord) -> str:
    """'ort CPU, 2 threads' / 'trt' / 'torch, 4 threads'."""
    label = rec.backend
    provider = rec.provider.replace("ExecutionProvider", "")
    if rec.backend == "ort" and provider:
        label += f" {provider}"
    if rec.threads:
        label += f", {rec.threads} thr"
    return label


def _ips(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _metric(name: str) -> Callable[[Row], str]:
    """Cells of one quality metric ("top-1" or "mAP"): empty where a row has another or none."""

    def cell(row: Row) -> str:
        q = row.rec.quality
        return f"{q.value:.2f}" if q and q.name == name else ""

    return cell


def _metric_change(name: str) -> Callable[[Row], str]:
    def cell(row: Row) -> str:
        q = row.rec.quality
        ok = q and q.name == name and row.d_quality is not None
        return f"{row.d_quality:+.2f}" if ok else ""

    return cell


def _agreement(rec: BenchRecord) -> str:
    agree = rec.accuracy.agreement if rec.accuracy else None
    return "" if agree is None else f"{agree:.1f}"


def _millijoules(rec: BenchRecord) -> str:
    return f"{rec.energy.joules_per_inference * 1e3:.2f}" if rec.energy else ""


@dataclass
class Column:
    title: str
    cell: Callable[[Row], str]
    numeric: bool = True


COLUMNS = [
    Column("#", lambda r: str(r.n)),
    Column("Variant", lambda r: r.rec.variant + (" (baseline)" if r.is_baseline else ""), False),
    Column("Precision", lambda r: r.rec.precision, False),
    Column("Backend", lambda r: backend_label(r.rec), False),
    Column("Batch", lambda r: str(r.rec.batch)),
    Column("p50 ms", lambda r: fmt_ms(r.rec.latency_ms.p50)),
    Column("p90 ms", lambda r: fmt_ms(r.rec.latency_ms.p90)),
    Column("p99 ms", lambda r: fmt_ms(r.rec.latency_ms.p99)),
    Column("img/s", lambda r: _ips(r.rec.throughput_ips)),
    Column("Speed-up", lambda r: f"{r.speedup:.2f}x" if r.speedup else ""),
    Column("Size MB", lambda r: f"{r.rec.size_bytes / 1e6:.2f}" if r.rec.size_bytes else ""),
    Column("Smaller", lambda r: f"{r.size_ratio:.2f}x" if r.size_ratio else ""),
    Column("Params", lambda r: fmt_count(r.rec.model.params)),
    Column("MACs", lambda r: fmt_count(r.rec.model.macs)),
    Column("Top-1 %", _metric("top-1")),
    Column("Δ top-1", _metric_change("top-1")),
    Column("Agree %", lambda r: _agreement(r.rec)),
    Column("mAP", _metric("mAP")),
    Column("AP50", lambda r: f"{r.rec.detection.ap50:.2f}" if r.rec.detection else ""),
    Column("Δ mAP", _metric_change("mAP")),
    Column("Peak RSS MB", lambda r: f"{r.rec.peak_rss_mb:.0f}" if r.rec.peak_rss_mb else ""),
    Column("Power W", lambda r: f"{r.rec.energy.avg_power_w:.2f}" if r.rec.energy else ""),
    Column("mJ/img", lambda r: _millijoules(r.rec)),
]


def table(rows: list[Row]) -> tuple[list[Column], list[list[str]]]:
    """The columns that have a value in some row, and the cells."""
    cells = [[c.cell(r) for c in COLUMNS] for r in rows]
    keep = [i for i, c in enumerate(COLUMNS) if any(row[i] for row in cells)]
    return [COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in cells]


def cross_board(analysis: Analysis) -> tuple[int, list[str], list[list[str]]] | None:
    """Variant x board p50 latency at one batch size (the fastest backend per cell)."""
    if len(analysis.boards) < 2:
        return None
    common = set.intersection(
        *({r.rec.batch for r in analysis.rows if r.rec.board == b} for b in analysis.boards)
    )
    batch = min(common) if common else min(r.rec.batch for r in analysis.rows)
    out = []
    for variant in analysis.variants:
        line = [variant]
        for board in analysis.boards:
            rows = [
                r
                for r in analysis.rows
                if r.rec.variant == variant and r.rec.board == board and r.rec.batch == batch
            ]
            if not rows:
                line.append("")
                continue
            best = min(rows, key=lambda r: r.rec.latency_ms.p50)
            up = f", {best.speedup:.2f}x" if best.speedup and not best.is_baseline else ""
            line.append(
                f"{fmt_ms(best.rec.latency_ms.p50)} ms ({best.rec.backend}{up}) [#{best.n}]"
            )
        out.append(line)
    return batch, ["Variant", *analysis.boards], out


def provenance(rec: BenchRecord) -> dict[str, object]:
    """What produced a record: commands, model lineage, versions, machine."""
    env = rec.environment
    machine = [f"{env.get('cpu', '?')} x{env.get('cpu_count', '?')}"]
    for gpu in env.get("gpus", []):
        machine.append(f"GPU {gpu.get('name')} (driver {gpu.get('driver')})")
    jetson = env.get("jetson") or {}
    for key in ("board", "l4t", "jetpack", "power_mode", "clocks_locked"):
        if key in jetson:
            machine.append(f"{key} {jetson[key]}")
    machine.append(f"{env.get('os', '')}, Python {env.get('python', '?')}")
    pipeline = rec.extra.get("pipeline") or [rec.command]
    return {
        "commands": [str(c) for c in pipeline],
        "lineage": [
            f"{e.get('kind')} {e.get('id')}"
            + (f" ({e['spec']['stage']})" if e.get("spec", {}).get("stage") else "")
            for e in rec.model.lineage
        ],
        "versions": ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()),
        "machine": "; ".join(machine),
        "created": rec.created,
        "latency": f"p50/p90/p99 {rec.latency_ms.p50:.4g}/{rec.latency_ms.p90:.4g}/"
        f"{rec.latency_ms.p99:.4g} ms, mean {rec.latency_ms.mean:.4g} ± {rec.latency_ms.std:.2g}"
        f" ms over n={rec.latency_ms.n}",
    }


# ----------------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], body: list[list[str]], numeric: list[bool]) -> list[str]:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body]
    return lines


def render_markdown(
    records: list[BenchRecord],
    *,
    baseline: str | None = None,
    title: str | None = None,
    plot_links: list[tuple[str, str]] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The report as Markdown; `plot_links` are (caption, relative path of a PNG)."""
    a = analyse(records, baseline)
    out = [f"# {title or 'tvc benchmark report'}", ""]
    out += _summary_lines(a)
    out.append("")
    for caption, link in plot_links or []:
        out += [f"![{caption}]({link})", ""]
    out += [f"_{n}_" for n in notes or []]
    for board in a.boards:
        cols, body = table(a.rows_for(board))
        out += ["", f"## {board}", ""]
        out += _md_table([c.title for c in cols], body, [c.numeric for c in cols])
    cross = cross_board(a)
    if cross:
        batch, header, body = cross
        out += ["", f"## All boards: p50 latency at batch {batch}", ""]
        out += _md_table(header, body, [False] + [True] * (len(header) - 1))
    out += ["", "## How each number was produced", ""]
    for row in a.rows:
        p = provenance(row.rec)
        out += [
            f"**#{row.n}** {row.rec.variant}, {backend_label(row.rec)}, batch {row.rec.batch}"
            f" on {row.rec.board} ({p['created']}): {p['latency']}",
            "",
            "```sh",
            *p["commands"],
            "```",
            "",
        ]
        if p["lineage"]:
            out.append(f"- lineage: {' -> '.join(p['lineage'])}")
        out += [f"- machine: {p['machine']}", f"- versions: {p['versions']}", ""]
    return "\n".join(out).rstrip() + "\n"


def _summary_lines(a: Analysis) -> list[str]:
    lines = []
    head = headline(a)
    if head:
        lines += [f"**Headline:** {head}.", ""]
    metrics = _unique(r.quality.name for r in a.records if r.quality)
    deltas = "".join(f"; Δ {m}" for m in metrics) + (" in points" if metrics else "")
    lines += [
        f"- {len(a.records)} record(s) from {len(a.boards)} board(s): {', '.join(a.boards)}",
        f"- baseline: {a.baseline} (speed-up is baseline p50 / variant p50 on the same board and"
        f" batch{deltas})",
        f"- made by tvc {__version__} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
    ]
    return lines


# --------------------------------------------------------------------------------------- HTML

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:#1d232a;background:#fff;margin:0 auto;padding:1.5rem;max-width:1400px}
h1{font-size:1.6rem;margin:.2rem 0 1rem}
h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid #d8dde3;padding-bottom:.2rem}
.headline{background:#eef6ee;border-left:4px solid #3c8c3c;padding:.6rem .9rem;margin:1rem 0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86rem;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .55rem;border-bottom:1px solid #e3e7eb;white-space:nowrap}
th{background:#f4f6f8;text-align:left;position:sticky;top:0}
td.num{text-align:right}
tr.base td{background:#fbf7e6}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;flex:1 1 460px;min-width:0;max-width:760px}
figure img{width:100%;height:auto;border:1px solid #e3e7eb}
figcaption{font-size:.85rem;color:#555}
.note{color:#7a5b00;font-size:.9rem}
details{margin:.3rem 0;border:1px solid #e3e7eb;border-radius:4px;padding:.3rem .6rem}
summary{cursor:pointer}
pre{background:#f4f6f8;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere;margin:.4rem 0}
.meta{font-size:.85rem;color:#444;overflow-wrap:anywhere}
a{color:#1f5fa8}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _html_table(
    header: list[str],
    body: list[list[str]],
    numeric: list[bool],
    classes: list[str] | None = None,
    link_col: int | None = None,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    rows = []
    for i, row in enumerate(body):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = []
        for j, (cell, num) in enumerate(zip(row, numeric, strict=True)):
            text = _e(cell)
            if j == link_col and cell:
                text = f'<a href="#rec-{_e(cell)}">{text}</a>'
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def render_html(
    records: list[BenchRecord],
    *,
    baseline: str | None = None,
    title: str | None = None,
) -> str:
    """The report as one HTML page with its plots inline: readable offline, no scripts."""
    from tvc.report.plots import make_plots

    a = analyse(records, baseline)
    title = title or "tvc benchmark report"
    body = [f"<h1>{_e(title)}</h1>"]
    summary = _summary_lines(a)
    if summary[0].startswith("**Headline:**"):
        head = summary[0].removeprefix("**Headline:** ")
        body.append(f'<p class="headline"><strong>Headline:</strong> {_e(head)}</p>')
        summary = summary[2:]
    body.append("<ul>" + "".join(f"<li>{_e(s[2:])}</li>" for s in summary) + "</ul>")

    plots, notes = make_plots(a)
    if plots:
        body.append('<h2>Plots</h2><div class="plots">')
        for p in plots:
            data = base64.b64encode(p.png).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_e(p.title)}" '
                f'width="{p.width}" height="{p.height}">'
                f"<figcaption>{_e(p.caption)}</figcaption></figure>"
            )
        body.append("</div>")
    body += [f'<p class="note">{_e(n)}</p>' for n in notes]

    for board in a.boards:
        rows = a.rows_for(board)
        cols, cells = table(rows)
        body.append(f"<h2>{_e(board)}</h2>")
        body.append(
            _html_table(
                [c.title for c in cols],
                cells,
                [c.numeric for c in cols],
                ["base" if r.is_baseline else "" for r in rows],
                link_col=0,
            )
        )
    cross = cross_board(a)
    if cross:
        batch, header, cells = cross
        body.append(f"<h2>All boards: p50 latency at batch {batch}</h2>")
        body.append(_html_table(header, cells, [False] + [True] * (len(header) - 1)))

    body.append("<h2>How each number was produced</h2>")
    for row in a.rows:
        p = provenance(row.rec)
        lineage = f"<div>lineage: {_e(' -> '.join(p['lineage']))}</div>" if p["lineage"] else ""
        body.append(
            f'<details id="rec-{row.n}"><summary>#{row.n} {_e(row.rec.variant)}, '
            f"{_e(backend_label(row.rec))}, batch {row.rec.batch} on {_e(row.rec.board)}"
            f"</summary><pre>{_e(chr(10).join(p['commands']))}</pre>"
            f'<div class="meta"><div>{_e(p["latency"])}, measured {_e(p["created"])}</div>'
            f"{lineage}<div>machine: {_e(p['machine'])}</div>"
            f"<div>versions: {_e(p['versions'])}</div></div></details>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


# -------------------------------------------------------------------------------------- files


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(
    records: list[BenchRecord],
    out: str | Path,
    *,
    baseline: str | None = None,
    title: str | None = None,
) -> Path:
    """Write `out` (.html or .md). Markdown's plots go to `<stem>_plots/` beside it."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in (".html", ".htm"):
        _write_atomic(out, render_html(records, baseline=baseline, title=title).encode())
        return out
    if suffix != ".md":
        raise ConfigError(
            f"cannot tell the report format from '{out.name}'",
            "name the output report.html (one self-contained page) or report.md",
        )
    from tvc.report.plots import make_plots

    plots, notes = make_plots(analyse(records, baseline))
    links = []
    for p in plots:
        rel = f"{out.stem}_plots/{p.name}.png"
        _write_atomic(out.parent / rel, p.png)
        links.append((p.caption, rel))
    text = render_markdown(records, baseline=baseline, title=title, plot_links=links, notes=notes)
    _write_atomic(out, text.encode())
    return out
