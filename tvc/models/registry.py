"""Model names users type: timm names, short aliases, and tvc's own small configurations.

Each entry resolves to a timm architecture plus keyword overrides, which is also exactly what an
artifact records to rebuild the model later (no pickled modules).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from tvc.errors import ModelNotFoundError

# Short names people use for the standard ViT/DeiT checkpoints.
ALIASES: dict[str, str] = {
    "vit_ti16": "vit_tiny_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_s16": "vit_small_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_b16": "vit_base_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_b32": "vit_base_patch32_224",
    "vit_l16": "vit_large_patch16_224",
    "vit_large": "vit_large_patch16_224",
    "deit_ti": "deit_tiny_patch16_224",
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_s": "deit_small_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_b": "deit_base_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_ti_distilled": "deit_tiny_distilled_patch16_224",
    "deit_s_distilled": "deit_small_distilled_patch16_224",
    "deit_b_distilled": "deit_base_distilled_patch16_224",
}


@dataclass(frozen=True)
class SmallConfig:
    """A ViT small enough to train on a CPU in minutes, for 28-32 px images."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_SMALL_VIT = {"img_size": 32, "patch_size": 4, "num_classes": 10, "in_chans": 3}
# Grayscale data is expanded to 3 channels, so all configs take RGB input.
SMALL_CONFIGS: dict[str, SmallConfig] = {
    "vit_pico": SmallConfig(
        "vit_tiny_patch16_224",
        {**_SMALL_VIT, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0},
        "2 blocks, width 64, 4 heads: ~0.1 M params; for tests",
    ),
    "vit_nano": SmallConfig(
        "vit_tiny_patch16_224",
        {**_SMALL_VIT, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0},
        "4 blocks, width 128, 4 heads: ~0.55 M params; the demo's student-sized ViT",
    ),
    "vit_fmnist": SmallConfig(
        "vit_tiny_patch16_224",
        {**_SMALL_VIT, "embed_dim": 192, "depth": 6, "num_heads": 6, "mlp_ratio": 2.0},
        "6 blocks, width 192, 6 heads: ~1.8 M params; a Fashion-MNIST teacher",
    ),
    "deit_pico_distilled": SmallConfig(
        "deit_tiny_distilled_patch16_224",
        {**_SMALL_VIT, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0},
        "vit_pico with a DeiT distillation token; for tests",
    ),
    "deit_nano_distilled": SmallConfig(
        "deit_tiny_distilled_patch16_224",
        {**_SMALL_VIT, "embed_dim": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 2.0},
        "vit_nano with a DeiT distillation token",
    ),
}


@dataclass(frozen=True)
class Resolved:
    name: str  # what the user typed, canonicalised
    arch: str  # the timm architecture
    kwargs: dict[str, Any]


def timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def known_names() -> list[str]:
    return sorted({*ALIASES, *SMALL_CONFIGS, *timm_names()})


def resolve(name: str) -> Resolved:
    """Turn a model name or alias into a timm architecture; unknown names list the closest."""
    key = name.strip()
    if key in SMALL_CONFIGS:
        cfg = SMALL_CONFIGS[key]
        return Resolved(key, cfg.arch, dict(cfg.kwargs))
    arch = ALIASES.get(key.lower(), key)
    names = timm_names()
    if arch in names:
        return Resolved(arch, arch, {})
    # timm also accepts "arch.pretrained_tag"
    if "." in arch and arch.split(".")[0] in names:
        return Resolved(arch, arch.split(".")[0], {})
    close = difflib.get_close_matches(key.lower(), [*ALIASES, *SMALL_CONFIGS, *names], n=5)
    hint = f"did you mean: {', '.join(close)}?" if close else "run 'tvc models' to list names"
    raise ModelNotFoundError(
        f"unknown model '{name}' (not a timm name, alias, tvc config, directory or artifact)",
        hint,
    )
