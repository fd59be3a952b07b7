"""Safe loading of weight files: safetensors, or torch state dicts with weights_only=True."""

from __future__ import annotations

from pathlib import Path

from tvc.errors import WeightsError

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}


def read_state_dict(path: str | Path) -> dict:
    """Read a state dict without executing code: safetensors, or torch.load(weights_only=True)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist", "check the --weights path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({exc})",
                "re-save the weights with safetensors.torch.save_file",
            ) from exc
    if path.suffix not in _TORCH_SUFFIXES:
        raise WeightsError(
            f"unsupported weights format '{path.suffix}' for {path}",
            "use a .safetensors file or a torch state dict (.pth/.pt/.bin)",
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise WeightsError(
            f"{path} cannot be loaded safely as a state dict ({first})",
            "tvc never unpickles code: save weights with torch.save(model.state_dict()) "
            "or as safetensors",
        ) from exc
    # Training checkpoints nest the weights.
    for key in ("model", "state_dict", "model_state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors",
            "save weights with torch.save(model.state_dict())",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model, state_dict: dict, source: str) -> None:
    """Load with strict=True and explain a mismatch in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {wrong[0]})")
        raise WeightsError(
            f"weights from {source} do not fit the architecture: {'; '.join(parts)}",
            "pass the model name these weights were trained with (and --num-classes if needed)",
        )
    model.load_state_dict(state_dict, strict=True)
