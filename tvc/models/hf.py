"""Hugging Face image classifiers (ViTForImageClassification and friends) from local directories."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from tvc.deps import require
from tvc.errors import ModelNotFoundError, WeightsError, first_line

log = logging.getLogger("tvc")


class HFClassifier(nn.Module):
    """Wraps a transformers image classifier so forward(pixels) returns logits, like timm."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.inner(pixel_values=pixel_values).logits


@contextlib.contextmanager
def static_position_embeddings(model: nn.Module) -> Iterator[None]:
    """While tracing for export: use a position table as it is when the input has exactly the
    tokens it was made for. transformers interpolates it unconditionally under tracing (DINOv2
    with registers through a bicubic antialiased resize that ONNX has no operator for); at the
    export's fixed image size that resize is the identity."""
    patched = []
    for m in model.modules():
        table = getattr(m, "position_embeddings", None)
        if not isinstance(table, nn.Parameter) or not hasattr(m, "interpolate_pos_encoding"):
            continue
        original = m.interpolate_pos_encoding

        def shortcut(embeddings, height, width, _original=original, _m=m):
            if embeddings.shape[1] == _m.position_embeddings.shape[1] and height == width:
                return _m.position_embeddings
            return _original(embeddings, height, width)

        m.interpolate_pos_encoding = shortcut
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.interpolate_pos_encoding


def family_statistics(model_type: str, path: Path) -> dict[str, Any]:
    """The normalisation of the family's released checkpoints, for a directory without a
    preprocessor_config.json; said on the terminal, since it is a guess about this model."""
    from tvc.models.families import HALF, family_of_model_type

    fam = family_of_model_type(model_type)
    label, mean, std = fam.stats if fam is not None else HALF
    whose = f"{fam.title}'s" if fam is not None else f"the default ({model_type})"
    log.warning(
        f"{path.name} has no preprocessor_config.json: using {whose} {label} statistics "
        f"(mean {list(mean)}, std {list(std)})"
    )
    return {"image_mean": list(mean), "image_std": list(std)}


@contextlib.contextmanager
def quiet(transformers) -> Iterator[None]:
    """transformers' own warnings and progress bars off for a while."""
    tl = transformers.utils.logging
    level, bars = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()


def say_what_is_new(path: Path, inner: nn.Module, missing: list[str], num_classes) -> None:
    """Say which weights the checkpoint lacked, so were initialised at random: the classifier
    (a backbone-only checkpoint such as ViTModel or DINOv2: predictions mean nothing until it
    is trained; expected with --num-classes) or parts of the backbone (config and weights that
    do not belong together)."""
    backbone = f"{getattr(inner, 'base_model_prefix', '')}."
    body = [k for k in missing if k.startswith(backbone)]
    head = [k for k in missing if not k.startswith(backbone)]
    if head and num_classes is None:
        log.warning(
            f"{path.name} holds no weights for its head ({', '.join(head[:2])}): it is "
            f"initialised at random, so its predictions mean nothing until it is trained "
            f"(tvc train {path} --data D --num-classes N)"
        )
    if body:
        log.warning(
            f"{len(body)} backbone weights of {path.name} are not in its checkpoint (e.g. "
            f"{body[0]}) and are initialised at random: check that config.json and the weights "
            "belong together"
        )


def hf_build(config_dict: dict[str, Any]) -> HFClassifier:
    transformers = require("transformers", "Hugging Face models")
    cfg = dict(config_dict)
    model_type = cfg.pop("model_type")
    # The class within the model type (DeiT: with or without its teacher head) comes from
    # `architectures`; transformers needs a list there, even an empty one.
    cfg["architectures"] = cfg.get("architectures") or []
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    # Eager attention exports and prunes predictably.
    config._attn_implementation = "eager"
    inner = transformers.AutoModelForImageClassification.from_config(config)
    return HFClassifier(inner)


# what save_pretrained writes: one file, or shards listed by an index (large models)
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def require_hf_weights(path: Path) -> None:
    """Refuse a Hugging Face directory that holds a config.json but no weights."""
    if not any((path / n).is_file() for n in HF_WEIGHT_FILES):
        raise ModelNotFoundError(
            f"{path} has a config.json but no model.safetensors or pytorch_model.bin "
            "(nor a sharded model's index)",
            "save the weights with save_pretrained() into that directory",
        )


def hf_from_directory(path: Path, *, num_classes: int | None = None, input_size: int | None = None):
    from tvc.models.info import LoadedModel, ModelInfo, read_json

    transformers = require("transformers", "Hugging Face models")
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelNotFoundError(
            f"{path}/config.json names neither a transformers model_type nor a timm architecture",
            "save the model with save_pretrained() (transformers) or save_for_hf() (timm)",
        )
    from tvc.models.detection import DETECTION_TYPES, det_from_directory

    if cfg["model_type"] in DETECTION_TYPES:  # DETR / Deformable DETR
        return det_from_directory(path, num_classes=num_classes, input_size=input_size)
    config = transformers.AutoConfig.for_model(**cfg)
    if num_classes is not None:
        config.num_labels = num_classes
    config._attn_implementation = "eager"
    require_hf_weights(path)
    # from_pretrained maps older checkpoint key names onto the current modules; it reads
    # safetensors, or .bin with weights_only, never running code (trust_remote_code=False).
    try:
        with quiet(transformers):  # its load report is summed up below, in tvc's words
            inner, loading = transformers.AutoModelForImageClassification.from_pretrained(
                str(path),
                config=config,
                local_files_only=True,
                trust_remote_code=False,
                ignore_mismatched_sizes=num_classes is not None,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc, 200)
        raise WeightsError(
            f"cannot load the Hugging Face model in {path}: {first}",
            "check that config.json and the weights belong together",
        ) from exc
    say_what_is_new(path, inner, sorted(loading.get("missing_keys") or []), num_classes)
    model = HFClassifier(inner).eval()
    extra: dict[str, Any] = {}
    if input_size is not None:
        from tvc.models.resize import resize_hf

        resized = resize_hf(model, input_size)
        if resized is not None:
            extra["resized"] = resized
            log.info(f"{path.name}: input size {resized['from']} -> {input_size} px, position "
                     "embeddings interpolated as the family does")  # fmt: skip
    config_dict = inner.config.to_dict()
    weights = path
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        from tvc.models.preprocess import hf_preprocess

        proc = read_json(pre)
        if isinstance(proc, dict):
            extra["preprocess"] = hf_preprocess(proc)  # how its images were resized and cropped
    else:
        proc = family_statistics(config.model_type, path)
    size = _square(inner.config.image_size)
    info = ModelInfo(
        name=path.name,
        family="hf",
        arch=config.model_type,
        kwargs=config_dict,
        num_classes=int(config.num_labels),
        input_size=(int(config.num_channels), int(size), int(size)),
        mean=tuple(proc.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(proc.get("image_std", (0.5, 0.5, 0.5))),
        weights=str(weights),
        extra=extra,
    )
    return LoadedModel(model, info)


def _square(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
