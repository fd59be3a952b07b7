"""How a pretrained checkpoint's images were prepared for evaluation, read from its timm
pretrained_cfg or Hugging Face preprocessor_config.json, into ModelInfo.extra["preprocess"]:
`crop_pct` (the centre crop's share of the resized image), `interpolation` and `squash`
(resized to a square rather than by the shorter side). Image folders are then read as the
checkpoint's authors read them (tvc.data.base.Preprocess), so a pretrained model's accuracy
matches its published one; tvc's own models have none and see the whole image.
"""

from __future__ import annotations

from typing import Any

from tvc.data.base import INTERPOLATIONS

_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # Hugging Face processors store PIL's codes


def timm_preprocess(cfg: dict[str, Any]) -> dict[str, Any]:
    """The crop and interpolation of a timm pretrained_cfg (what timm's validate.py uses)."""
    out: dict[str, Any] = {}
    crop = cfg.get("crop_pct")
    if isinstance(crop, (int, float)) and 0 < crop <= 1:
        out["crop_pct"] = float(crop)
    if cfg.get("interpolation") in INTERPOLATIONS:
        out["interpolation"] = cfg["interpolation"]
    if cfg.get("crop_mode") == "squash":
        out["squash"] = True
    return out


def hf_preprocess(proc: dict[str, Any]) -> dict[str, Any]:
    """The resize and crop of a Hugging Face image processor config: a `size` of height and
    width resizes to that square (ViT, DeiT, BEiT), `shortest_edge` by the shorter side
    (DINOv2, ConvNeXt); `crop_size` (with do_center_crop) or `crop_pct` gives the crop."""
    out: dict[str, Any] = {}
    if _PIL_RESAMPLE.get(proc.get("resample")):
        out["interpolation"] = _PIL_RESAMPLE[proc["resample"]]
    size = proc.get("size")
    if isinstance(size, int):  # processors saved by older transformers: square or shorter side
        size = {"height": size, "width": size} if _squares(proc) else {"shortest_edge": size}
    if not isinstance(size, dict):
        return out
    if _positive(size.get("height")) and _positive(size.get("width")):
        out["squash"], resized = True, int(size["height"])
    elif _positive(size.get("shortest_edge")):
        resized = int(size["shortest_edge"])
    else:
        return out
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop}
    if _in_unit(proc.get("crop_pct")) and not out.get("squash"):
        out["crop_pct"] = float(proc["crop_pct"])  # ConvNeXt: resize to edge/crop_pct, crop
    elif isinstance(crop, dict) and _positive(crop.get("height")) and crop["height"] < resized:
        out["crop_pct"] = crop["height"] / resized
    return out


def _squares(proc: dict[str, Any]) -> bool:
    """Whether the processor reads a bare `size: N` as an N x N square (ViT, DeiT and BEiT
    processors do; Bit (DINOv2), ConvNeXt and CLIP read the shorter side)."""
    kind = str(proc.get("image_processor_type") or proc.get("feature_extractor_type") or "")
    return kind.startswith(("ViT", "DeiT", "Beit", "BEiT"))


def _positive(value: Any) -> bool:
    return isinstance(value, int) and value > 0


def _in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and 0 < value <= 1
