"""Shared fixtures: tiny models built in code, CPU only, offline."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _quiet_single_thread():
    import torch

    torch.set_num_threads(1)
    logging.getLogger("tvc").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="session")
def pico():
    """A 75 k-parameter ViT (2 blocks, width 64, 4 heads, 32x32 input, 10 classes)."""
    import torch

    from tvc.models import load_model

    torch.manual_seed(0)
    return load_model("vit_pico", warn_random=False)


@pytest.fixture(scope="session")
def pico_onnx(tmp_path_factory, pico):
    """vit_pico exported to an ONNX artifact with a dynamic batch."""
    from tvc.export.onnx import OnnxExportConfig
    from tvc.stages.export import export_loaded

    out = tmp_path_factory.mktemp("pico") / "exported"
    return export_loaded(pico, out, OnnxExportConfig(dynamic_batch=True))
