"""Progress of the long INT8 steps (calibration, the accuracy gate) on the terminal.

The export flow turns the display on with `shown()`; the steps report through `step()`, which
logs its description either way and draws a bar (rich, on stderr) only when one is shown and
stderr is a terminal, so logs, pipes and tests stay plain.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger("tvc")

_BAR: contextvars.ContextVar = contextvars.ContextVar("tvc_int8_progress", default=None)

Advance = Callable[..., None]


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Show the steps run inside as progress bars (when stderr is a terminal)."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)  # fmt: skip
    token = _BAR.set(bar)
    try:
        with bar:
            yield
    finally:
        _BAR.reset(token)


@contextlib.contextmanager
def step(description: str, total: int) -> Iterator[Advance]:
    """One step of `total` units; yields advance(n=1)."""
    log.info("%s", description)
    bar = _BAR.get()
    if bar is None:
        yield lambda n=1: None
        return
    task = bar.add_task(description, total=max(total, 1))
    try:
        yield lambda n=1: bar.advance(task, n)
    finally:
        bar.remove_task(task)


def counted(predict: Callable, advance: Advance) -> Callable:
    """`predict` advancing the bar by the number of images of every call."""

    def run(x):
        out = predict(x)
        advance(len(x))
        return out

    return run
