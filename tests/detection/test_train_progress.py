"""Detector training shows the classifiers' progress display (a bar per epoch with its ETA),
and --no-progress turns it off."""

from __future__ import annotations

import copy

from click.testing import CliRunner

from tvc.cli import cli
from tvc.data.detection import load_detection
from tvc.models.load import LoadedModel
from tvc.train import detection as det_train
from tvc.train.detection import DetTrainConfig, train_detector
from tvc.train.loop import progress_bar


class _Recorder:
    """Stands in for tvc.train.loop.progress_bar and remembers what the loop reported."""

    def __init__(self) -> None:
        self.shown: list[bool] = []
        self.tasks: dict[int, dict] = {}

    def __call__(self, show: bool):
        self.shown.append(show)
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: int) -> int:
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "done": 0,
                                       "removed": False}  # fmt: skip
        return len(self.tasks) - 1

    def advance(self, task: int) -> None:
        self.tasks[task]["done"] += 1

    def remove_task(self, task: int) -> None:
        self.tasks[task]["removed"] = True


def test_training_advances_a_bar_per_epoch(tiny_detr, monkeypatch):
    bar = _Recorder()
    monkeypatch.setattr(det_train, "progress_bar", bar)
    loaded = LoadedModel(copy.deepcopy(tiny_detr.model), tiny_detr.info)
    scenes = load_detection("fashion-mnist-det", "train", limit=6)
    train_detector(loaded, scenes, DetTrainConfig(epochs=2, batch_size=4, warmup_steps=1))
    assert bar.shown == [True]
    assert [t["description"] for t in bar.tasks.values()] == ["epoch 1/2", "epoch 2/2"]
    assert all(t["total"] == t["done"] == 2 and t["removed"] for t in bar.tasks.values())


def test_the_helper_is_the_classifiers_rich_bar_with_an_eta():
    from rich.progress import Progress, TimeRemainingColumn

    shown = progress_bar(True)
    assert isinstance(shown, Progress)
    assert any(isinstance(c, TimeRemainingColumn) for c in shown.columns)
    assert not isinstance(progress_bar(False), Progress)


def test_cli_no_progress_reaches_the_detector_loop(tmp_path, monkeypatch):
    bar = _Recorder()
    monkeypatch.setattr(det_train, "progress_bar", bar)
    args = ["train", "detr_pico", "--data", "fashion-mnist-det", "--epochs", "1", "--limit", "4",
            "--eval-limit", "2", "-o", str(tmp_path / "t")]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert bar.shown == [False, True]
