import math

import numpy as np

from tvc.eval.pixels import bits_per_dim, collect, fit_probe, log_softmax, probe_accuracy


def test_bits_per_dim_of_known_distributions():
    tokens = np.random.default_rng(0).integers(0, 16, (4, 10))
    uniform = np.zeros((4, 10, 16))
    assert math.isclose(bits_per_dim(uniform, tokens), 4.0, rel_tol=1e-9)  # log2(16)
    sure = np.full((4, 10, 16), -50.0)
    np.put_along_axis(sure, tokens[..., None], 50.0, -1)
    assert bits_per_dim(sure, tokens) < 1e-9
    half = np.zeros((1, 1, 2))  # p = 1/2 -> exactly one bit
    assert math.isclose(bits_per_dim(half, np.array([[1]])), 1.0)
    assert np.allclose(np.exp(log_softmax(np.array([[1.0, 2.0, 3.0]]))).sum(), 1.0)


def test_probe_learns_a_tiny_separable_case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    centres = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    x = centres[y] + rng.normal(0, 0.5, (300, 4))
    probe = fit_probe(x[:200], y[:200])
    assert probe.accuracy(x[200:], y[200:]) == 1.0
    # labels unrelated to the features: the probe cannot beat chance by much
    assert probe_accuracy(x[:200], rng.integers(0, 3, 200), x[200:], rng.integers(0, 3, 100)) < 0.6


def test_collect_sums_nll_over_batches():
    tokens = np.random.default_rng(1).integers(0, 4, (10, 6))

    def predict(x):
        return {"logits": np.zeros((*x.shape, 4)), "features": x.astype(float)}

    got = collect(predict, tokens, batch_size=3)
    assert math.isclose(got["bpd"], 2.0) and got["features"].shape == (10, 6)
