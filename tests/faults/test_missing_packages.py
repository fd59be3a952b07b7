"""A missing or broken optional package ends as exit 5 with the extra to install, never as an
internal error: the package itself absent, or an import failing deep inside it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.conftest import CliResult, assert_one_line_error, python_env, tvc
from tvc.deps import missing_dependency


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, num_labels=3,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("hf") / "tiny-vit"
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(path)
    return path


def absent(monkeypatch, module: str) -> None:
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if absent


def test_missing_transformers_names_the_hf_extra(monkeypatch, hf_dir, tmp_path):
    absent(monkeypatch, "transformers")
    res = tvc("compress", hf_dir, "--prune", "0.3", "-o", tmp_path / "out")
    assert_one_line_error(res, 5, r"'transformers'.*pip install 'tvc\[hf\]'")
    assert not (tmp_path / "out").exists()


def _raised_in(path: str, exc: ImportError) -> ImportError:
    """`exc` as raised by code whose source file is `path` (an installed package's file)."""
    try:
        exec(compile("raise exc", path, "exec"), {"exc": exc})
    except ImportError as raised:
        return raised
    raise AssertionError("not raised")


@pytest.mark.parametrize(
    "exc",
    [
        ImportError("cannot import name 'Dinov2Model' from 'transformers.models.dinov2'"),
        ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers"),
    ],
)
def test_an_import_failing_deep_inside_transformers_is_its_extra(exc):
    site = "/venv/lib/python3.11/site-packages/transformers/models/dinov2/modeling_dinov2.py"
    err = missing_dependency(_raised_in(site, exc))
    assert err is not None and err.exit_code == 5
    assert "'transformers'" in err.problem and "pip install 'tvc[hf]'" in err.fix


def test_an_import_error_of_tvc_itself_stays_a_bug():
    exc = _raised_in("/work/tvc/tvc/compress/prune.py", ImportError("cannot import name 'x'"))
    assert missing_dependency(exc) is None


HOOK = """
import importlib.abc, sys

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers.models.vit.modeling_vit":
            raise ImportError("libfoo.so: cannot open shared object file (simulated)")
        return None

sys.meta_path.insert(0, Broken())
from tvc.cli.main import main
sys.argv = ["tvc", *sys.argv[1:]]
main()
"""


def test_a_submodule_of_transformers_failing_to_import_is_exit_5(hf_dir, tmp_path):
    """In a fresh interpreter, transformers' own lazy import of the ViT modeling module raises
    a plain ImportError: the command still ends with one line and the extra to install."""
    run = subprocess.run(
        [sys.executable, "-c", HOOK, "export", str(hf_dir), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, env=python_env(), timeout=300,
    )  # fmt: skip
    res = CliResult(run.returncode, run.stdout, run.stderr)
    assert_one_line_error(res, 5, r"'transformers'.*libfoo.*pip install 'tvc\[hf\]'")
    assert not (tmp_path / "o").exists()
