"""Tiny LSTR models and a few rendered road scenes, shared by the lane tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def pico_lstr():
    """lstr_pico (~60 k params, 64x36 input), random weights."""
    import torch

    from tvc.models import load_model

    torch.manual_seed(0)
    return load_model("lstr_pico", warn_random=False)


@pytest.fixture(scope="session")
def scenes():
    """12 built-in test scenes (128x72)."""
    from tvc.data.lanes_synth import make_synthetic

    return make_synthetic("test", 12)
