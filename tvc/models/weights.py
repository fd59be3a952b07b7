"""Safe loading of weight files: safetensors, torch state dicts with weights_only=True, and the
original JAX/Flax ViT checkpoints (.npz, read by numpy without pickles)."""

from __future__ import annotations

from pathlib import Path

from tvc.errors import WeightsError
from tvc.finite import check_finite_state

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
NPZ = ".npz"  # Google's ViT checkpoints (ViT-B_16.npz, AugReg), as timm reads them
_NPZ_PREFIXES = ("", "params/", "opt/target/")  # layouts timm's reader knows


def load_failure(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words. torch's own message
    suggests weights_only=False, which would run the file's code: never quote that advice."""
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
        return "it holds pickled objects other than tensors, which tvc never runs"
    if isinstance(exc, EOFError) or "EOF" in text or "truncated" in text.lower():
        return "the file is truncated"
    first = (text.strip().splitlines() or [type(exc).__name__])[0]
    return first[:160]


def read_state_dict(path: str | Path) -> dict:
    """Read a state dict without executing code: safetensors, or torch.load(weights_only=True)."""
    import torch

    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(
                f"{path} is not a readable safetensors file ({load_failure(exc)})",
                "re-save the weights with safetensors.torch.save_file",
            ) from exc
    if path.suffix not in _TORCH_SUFFIXES:
        raise WeightsError(
            f"unsupported weights format '{path.suffix}' for {path}",
            "use a .safetensors file, a torch state dict (.pth/.pt/.bin) or a JAX ViT .npz",
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path} cannot be loaded safely as a state dict ({load_failure(exc)})",
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
    # integer tensors where the model holds floats would be cast to mostly-zero weights
    ints = [
        k
        for k, t in own.items()
        if k in state_dict
        and t.is_floating_point()
        and hasattr(state_dict[k], "is_floating_point")
        and not state_dict[k].is_floating_point()
    ]
    if ints and not (missing or unexpected or wrong):
        dtype = str(state_dict[ints[0]].dtype).replace("torch.", "")
        raise WeightsError(
            f"weights from {source} hold integer tensors where the model has floats "
            f"({len(ints)}, e.g. {ints[0]} is {dtype})",
            "save the float weights of the trained model (torch.save(model.state_dict()))",
        )
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
    check_finite_state(state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def npz_classes(path: str | Path) -> int | None:
    """The class count of a JAX/Flax ViT checkpoint's head, None if it has no head; a file
    numpy cannot read without pickles is a one-line WeightsError."""
    import numpy as np

    _check_file(Path(path))
    try:
        with np.load(path, allow_pickle=False) as w:
            for prefix in _NPZ_PREFIXES:
                if f"{prefix}head/bias" in w.files:
                    return int(w[f"{prefix}head/bias"].shape[-1])
    except (OSError, ValueError, EOFError) as exc:
        raise WeightsError(
            f"{path} is not a readable .npz checkpoint ({load_failure(exc)})",
            "download the checkpoint again; tvc reads .npz files without pickles",
        ) from exc
    return None


def load_npz(model, path: str | Path) -> None:
    """Load a JAX/Flax ViT checkpoint into a timm VisionTransformer with timm's own reader
    (which maps the layouts, resamples the position table and patch kernel to the model's
    size) and check the result is finite."""
    import torch

    load = getattr(model, "load_pretrained", None)
    if load is None:
        raise WeightsError(
            f"{path} is a JAX/Flax .npz checkpoint, which tvc reads into timm ViTs only, not "
            f"{type(model).__name__}",
            "pass the ViT architecture it was trained as (e.g. vit_base_patch16_224)",
        )
    try:
        with torch.no_grad():
            load(str(path))
    except (KeyError, ValueError, RuntimeError, OSError, IndexError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else load_failure(exc)
        raise WeightsError(
            f"weights from {path} do not fit the architecture ({what})",
            "pass the model name these weights were trained with",
        ) from exc
    check_finite_state(model.state_dict(), str(path))


def _check_file(path: Path) -> None:
    """A weights file that is missing, unreadable or empty is a one-line WeightsError."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist", "check the --weights path")
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror})", "check its permissions") from exc
    if size == 0:
        raise WeightsError(
            f"weights file {path} is empty (0 bytes)",
            "the file was cut short: copy or save the weights again",
        )
