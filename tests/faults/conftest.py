"""Shared fixtures of the fault suite: one tiny model artifact, its ONNX export, a weights file, an
image folder and a COCO set, built once per session; each case works on its own copy."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

LEFTOVER = re.compile(r"\.(staging|old|tmp|probe)-")


@dataclass
class Workspace:
    """One case's files: copies of the session's fixtures under `root`."""

    root: Path
    extra: dict = field(default_factory=dict)

    @property
    def model(self) -> Path:  # a model artifact (vit_pico, 2 classes, 32 px)
        return self.root / "model"

    @property
    def onnx(self) -> Path:  # its ONNX export artifact
        return self.root / "onnx"

    @property
    def weights(self) -> Path:  # weights of the plain vit_pico (10 classes), safetensors
        return self.root / "w.safetensors"

    @property
    def folder(self) -> Path:  # an ImageFolder: 2 classes x 4 PNGs of 32x32
        return self.root / "folder"

    @property
    def coco(self) -> Path:  # a COCO directory: 2 images of 64x64, one box each
        return self.root / "coco"

    def p(self, name: str) -> str:
        return str(self.root / name)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (symlinks by target), by relative path."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_symlink():
            out[p.relative_to(root).as_posix()] = "->" + os.readlink(p)
    return out


def leftovers(*dirs: Path) -> list[str]:
    """Staging directories, old copies, temp files and probes anywhere under `dirs`."""
    found = []
    for d in dirs:
        if d.exists():
            found += [str(p) for p in d.rglob(".*") if LEFTOVER.search(p.name)]
    return found


def _png(path: Path, seed: int, size: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def write_coco(root: Path, *, boxes=None, file_names=None, **overrides) -> Path:
    """A valid COCO directory (annotations.json + images/); fields can be overridden."""
    boxes = boxes or [[4, 4, 20, 20], [10, 12, 30, 16]]
    file_names = file_names or ["images/a.png", "images/b.png"]
    for i, _ in enumerate(file_names):
        _png(root / "images" / f"{'ab'[i]}.png", i, 64)
    coco = {
        "images": [
            {"id": i + 1, "file_name": f, "width": 64, "height": 64}
            for i, f in enumerate(file_names)
        ],
        "annotations": [
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": b, "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    coco.update(overrides)
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="session")
def fault_base(tmp_path_factory) -> Path:
    """Built once: model/, onnx/, w.safetensors, folder/, coco/."""
    import torch
    from safetensors.torch import save_file

    from tvc.export.onnx import OnnxExportConfig
    from tvc.models import load_model
    from tvc.models.load import write_model_artifact
    from tvc.stages.export import export_loaded

    base = tmp_path_factory.mktemp("faults-base")
    torch.manual_seed(0)
    # two classes, like the image folder, so the artifact can be evaluated and distilled on it
    loaded = load_model("vit_pico", num_classes=2, warn_random=False)
    write_model_artifact(loaded, base / "model", spec={"stage": "fixture"}, metrics={})
    # weights for the plain `vit_pico` name (10 classes)
    plain = load_model("vit_pico", warn_random=False).model
    save_file({k: v.contiguous() for k, v in plain.state_dict().items()},
              str(base / "w.safetensors"))  # fmt: skip
    export_loaded(
        load_model(str(base / "model")), base / "onnx", OnnxExportConfig(dynamic_batch=True)
    )
    for c in ("cat", "dog"):
        for i in range(4):
            _png(base / "folder" / c / f"{i}.png", hash((c, i)) % 1000)
    write_coco(base / "coco")
    return base


@pytest.fixture
def ws(fault_base, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(fault_base, root, symlinks=True)
    return Workspace(root)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def tvc(*args: str) -> CliResult:
    """Run `tvc ARGS` in this process (the import of torch is paid once per session)."""
    import logging

    from click.testing import CliRunner

    from tvc.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="tvc")
    logging.getLogger("tvc").setLevel(logging.ERROR)  # the command set it; keep tests quiet
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(res: CliResult, code: int, pattern: str) -> str:
    """Exit `code`, and stderr ends with exactly one `error: what; how to fix` line matching
    `pattern`; no traceback, no internal error."""
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.code == code, f"exit {res.code}, expected {code}: {res.stderr[-600:]}"
    assert len(err_lines) == 1, res.stderr[-600:]
    line = err_lines[0]
    assert res.stderr.rstrip().splitlines()[-1] == line, res.stderr[-600:]
    assert "Traceback" not in res.stderr and "bug in tvc" not in line, line
    assert re.match(r"^error: .+; .+$", line), line
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    return line


def python_env() -> dict[str, str]:
    """The environment for a child `python` that imports this checkout's tvc."""
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                       capture_output=True)  # fmt: skip
    return r.returncode == 0
