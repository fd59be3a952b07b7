import numpy as np
import torch

from tvc.train.kd import soft_kd
from tvc.train.set_loss import pair_index


def test_soft_kd_is_t_squared_kl_of_the_softened_rows_and_zero_on_agreement():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    temp = 3.0
    p, q = (t / temp).softmax(-1), (s / temp).softmax(-1)
    by_hand = (p * (p.log() - q.log())).sum(-1).mean() * temp**2
    assert torch.allclose(soft_kd(s, t, temp), by_hand, atol=1e-6)
    assert float(soft_kd(t, t, temp)) < 1e-6
    assert float(soft_kd(s, t, temp)) > 0.01


def test_pair_index_flattens_per_image_matches_in_order():
    pairs = [
        (np.array([2, 0]), np.array([1, 3])),
        (np.zeros(0, np.int64),) * 2,
        (np.array([4]),) * 2,
    ]
    image, rows, cols = pair_index(pairs, "cpu")
    assert image.tolist() == [0, 0, 2]
    assert rows.tolist() == [2, 0, 4] and cols.tolist() == [1, 3, 4]
    assert rows.dtype == torch.long
