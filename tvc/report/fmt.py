"""Number formatting shared by the report's tables, sentences and plot captions."""

from __future__ import annotations


def times(ratio: float, more: str, less: str) -> str:
    """2.0 -> '2.00x faster', 0.5 -> '2.00x slower'."""
    return f"{ratio:.2f}x {more}" if ratio >= 1 else f"{1 / ratio:.2f}x {less}"


def fmt_ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def fmt_count(v: float | None) -> str:
    if v is None:
        return ""
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"
