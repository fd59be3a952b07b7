"""Progress of the long INT8 steps (calibration, the accuracy gate).

The export flow turns the display on with `shown()`; the steps report through `step()`, which
logs its description either way and, when shown, reports through tvc's one progress display
(`tvc.progress.Progress`: a bar on a terminal, plain periodic lines in a log or pipe). Tests and
library callers that do not ask for it stay quiet.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from tvc.progress import Progress

log = logging.getLogger("tvc")

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("tvc_int8_progress", default=False)


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[None]:
    """Show the steps run inside as progress."""
    token = _SHOWN.set(enabled)
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextlib.contextmanager
def step(description: str, total: int) -> Iterator[Progress]:
    """One step of `total` units; yields its display (`advance(n)`; `tvc.progress.counted`)."""
    log.info("%s", description)
    with Progress(_SHOWN.get()) as bar:
        bar.task(description, max(total, 1))
        yield bar
