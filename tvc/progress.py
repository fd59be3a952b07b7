"""The one progress display of tvc: a live bar on a terminal, plain periodic lines in a log.

Training loops (classifiers, detectors, lanes, Image GPT), distillation, calibration, evaluation
and benchmarking all report progress through `Progress`. When stderr is a terminal it draws a
rich bar that disappears when done; when stderr is a pipe or a file (`make demo | tee log`, a CI
log, a recipe stage) a bar would print nothing, so it writes a plain line instead every
`every_s` seconds or each `every_frac` of the work (whichever comes first, never more than one
line per `min_gap_s`):

    train epoch 3/10 42% (84/200) eta 1m20s
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tvc")

EVERY_S = 10.0  # a plain line at least this often while work goes on
EVERY_FRAC = 0.1  # and at each tenth of the work
MIN_GAP_S = 2.0  # but never two lines closer than this

_live_bar = False  # rich draws one live display at a time


def duration(seconds: float) -> str:
    """'45s', '1m20s', '2h05m'."""
    s = round(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _log_line(line: str) -> None:
    """An INFO line of the tvc logger, even where a library muted logging around its own work
    (ORT's quantizer raises the root level while tvc calibrates): progress is asked for."""
    log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None))


class Progress:
    """Progress of one piece of work after another (`task`, `advance`, `done`).

    `enabled=False` shows nothing. `interactive` chooses the bar (True) or plain lines (False);
    by default the bar when stderr is a terminal. Plain lines go to `emit` (default: the tvc
    logger at INFO, on stderr); `clock` is for tests.
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        interactive: bool | None = None,
        emit: Callable[[str], None] | None = None,
        every_s: float | None = None,
        every_frac: float | None = None,
        min_gap_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.interactive = stderr_is_terminal() if interactive is None else interactive
        self.emit = emit or _log_line
        self.every_s = EVERY_S if every_s is None else every_s
        self.every_frac = EVERY_FRAC if every_frac is None else every_frac
        self.min_gap_s = MIN_GAP_S if min_gap_s is None else min_gap_s
        self.clock = clock
        self._bar: Any = None
        self._bar_task: Any = None
        self.what, self.total, self.count, self.unit = "", None, 0, "done"
        self._start = self._last = 0.0
        self._next_frac = self.every_frac

    # -- context
    def __enter__(self) -> Progress:
        global _live_bar
        if self.enabled and self.interactive and _live_bar:
            self.enabled = False  # a bar is already drawn (work nested in work): one is enough
        elif self.enabled and self.interactive:
            _live_bar = True
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar("{task.description}", BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            transient=True)  # fmt: skip
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> bool:
        global _live_bar
        self.done()
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
            _live_bar = False
        return False

    # -- work
    def task(self, what: str, total: int | None, unit: str = "done") -> None:
        """Start a piece of work of `total` steps (None: unknown, then lines count `unit`),
        ending the previous one."""
        self.done()
        self.what, self.total, self.count, self.unit = what, total, 0, unit
        self._start = self._last = self.clock()
        self._next_frac = self.every_frac
        if self._bar is not None:
            self._bar_task = self._bar.add_task(what, total=total)

    def advance(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.count += n
        if self._bar is not None:
            if self._bar_task is not None:
                self._bar.advance(self._bar_task, n)
            return
        now = self.clock()
        since = now - self._last
        frac = self.count / self.total if self.total else None
        crossed = frac is not None and frac + 1e-9 >= self._next_frac
        if since >= self.every_s or (crossed and since >= self.min_gap_s):
            self.emit(self.line(now))
            self._last = now
        if crossed:
            while self._next_frac <= frac + 1e-9:
                self._next_frac += self.every_frac

    def done(self) -> None:
        """End the current piece of work (its bar disappears; plain mode prints nothing more:
        the caller's own summary line follows)."""
        if self._bar is not None and self._bar_task is not None:
            self._bar.remove_task(self._bar_task)
        self._bar_task = None

    def line(self, now: float | None = None) -> str:
        """'train epoch 3/10 42% (84/200) eta 1m20s'; without a total 'timing: 12 rounds, 20s'."""
        elapsed = (self.clock() if now is None else now) - self._start
        if not self.total:
            return f"{self.what}: {self.count} {self.unit}, {duration(elapsed)}"
        frac = min(self.count / self.total, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else None
        tail = f" eta {duration(eta)}" if eta is not None else ""
        return f"{self.what} {frac:.0%} ({self.count}/{self.total}){tail}"


def size_of(items: object) -> int | None:
    """len(items), or None for what has no length."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def counted(predict: Callable[..., Any], bar: Progress) -> Callable[..., Any]:
    """`predict(batch, ...)` that advances `bar` by the batch's length: evaluation progress
    (further arguments, such as a detector's pixel mask, pass through)."""

    def run(x: Any, *rest: Any) -> Any:
        out = predict(x, *rest)
        bar.advance(len(x))
        return out

    run.takes_mask = getattr(predict, "takes_mask", False)  # type: ignore[attr-defined]
    return run
