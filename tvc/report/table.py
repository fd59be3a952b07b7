"""Human-readable tables of bench records on the terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def _quality_columns(records) -> list[tuple[str, object]]:
    """(title, cell) of the task columns some record fills: each quality metric measured
    (top-1, mAP, TuSimple accuracy, probe accuracy), and Image GPT's bits/dim and generation."""

    def metric(name: str):
        return lambda r: f"{r.quality.value:.2f}" if r.quality and r.quality.name == name else "-"

    names = list(dict.fromkeys(r.quality.name for r in records if r.quality))
    units = {r.quality.name: r.quality.unit for r in records if r.quality}
    cols: list[tuple[str, object]] = [(f"{n} {units[n]}".strip(), metric(n)) for n in names]
    if any(r.pixels for r in records):
        cols.append(("bits/dim", lambda r: f"{r.pixels.bpd:.3f}" if r.pixels else "-"))
    if any(r.generation for r in records):
        cols.append(("gen tok/s", lambda r: _gen(r, "{0.tokens_per_s:,.0f}")))
        cols.append(("ms/image", lambda r: _gen(r, "{0.ms_per_image:.1f}")))
    return cols


def _gen(r, fmt: str) -> str:
    return fmt.format(r.generation) if r.generation else "-"


def print_records(records, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="tvc bench", show_lines=False)
    extra = _quality_columns(records)
    for col in (
        "variant",
        "backend",
        "threads",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean±std ms",
        "n",
        "img/s",
        "size MB",
        "peak RSS MB",
        *(title for title, _ in extra),
    ):
        table.add_column(col, justify="left" if col in ("variant", "backend") else "right")
    for r in records:
        lat = r.latency_ms
        table.add_row(
            r.variant,
            r.provider if r.backend == "ort" else r.backend,
            str(r.threads or "all"),
            str(r.batch),
            f"{lat.p50:.2f}",
            f"{lat.p90:.2f}",
            f"{lat.p99:.2f}",
            f"{lat.mean:.2f}±{lat.std:.2f}",
            str(lat.n),
            f"{r.throughput_ips:.1f}",
            f"{r.size_bytes / 1e6:.2f}" if r.size_bytes else "-",
            f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb else "-",
            *(cell(r) for _, cell in extra),
        )
    console.print(table)
    if records:
        console.print(f"[dim]{records[0].board}[/dim]")
