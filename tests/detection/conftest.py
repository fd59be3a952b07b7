"""Tiny detectors built in code (random weights, 64x64 input), shared by the detection tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_detr():
    """detr_pico (~0.2 M params) at 64x64."""
    import torch

    from tvc.models import load_model

    torch.manual_seed(0)
    return load_model("detr_pico", input_size=64, warn_random=False)


@pytest.fixture(scope="session")
def tiny_deformable():
    """deformable_detr_pico (~0.26 M params, 3 feature levels) at 64x64."""
    import torch

    from tvc.models import load_model

    torch.manual_seed(0)
    return load_model("deformable_detr_pico", input_size=64, warn_random=False)
