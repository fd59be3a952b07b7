"""The backend registry: loud lookups, one registration per backend, the install hint."""

from __future__ import annotations

import pytest

from tvc.deps import available
from tvc.errors import ConfigError, MissingDependencyError
from tvc.runtime import backends
from tvc.runtime.backends import get_backend, register_backend


@pytest.mark.parametrize(
    "name, hint", [("tr", "did you mean 'trt'?"), ("onnx", "backends: ort"), ("", "backends: ort")]
)
def test_unknown_or_empty_backend_lists_the_valid_ones(name, hint):
    with pytest.raises(ConfigError) as err:
        get_backend(name)
    assert "unknown backend" in err.value.message and hint in err.value.message
    assert "\n" not in err.value.message and err.value.exit_code == 2


@pytest.mark.skipif(available("tensorrt"), reason="TensorRT is installed here")
def test_trt_without_tensorrt_says_what_to_install():
    with pytest.raises(MissingDependencyError) as err:
        get_backend("trt")
    assert err.value.exit_code == 5 and "pip install 'tvc[trt]'" in err.value.message


def test_a_backend_is_one_registration(monkeypatch):
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    opened = []
    register_backend("fake", lambda v, **kw: opened.append((v, kw)), lambda: True,
                     variants=lambda target, kwargs: [target], needs="nothing",
                     install="nothing to install")  # fmt: skip
    fake = get_backend("fake")
    assert fake.variants("t", {}) == ["t"]
    fake.open("v", threads=2)
    assert opened == [("v", {"threads": 2, "provider": "cpu"})]
    with pytest.raises(ValueError, match="twice"):
        register_backend("fake", fake.opener, fake.available, variants=fake.variants,
                         needs="", install="")  # fmt: skip


def test_an_unavailable_backend_names_what_it_needs(monkeypatch):
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    register_backend("gone", lambda v, **kw: None, lambda: False, variants=lambda t, k: [],
                     needs="GoneRT", install="install it with: pip install gonert")  # fmt: skip
    with pytest.raises(MissingDependencyError, match=r"--backend gone needs GoneRT.*gonert"):
        get_backend("gone")


def test_the_bench_config_stands_for_its_command():
    from tvc.stages.bench import Config

    cfg = Config.parse({"target": "exported", "batch": [1, 8], "min_time_s": 0.0,
                        "pretrained": True})  # fmt: skip
    assert cfg.command_line() == "tvc bench exported --batch 1,8 --min-time-s 0.0 --pretrained"
    with pytest.raises(ConfigError, match="--batch values must be >= 1"):
        Config.parse({"target": "x", "batch": [1, 0]})
    with pytest.raises(ConfigError, match="--backend is empty"):
        Config.parse({"target": "x", "backend": []})
