"""An ONNX detector exported with --pixel-mask gets the letterbox mask at evaluation, as the
PyTorch model does; predictors without a mask input see the padding (as before)."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from tvc.cli import cli
from tvc.runtime.ort import OrtRunner
from tvc.runtime.predict import runner_outputs
from tvc.tasks import task_named


def _padded_mask(b: int, size: int) -> np.ndarray:
    mask = np.ones((b, size, size), np.int64)
    mask[:, size // 2 :, :] = 0  # a wide image letterboxed: the bottom half is padding
    return mask


def test_runner_feeds_the_mask_to_a_pixel_mask_export(tmp_path):
    out = tmp_path / "x"
    res = CliRunner().invoke(cli, ["export", "detr_pico", "--input-size", "64", "--pixel-mask",
                                   "--no-simplify", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    predict = runner_outputs(OrtRunner(out / "model.onnx", threads=1))
    assert predict.takes_mask
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    mask = _padded_mask(2, 64)
    masked, whole = predict(x, mask), predict(x)
    assert not np.allclose(masked["logits"], whole["logits"], atol=1e-4)  # the mask is used
    # a fixed-batch chunking keeps each image with its own mask
    one = np.concatenate([predict(x[i : i + 1], mask[i : i + 1])["logits"] for i in range(2)])
    np.testing.assert_allclose(one, masked["logits"], atol=1e-4)


def test_detection_evaluate_passes_masks_only_to_predictors_that_take_them(tmp_path):
    from tests.detection.test_sizing import dense_set
    from tvc.data.detection import write_coco
    from tvc.models import load_model

    for split, n in (("train", 2), ("val", 1), ("test", 3)):
        write_coco(dense_set(split, n), tmp_path / "dense")
    task = task_named("detection")
    info = load_model("detr_pico", input_size=64, warn_random=False).info
    data = task.load_data(str(tmp_path / "dense"), "test", info)
    seen: dict[str, list] = {"with": [], "without": []}

    def fake(kind: str):
        def predict(x, mask=None):
            seen[kind].append(mask)
            b = len(x)
            return {"logits": np.zeros((b, 10, 11), np.float32),
                    "boxes": np.full((b, 10, 4), 0.5, np.float32)}  # fmt: skip

        predict.takes_mask = kind == "with"
        return predict

    task.evaluate(fake("with"), data)
    task.evaluate(fake("without"), data)
    masks = [m for m in seen["with"] if m is not None]
    assert masks and all((m == 0).any() for m in masks)  # 48x80 images letterboxed: padding
    assert seen["without"] and all(m is None for m in seen["without"])
