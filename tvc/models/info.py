"""What a loaded model is: its facts (ModelInfo, written into artifacts as 'model') and the pair
of module + facts (LoadedModel). No torch here.

The family loaders (timm in load.py, Hugging Face in hf.py, detectors in detection.py, ...)
all build these, and load.py dispatches to them: keeping the types in this leaf module lets
the loaders import them without importing load.py back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.errors import ModelNotFoundError

if TYPE_CHECKING:
    from tvc.artifact import Artifact
    from tvc.data.base import ImageSet

DETECTION_FAMILY = "hf-det"  # DETR and Deformable DETR through transformers


@dataclass
class ModelInfo:
    """Everything needed to rebuild the model and feed it: written into artifacts as 'model'."""

    name: str
    family: str  # "timm" or "hf"
    arch: str  # timm architecture, or the HF model_type
    kwargs: dict[str, Any]  # timm create_model overrides, or the HF config dict
    num_classes: int
    input_size: tuple[int, int, int]  # C, H, W
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str = "random"  # where the weights came from
    structure: dict[str, Any] | None = None  # shape changes from compression
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. distillation token present

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelInfo:
        d = dict(d)
        d["input_size"] = tuple(d["input_size"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module, in eval mode
    info: ModelInfo
    artifact: Artifact | None = None


def is_detector(loaded_or_info: LoadedModel | ModelInfo) -> bool:
    """True for a LoadedModel or ModelInfo of a detection model (decided from the facts alone,
    so it also answers for an exported model on a machine without torch)."""
    info = getattr(loaded_or_info, "info", loaded_or_info)
    return info.family == DETECTION_FAMILY or info.extra.get("task") == "detection"


def image_view(info: ModelInfo) -> dict[str, Any]:
    """load_images' keywords for this model: its input size and normalisation, and how its
    checkpoint's images were resized and cropped (extra["preprocess"], see
    tvc.models.preprocess; absent for tvc's own models, which see whole images)."""
    return {
        "input_size": tuple(info.input_size),
        "mean": tuple(info.mean),
        "std": tuple(info.std),
        **(info.extra.get("preprocess") or {}),
    }


def model_class_names(info: ModelInfo) -> list[str] | None:
    """What each output of a classifier means, where the model says: the class folders it was
    trained on (extra["class_names"], written by tvc train) or a Hugging Face config's
    id2label. None when unknown (timm's ImageNet heads, transformers' LABEL_i defaults)."""
    names = info.extra.get("class_names")
    if not names and isinstance(info.kwargs.get("id2label"), dict):
        try:
            labels = {int(k): str(v) for k, v in info.kwargs["id2label"].items()}
        except (TypeError, ValueError):
            return None
        names = [labels.get(i) for i in range(info.num_classes)]
        if None in names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return None
    if not isinstance(names, list) or len(names) != info.num_classes:
        return None  # e.g. a head replaced since the names were written
    return [str(n) for n in names]


def model_images(
    spec: str, split: str, info: ModelInfo, *, limit: int | None = None, seed: int = 0
) -> ImageSet:
    """Split `split` of the classification data `spec` as this model reads it: resized and
    normalised as `image_view` says, labelled in the model's classes (`model_class_names`)."""
    from tvc.data import load_images
    from tvc.data.classes import align_classes

    data = load_images(spec, split, limit=limit, seed=seed, **image_view(info))
    return align_classes(data, model_class_names(info))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"cannot read {path} ({exc})", "check the file") from exc
