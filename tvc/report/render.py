"""Reports from bench records: Markdown, or one self-contained HTML page (plots inline as SVG).

Records from any number of machines merge into one comparison (tvc/report/analysis.py): tables
are grouped by board, rows come in lineage order, and every row is compared with the baseline
measured on the same board at the same batch. Each board has two tables that fit a 1280-px page
and a sheet of paper: timing (p50 with its 95% interval, speed-up with its interval, noise) and
model (size, compute, quality on a named evaluation set, resources). The headline is computed
once (tvc/report/headline.py). Every number links to the command and the package versions that
produced it. No torch.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from tvc import __version__
from tvc.errors import ConfigError
from tvc.records import BenchRecord
from tvc.report.analysis import Analysis, analyse, backend_label, evaluation_sets, set_text
from tvc.report.columns import DASH, TABLES, Cell, Column, footnotes, set_notes, table
from tvc.report.fmt import fmt_ms
from tvc.report.headline import headline_text
from tvc.safe_io import write_bytes_atomic

__all__ = ["analyse", "headline", "render_html", "render_markdown", "write_report"]

headline = headline_text  # the headline sentence (tvc.report.headline has it in numbers)


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
            up = ""
            if best.speedup and not best.is_baseline:
                up = ", ≈1x" if best.overlaps else f", {best.speedup:.2f}x"
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


def board_tables(a: Analysis, board: str) -> list[tuple[str, list[Column], list[list[Cell]]]]:
    """(title, columns, cells) of the board's tables, the columns without a value left out."""
    rows = a.rows_for(board)
    return [(title, *table(rows, cols)) for title, cols in TABLES]


def dash_notes(cols: list[Column], cells: list[list[Cell]]) -> list[str]:
    """Why cells are empty, one line per column and reason: paper shows no tooltips."""
    out = []
    for j, col in enumerate(cols):
        whys = list(dict.fromkeys(row[j].why for row in cells if row[j].text == DASH))
        whys = [w for w in whys if w]
        if whys:
            out.append(f"{DASH} in {col.title}: {'; '.join(whys)}")
    return out


def _notes(a: Analysis, board: str, table_name: str) -> list[str]:
    """Noise footnotes under the timing table, evaluation sets under the model table."""
    rows = a.rows_for(board)
    return footnotes(rows) if table_name == TABLES[0][0] else set_notes(rows)


def _text(cell: Cell) -> str:
    return cell.text + cell.mark


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
        out += ["", f"## {board}"]
        for name, cols, body in board_tables(a, board):
            out += ["", f"### {name}", ""]
            out += _md_table(
                [c.title for c in cols],
                [[_text(c) for c in row] for row in body],
                [c.numeric for c in cols],
            )
            extra = _notes(a, board, name) + dash_notes(cols, body)
            if extra:
                out += [""] + [f"- {_md_cell(x)}" for x in extra]
    cross = cross_board(a)
    if cross:
        batch, header, body = cross
        out += ["", f"## All boards: p50 latency at batch {batch}", ""]
        body = [[c or f"{DASH} (not measured)" for c in row] for row in body]
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


def _sets_line(a: Analysis) -> list[str]:
    """The evaluation set and its size beside every quality figure; different sets said so."""
    lines = []
    for metric, pairs in evaluation_sets(a).items():
        sets = list(dict.fromkeys(data for _, data in pairs))
        if len(sets) == 1:
            lines.append(f"{metric} of every variant on {set_text(sets[0])}")
        else:
            each = "; ".join(f"{v}: {set_text(d)}" for v, d in pairs)
            lines.append(
                f"{metric} was measured on different evaluation sets, so only variants on the "
                f"same set are compared: {each}"
            )
    return lines


def _timing_line(a: Analysis) -> str:
    noisy = [r for r in a.rows if r.noisy]
    judged = [r for r in a.rows if r.rec.conditions is not None]
    if not judged:
        return (
            "timing: these records carry no load, clock or noise verdict (benched before tvc "
            "recorded them): speed-ups are point estimates"
        )
    runs = {r.rec.conditions.run_id for r in judged}
    how = (
        "all timed interleaved in one run"
        if len(runs) == 1 and len(judged) == len(a.rows)
        else f"timed in {len(runs)} separate run(s)"
    )
    verdict = (
        f"{len(noisy)} of {len(a.rows)} record(s) noisy (marked *)" if noisy else "no record noisy"
    )
    return f"timing: {how}; {verdict}; intervals are 95% intervals of the median"


