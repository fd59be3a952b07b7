"""timm models saved as a Hugging Face Hub folder: what `huggingface-cli download timm/NAME`,
`timm.models.push_to_hub` or `save_for_hf` leave on disk. Their config.json names a timm
`architecture` (no transformers `model_type`), carries the checkpoint's `pretrained_cfg`
(its normalisation and input size, which can differ from the architecture's default tag) and
sometimes `model_args` (constructor overrides); the weights sit beside it as model.safetensors
or pytorch_model.bin. The model is built by timm and the weights read by tvc's safe reader,
exactly as `MODEL --weights FILE` would, so artifacts record it as an ordinary timm model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tvc.errors import ModelNotFoundError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm reads them in this order


def is_timm_config(cfg: Any) -> bool:
    """A timm Hub config.json: names an architecture, and no transformers model_type."""
    return isinstance(cfg, dict) and "architecture" in cfg and "model_type" not in cfg


def parse_timm_config(cfg: dict[str, Any], path: Path) -> tuple[str, dict[str, Any], dict]:
    """(architecture, create_model overrides, pretrained_cfg) of a timm Hub config.json, old
    single-dict layout (everything at the top level) included."""
    pretrained = cfg.get("pretrained_cfg", cfg)
    model_args = cfg.get("model_args") or {}
    arch = cfg["architecture"]
    if not isinstance(arch, str) or not isinstance(pretrained, dict):
        raise ModelNotFoundError(
            f"{path}/config.json is not a timm model config (architecture {arch!r})",
            "download the folder again, or pass the architecture name with --weights FILE",
        )
    if not isinstance(model_args, dict):
        raise ModelNotFoundError(
            f"{path}/config.json has model_args that are not a mapping ({model_args!r})",
            "download the folder again, or pass the architecture name with --weights FILE",
        )
    kwargs = dict(model_args)
    num_classes = cfg.get("num_classes", pretrained.get("num_classes"))
    if isinstance(num_classes, int) and num_classes >= 0:
        kwargs["num_classes"] = num_classes
    return arch.split(".")[0], kwargs, pretrained


def timm_weights_file(path: Path) -> Path:
    """The folder's weights file, or a one-line refusal naming what is missing."""
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ModelNotFoundError(
        f"{path} holds a timm config.json but no {' or '.join(WEIGHT_FILES)}",
        "download the weights into that folder too (huggingface-cli download timm/NAME)",
    )


def timm_from_directory(
    path: Path,
    cfg: dict[str, Any],
    *,
    num_classes: int | None,
    input_size: int | None,
):
    """Load a timm Hub folder as a LoadedModel (see the module docstring)."""
    from tvc.models import registry
    from tvc.models.load import timm_from_name

    arch, kwargs, pretrained = parse_timm_config(cfg, path)
    if arch not in registry.timm_names():
        import timm

        raise ModelNotFoundError(
            f"{path}/config.json names the timm architecture '{arch}', which timm "
            f"{timm.__version__} does not have",
            "upgrade timm (pip install -U timm), or check that the folder holds a timm model",
        )
    loaded = timm_from_name(
        registry.Resolved(path.name, arch, kwargs),
        weights=timm_weights_file(path),
        num_classes=num_classes,
        input_size=input_size,
        pretrained=False,
        warn_random=False,
    )
    # the checkpoint's own normalisation and crop, which the architecture's default tag may
    # not share
    from tvc.models.preprocess import timm_preprocess

    info = loaded.info
    info.extra["preprocess"] = timm_preprocess(pretrained)
    mean, std = pretrained.get("mean"), pretrained.get("std")
    if _three_numbers(mean) and _three_numbers(std) and min(std) > 0:
        info.mean = tuple(float(m) for m in mean)
        info.std = tuple(float(s) for s in std)
    labels = cfg.get("label_names")  # what save_for_hf writes when the model was given them
    if isinstance(labels, list) and len(labels) == info.num_classes:
        info.extra["class_names"] = [str(n) for n in labels]
    return loaded


def _three_numbers(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, (int, float)) for v in value)
    )
