"""A Hugging Face ViT at another input size: position embeddings interpolated as its family does.

`resize_hf(model, size)` changes the image size a loaded HFClassifier takes, once, in its weights:
the absolute position table goes through the family's own `interpolate_pos_encoding` (ViT/DeiT
bicubic, DINOv2 bicubic with antialiasing: exactly what transformers does at run time with
`interpolate_pos_encoding=True`), BEiT's relative position bias tables are resized bilinearly as
`BeitRelativePositionBias` does, and the config's image_size follows, so the artifact rebuilds at
the new size and the ONNX graph has no resize in it. The families are those of
tvc.models.families.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tvc.errors import ConfigError, UnsupportedModelError


def _square(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def resize_hf(model: nn.Module, size: int) -> dict[str, Any] | None:
    """Make `model` (an HFClassifier) take `size` x `size` images; what changed, or None when
    it already does."""
    from tvc.models.families import family_of

    config = model.inner.config
    old, patch = _square(config.image_size), _square(config.patch_size)
    if size == old:
        return None
    if size % patch:
        near = max(patch, round(size / patch) * patch)
        raise ConfigError(
            f"--input-size {size} is not a multiple of the patch size {patch}",
            f"use e.g. --input-size {near}",
        )
    fam = family_of(model)
    backbone = _get(model, fam.backbone) if fam is not None and fam.style == "hf" else None
    embeddings = getattr(backbone, "embeddings", None)
    if embeddings is None:
        raise UnsupportedModelError(
            f"tvc cannot change the input size of a Hugging Face {config.model_type} model",
            f"drop --input-size (its size is {old}), or use a ViT, DeiT, DINOv2 or BEiT model",
        )
    grid = size // patch
    changed: dict[str, Any] = {"from": old, "to": size}
    with torch.no_grad():
        table = getattr(embeddings, "position_embeddings", None)
        if isinstance(table, nn.Parameter):
            prefix = table.shape[1] - (old // patch) ** 2
            probe = table.new_zeros(1, prefix + grid * grid, table.shape[-1])
            new = embeddings.interpolate_pos_encoding(probe, size, size)
            embeddings.position_embeddings = nn.Parameter(new.detach().clone())
            changed["position_embeddings"] = [list(table.shape), list(new.shape)]
        rel = [m for m in model.modules() if hasattr(m, "relative_position_bias_table")]
        for m in rel:
            _resize_relative(m, (grid, grid))
        if rel:
            changed["relative_position_bias_tables"] = len(rel)
    for m in model.modules():  # the modules that check or derive from the image size
        value = getattr(m, "image_size", None)
        if isinstance(value, (list, tuple)) and list(value) == [old, old]:
            m.image_size = type(value)((size, size))
        elif value == old and not isinstance(value, bool):
            m.image_size = size
        if m is not model and getattr(m, "num_patches", None) == (old // patch) ** 2:
            m.num_patches = grid * grid
    config.image_size = size
    return changed


def _resize_relative(m: nn.Module, window: tuple[int, int]) -> None:
    """BEiT's relative position bias table for another window, interpolated as
    BeitRelativePositionBias.forward does (bilinear over the (2W-1) x (2H-1) grid of relative
    offsets; the three class-token entries kept)."""
    old_h, old_w = (2 * w - 1 for w in m.window_size)
    new_h, new_w = (2 * w - 1 for w in window)
    table = m.relative_position_bias_table
    heads = table.shape[-1]
    sub = table[: old_h * old_w].reshape(1, old_w, old_h, heads).permute(0, 3, 1, 2)
    sub = nn.functional.interpolate(sub, size=(new_h, new_w), mode="bilinear")
    sub = sub.permute(0, 2, 3, 1).reshape(new_h * new_w, heads)
    new = torch.cat([sub, table[old_h * old_w :]])
    m.relative_position_bias_table = nn.Parameter(new.detach().clone())
    m.window_size = window
    m.num_relative_distance = new_h * new_w + 3


def _get(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part, None)
    return obj
