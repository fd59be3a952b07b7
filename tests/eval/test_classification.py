"""Evaluation numbers equal a hand computation on a fixed tiny set."""

import numpy as np
import pytest

from tvc.data import ImageSet
from tvc.errors import ConfigError
from tvc.eval import evaluate
from tvc.runtime.predict import runner_predict

# 6 samples, 10 classes; sample i's logits are row i (the image carries its index)
LOGITS = np.array(
    [
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # label 0: top-1 right
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # label 5: top-5 (9,8,7,6,5) right, top-1 wrong
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],  # label 0: both wrong
        [5, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # label 9: top-5 right (rank 2)
        [0, 0, 0, 7, 0, 0, 0, 0, 0, 0],  # label 3: top-1 right
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # label 4: rank 6 -> both wrong
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 5, 0, 9, 3, 4])


@pytest.fixture()
def tiny():
    x = np.zeros((6, 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(6)
    return ImageSet.from_arrays(x, LABELS, name="tiny", class_names=list("abcdefghij"))


def _predict(x):
    return LOGITS[x[:, 0, 0, 0].astype(int)]


def test_top1_top5_by_hand(tiny):
    r = evaluate(_predict, tiny, batch_size=4)  # batches of 4 and 2
    assert r["n"] == 6 and r["dataset"] == "tiny" and r["split"] == "test"
    assert r["top1"] == pytest.approx(100 * 2 / 6)  # samples 0 and 4
    assert r["top5"] == pytest.approx(100 * 4 / 6)  # samples 0, 1, 3, 4
    assert r["agreement"] is None


def test_agreement_with_reference(tiny):
    ref = LOGITS.copy()
    ref[[1, 2], 0] = 100  # the reference predicts class 0 for samples 1 and 2
    r = evaluate(_predict, tiny, batch_size=5,
                 reference=lambda x: ref[x[:, 0, 0, 0].astype(int)])  # fmt: skip
    assert r["agreement"] == pytest.approx(100 * 4 / 6)


def test_top5_is_none_for_few_classes():
    data = ImageSet.from_arrays(np.zeros((2, 1, 1, 1), np.float32), np.array([0, 1]))
    r = evaluate(lambda x: np.tile([[0.0, 1.0]], (len(x), 1)), data)
    assert r["top1"] == 50.0 and r["top5"] is None


def test_bad_outputs_are_user_errors(tiny):
    with pytest.raises(ConfigError, match="shape"):
        evaluate(lambda x: np.zeros((len(x),)), tiny)
    with pytest.raises(ConfigError, match="predicts 3"):
        evaluate(lambda x: np.zeros((len(x), 3)), tiny)


class _FixedBatchRunner:
    """A stand-in for a model exported with batch 4."""

    def __init__(self):
        from tvc.runtime.base import TensorSpec

        self.inputs = [TensorSpec("input", (4, 1, 2, 2), np.dtype(np.float32))]
        self.outputs = [TensorSpec("logits", (4, 10), np.dtype(np.float32))]
        self.calls = 0

    def infer(self, x):
        assert x.shape[0] == 4
        self.calls += 1
        return {"logits": _predict(x)}


def test_runner_predict_pads_fixed_batches(tiny):
    runner = _FixedBatchRunner()
    r = evaluate(runner_predict(runner), tiny, batch_size=6)
    assert runner.calls == 2 and r["top1"] == pytest.approx(100 * 2 / 6)


def test_onnx_runner_matches_torch(pico, pico_onnx):
    import torch

    from tvc.runtime.ort import OrtRunner

    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with OrtRunner(pico_onnx.file("model.onnx"), threads=1) as runner:
        got = runner_predict(runner)(x)
    with torch.no_grad():
        want = pico.model(torch.from_numpy(x)).numpy()
    assert np.allclose(got, want, atol=1e-4)