def _summary_lines(a: Analysis) -> list[str]:
    lines = []
    head = headline_text(a)
    if head:
        lines += [f"**Headline:** {head}.", ""]
    metrics = list(dict.fromkeys(r.quality.name for r in a.records if r.quality))
    deltas = "".join(f"; Δ {m}" for m in metrics) + (" in points" if metrics else "")
    base = next(r for r in a.rows if r.is_baseline)
    lines += [
        f"- {len(a.records)} record(s) from {len(a.boards)} board(s): {', '.join(a.boards)}",
        f"- baseline: {a.baseline} on {backend_label(base.rec)} (speed-up is baseline p50 / "
        f"variant p50 on the same board and batch, on the same backend where the baseline was "
        f"measured there{deltas}; ≈1x where the intervals overlap)",
        *(f"- {s}" for s in _sets_line(a)),
        f"- {_timing_line(a)}",
    ]
    if a.renamed:
        lines.append(
            "- variants named by their directories where records shared a label: "
            + ", ".join(f"{new} (was '{old}')" for new, old in a.renamed.items())
        )
    lines.append(
        f"- made by tvc {__version__} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    return lines


# --------------------------------------------------------------------------------------- HTML

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:#1d232a;background:#fff;margin:0 auto;padding:1.5rem;max-width:1280px}
h1{font-size:1.6rem;margin:.2rem 0 1rem}
h2{font-size:1.2rem;margin:2rem 0 .6rem;border-bottom:1px solid #d8dde3;padding-bottom:.2rem}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.headline{background:#eef6ee;border-left:4px solid #3c8c3c;padding:.6rem .9rem;margin:1rem 0}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.82rem;font-variant-numeric:tabular-nums}
th,td{padding:.25rem .45rem;border-bottom:1px solid #e3e7eb;white-space:nowrap}
th{background:#f4f6f8;text-align:left;vertical-align:bottom;white-space:normal}
td.num{text-align:right}
td.txt{white-space:normal;min-width:6em;max-width:16em;overflow-wrap:anywhere}
td[title]{cursor:help}
td.na{color:#8a949e;text-align:center}
tr.base td{background:#fbf7e6}
tr.noisy td{background:#fff1ee}
sup{color:#b0361c}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;flex:1 1 460px;min-width:0;max-width:760px}
figure svg{width:100%;height:auto;border:1px solid #e3e7eb;display:block}
figcaption{font-size:.85rem;color:#555}
.note{color:#7a5b00;font-size:.9rem}
ul.tnotes{font-size:.8rem;color:#444;margin:.3rem 0 0;padding-left:1.2rem}
details{margin:.3rem 0;border:1px solid #e3e7eb;border-radius:4px;padding:.3rem .6rem}
summary{cursor:pointer}
pre{background:#f4f6f8;padding:.5rem;white-space:pre-wrap;overflow-wrap:anywhere;margin:.4rem 0}
.meta{font-size:.85rem;color:#444;overflow-wrap:anywhere}
a{color:#1f5fa8}
@media print{
  body{max-width:none;padding:0;font-size:11px}
  .scroll{overflow:visible}
  table{font-size:9px}
  th,td{padding:.15rem .3rem}
  h2{break-after:avoid}
  figure,table,tr{break-inside:avoid}
  figure{flex-basis:100%;max-width:100%}
  details{border:none;padding:0}
  a{color:inherit;text-decoration:none}
}
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _html_cell(cell: Cell, numeric: bool, link: bool) -> str:
    text = _e(cell.text)
    if link and cell.text != DASH:
        text = f'<a href="#rec-{_e(cell.text)}">{text}</a>'
    if cell.mark:
        text += f"<sup>{_e(cell.mark)}</sup>"
    classes = ["na"] if cell.text == DASH else ["num" if numeric else "txt"]
    title = f' title="{_e(cell.why)}"' if cell.why else ""
    return f'<td class="{" ".join(classes)}"{title}>{text}</td>'


def _html_table(
    header: list[str],
    body: list[list[Cell]],
    numeric: list[bool],
    classes: list[str] | None = None,
    link_col: int | None = None,
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    rows = []
    for i, row in enumerate(body):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = [
            _html_cell(cell, num, j == link_col)
            for j, (cell, num) in enumerate(zip(row, numeric, strict=True))
        ]
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _inline_svg(svg: bytes, title: str, prefix: str) -> str:
    """matplotlib's SVG without its XML prolog, sized by CSS, labelled for screen readers, its
    ids prefixed so that several SVGs in one page never share one."""
    text = svg.decode()
    text = text[text.index("<svg") :]
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return text.replace("<svg", f'<svg role="img" aria-label="{_e(title)}"', 1)


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

    plots, notes = make_plots(a, fmt="svg")
    if plots:
        body.append('<h2>Plots</h2><div class="plots">')
        for p in plots:
            body.append(
                f"<figure>{_inline_svg(p.data, p.title, p.name)}"
                f"<figcaption>{_e(p.caption)}</figcaption></figure>"
            )
        body.append("</div>")
    body += [f'<p class="note">{_e(n)}</p>' for n in notes]

    for board in a.boards:
        rows = a.rows_for(board)
        body.append(f"<h2>{_e(board)}</h2>")
        for name, cols, cells in board_tables(a, board):
            body.append(f"<h3>{_e(name)}</h3>")
            body.append(
                _html_table(
                    [c.title for c in cols],
                    cells,
                    [c.numeric for c in cols],
                    ["base" if r.is_baseline else "noisy" if r.noisy else "" for r in rows],
                    link_col=0,
                )
            )
            extra = _notes(a, board, name) + dash_notes(cols, cells)
            if extra:
                body.append('<ul class="tnotes">' + "".join(f"<li>{_e(x)}</li>" for x in extra)
                            + "</ul>")  # fmt: skip
    cross = cross_board(a)
    if cross:
        batch, header, cells = cross
        body.append(f"<h2>All boards: p50 latency at batch {batch}</h2>")
        body.append(
            _html_table(
                header,
                [[Cell(c or DASH, "" if c else "not measured on this board") for c in row]
                 for row in cells],
                [False] + [True] * (len(header) - 1),
            )
        )  # fmt: skip

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
    write_bytes_atomic(path, data)


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
        _write_atomic(out.parent / rel, p.data)
        links.append((p.caption, rel))
    text = render_markdown(records, baseline=baseline, title=title, plot_links=links, notes=notes)
    _write_atomic(out, text.encode())
    return out
