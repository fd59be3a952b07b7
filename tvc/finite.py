"""Checks that weights and outputs hold only finite numbers.

A diverged training run (a learning rate far too high, a NaN in a teacher's logits) or a corrupt
weights file yields NaN/Inf weights that still save, export and "evaluate" to a number. Each
stage that makes or takes weights calls these, so such a model ends in `NonFiniteError` (exit 6)
instead of being reported as a success.
"""

from __future__ import annotations

from typing import Any

from tvc.errors import NonFiniteError

_FIX = {
    "training": "lower --lr (or --grad-clip) and train again",
    "distillation": "lower --lr, check the teacher's outputs, and distil again",
    "calibration": "calibrate a model whose weights are finite, with real images",
    "export": "export a model whose weights are finite",
    "weights": "these weights are corrupt or come from a diverged run: use another file",
}


def _fix(who: str, fix: str | None) -> str:
    return fix or _FIX.get(who.split()[0], "check the model and its inputs")


def check_finite_model(model: Any, who: str, fix: str | None = None) -> None:
    """Raise NonFiniteError when a parameter or buffer of a torch module holds NaN/Inf."""
    import torch

    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise NonFiniteError(f"{who} left NaN/Inf in the weights ({name})", _fix(who, fix))


def check_finite_state(state: dict, source: str, fix: str | None = None) -> None:
    """Raise NonFiniteError when a tensor of a state dict read from `source` holds NaN/Inf."""
    import torch

    for name, t in state.items():
        floating = hasattr(t, "is_floating_point") and t.is_floating_point()
        if floating and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(
                f"the weights in {source} hold NaN/Inf ({name})", _fix("weights", fix)
            )


def check_finite_array(arr: Any, who: str, fix: str | None = None) -> None:
    """Raise NonFiniteError when an array or tensor (outputs, logits, a loss) holds NaN/Inf."""
    import numpy as np

    if hasattr(arr, "detach"):
        arr = arr.detach().float().cpu().numpy()
    a = np.asarray(arr)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise NonFiniteError(f"{who} holds NaN/Inf ({bad} of {a.size} values)", _fix(who, fix))
