"""Human-readable tables of bench records on the terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table


def print_records(records, console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title="tvc bench", show_lines=False)
    show_acc = any(r.accuracy is not None for r in records)
    show_map = any(r.detection is not None for r in records)
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
    ):
        table.add_column(col, justify="left" if col in ("variant", "backend") else "right")
    if show_acc:
        table.add_column("top-1 %", justify="right")
    if show_map:
        table.add_column("mAP", justify="right")
    for r in records:
        lat = r.latency_ms
        acc = [f"{r.accuracy.top1:.2f}" if r.accuracy else "-"] if show_acc else []
        if show_map:
            acc.append(f"{r.detection.map:.2f}" if r.detection else "-")
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
            *acc,
        )
    console.print(table)
    if records:
        console.print(f"[dim]{records[0].board}[/dim]")
