"""Distillation faults: a diverging run, a truncated or NaN teacher-logit cache, a teacher with
NaN weights, and optional packages that are missing."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.faults.conftest import Workspace, assert_one_line_error, leftovers, snapshot, tvc
from tests.faults.test_cli_faults import poison, rehash, set_weights


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TVC_CACHE_DIR", str(root))
    return root / "teacher-logits"


def _distill(ws: Workspace, out: str, *extra: str):
    return tvc("compress", ws.model, "--prune", "0.25", "--distill", ws.model, "--data", ws.folder,
               "--epochs", "1", "--batch-size", "2", "--limit", "8", "--eval-limit", "2",
               "-o", ws.p(out), *extra)  # fmt: skip


def _finite(art: Path) -> bool:
    from safetensors.numpy import load_file

    return all(np.isfinite(v).all() for v in load_file(str(art / "weights.safetensors")).values())


def test_diverging_distillation_exits_6_and_writes_nothing(ws: Workspace, cache: Path) -> None:
    before = snapshot(ws.root)
    res = _distill(ws, "s", "--lr", "1e12")
    assert_one_line_error(res, 6, r"NaN/Inf.*lower --lr")
    assert snapshot(ws.root) == before and not leftovers(ws.root)


@pytest.mark.parametrize("damage", ["truncated", "nan", "garbage"])
def test_a_damaged_teacher_cache_is_recomputed_not_trusted(
    ws: Workspace, cache: Path, damage: str
) -> None:
    first = _distill(ws, "s1")
    assert first.code == 0, first.stderr[-600:]
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 1
    good = np.load(files[0])
    if damage == "truncated":
        files[0].write_bytes(files[0].read_bytes()[:100])
    elif damage == "nan":
        np.save(files[0], np.full_like(good, math.nan))
    else:
        files[0].write_bytes(b"\x00" * 64)
    res = _distill(ws, "s2")
    assert res.code == 0, res.stderr[-600:]
    assert "ignoring the teacher-logit cache" in res.stderr
    np.testing.assert_array_equal(np.load(files[0]), good)  # rewritten, whole again
    assert _finite(ws.root / "s2")
    assert not leftovers(ws.root, cache.parent)


def test_a_teacher_with_nan_weights_is_refused(ws: Workspace, cache: Path) -> None:
    teacher = ws.root / "teacher"
    import shutil

    shutil.copytree(ws.model, teacher)
    set_weights(teacher / "weights.safetensors", poison(math.nan))
    rehash(teacher)
    before = snapshot(ws.root)
    res = tvc("compress", ws.model, "--prune", "0.25", "--distill", teacher, "--data", ws.folder,
              "--epochs", "1", "--batch-size", "2", "--limit", "8", "-o", ws.p("s"))  # fmt: skip
    assert_one_line_error(res, 6, r"NaN/Inf")
    assert snapshot(ws.root) == before and not leftovers(ws.root)


@pytest.mark.parametrize("module,extra", [("timm", "torch"), ("safetensors", "torch")])
def test_a_missing_optional_package_is_exit_5_with_the_install_command(
    ws: Workspace, monkeypatch, module: str, extra: str
) -> None:
    args = ["export", "vit_pico", "--weights", ws.weights, "-o", ws.p("o")]
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if absent
    before = snapshot(ws.root)
    res = tvc(*args)
    assert_one_line_error(res, 5, rf"'{module}'.*pip install 'tvc\[{extra}\]'")
    assert snapshot(ws.root) == before
