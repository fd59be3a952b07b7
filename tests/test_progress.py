"""Progress survives a pipe: plain periodic lines when stderr is not a terminal."""

from click.testing import CliRunner

import tvc.progress
from tvc.cli import cli
from tvc.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_every_tenth_and_every_ten_seconds_with_an_eta():
    clock, lines = Clock(), []
    with Progress(interactive=False, emit=lines.append, clock=clock) as bar:
        bar.task("train epoch 3/10", 200)
        for _ in range(84):  # 84 steps of 1 s: a line every 10 s
            clock.t += 1
            bar.advance()
        assert lines[0] == "train epoch 3/10 5% (10/200) eta 3m10s"
        assert lines[-1] == "train epoch 3/10 40% (80/200) eta 2m00s"
        assert len(lines) == 8
        bar.task("quick epoch", 200)
        for _ in range(84):  # 84 steps of 0.15 s: a line at each tenth (every 20 steps)
            clock.t += 0.15
            bar.advance()
        assert lines[8:] == [
            "quick epoch 10% (20/200) eta 27s",
            "quick epoch 20% (40/200) eta 24s",
            "quick epoch 30% (60/200) eta 21s",
            "quick epoch 40% (80/200) eta 18s",
        ]
        bar.task("slow", 1000)
        clock.t += 25  # 25 s into the first step: a line although no tenth was reached
        bar.advance()
        assert lines[-1] == "slow 0% (1/1000) eta 6h56m"
        bar.task("timing", None, unit="rounds")
        clock.t += 11
        bar.advance()
        assert lines[-1] == "timing: 1 rounds, 11s"


def test_no_two_lines_closer_than_the_minimum_gap_and_nothing_when_disabled():
    clock, lines = Clock(), []
    with Progress(interactive=False, emit=lines.append, clock=clock) as bar:
        bar.task("fast", 10)
        for _ in range(10):  # ten tenths within 1 s: one line at most
            clock.t += 0.1
            bar.advance()
    assert lines == []
    with Progress(False, interactive=False, emit=lines.append, clock=clock) as bar:
        bar.task("off", 2)
        clock.t += 100
        bar.advance()
    assert lines == []
    assert [duration(s) for s in (4.4, 80, 7500)] == ["4s", "1m20s", "2h05m"]


def test_a_bar_inside_a_bar_draws_nothing():
    with Progress(interactive=True) as outer, Progress(interactive=True) as inner:
        assert outer.enabled and not inner.enabled
        inner.task("nested", 3)
        inner.advance()
    with Progress(interactive=True) as again:  # the outer bar is gone
        assert again.enabled


def test_bench_and_eval_print_progress_lines_into_a_pipe(tmp_path, monkeypatch):
    r = CliRunner().invoke(cli, ["export", "vit_pico", "-o", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(tvc.progress, "EVERY_S", 0.0)  # a line at every step
    r = CliRunner().invoke(cli, ["bench", str(tmp_path / "e"), "--threads", "1", "--min-runs",
                                 "3", "--min-time-s", "0", "--max-time-s", "0", "--warmup-s",
                                 "0", "--rounds", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "info: timing 1 variant(s) at batch 1: 1 rounds, " in r.output
    assert "info: timing 1 variant(s) at batch 1: 3 rounds, " in r.output
