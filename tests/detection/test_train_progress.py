"""Detector training reports through tvc's one progress display (a bar per epoch with its ETA
on a terminal, plain lines in a pipe), and --no-progress turns it off."""

from __future__ import annotations

import copy
from typing import ClassVar

from click.testing import CliRunner

from tvc.cli import cli
from tvc.data.detection import load_detection
from tvc.models.load import LoadedModel
from tvc.progress import Progress
from tvc.train import detection as det_train
from tvc.train.detection import DetTrainConfig, train_detector


class _Recorder(Progress):
    """tvc.progress.Progress drawing nothing, remembering what the loop reported."""

    made: ClassVar[list[_Recorder]] = []

    def __init__(self, enabled: bool = True, **kw) -> None:
        super().__init__(enabled, interactive=False, emit=lambda line: None)
        self.shown = enabled
        self.tasks: list[dict] = []
        _Recorder.made.append(self)

    def task(self, what: str, total: int | None, unit: str = "done") -> None:
        super().task(what, total, unit)
        self.tasks.append({"description": what, "total": total})

    def done(self) -> None:
        if self.tasks and self.what:
            self.tasks[-1]["done"] = self.count
        super().done()


def _record(monkeypatch) -> list[_Recorder]:
    _Recorder.made = []
    monkeypatch.setattr(det_train, "Progress", _Recorder)
    return _Recorder.made


def test_training_advances_a_task_per_epoch(tiny_detr, monkeypatch):
    made = _record(monkeypatch)
    loaded = LoadedModel(copy.deepcopy(tiny_detr.model), tiny_detr.info)
    scenes = load_detection("fashion-mnist-det", "train", limit=6)
    train_detector(loaded, scenes, DetTrainConfig(epochs=2, batch_size=4, warmup_steps=1))
    (bar,) = made
    assert bar.shown
    assert [t["description"] for t in bar.tasks] == ["train epoch 1/2", "train epoch 2/2"]
    assert all(t["total"] == t["done"] == 2 for t in bar.tasks)


def test_cli_no_progress_reaches_the_detector_loop(tmp_path, monkeypatch):
    made = _record(monkeypatch)
    args = ["train", "detr_pico", "--data", "fashion-mnist-det", "--epochs", "1", "--limit", "4",
            "--eval-limit", "2", "-o", str(tmp_path / "t")]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert [b.shown for b in made] == [False, True]
