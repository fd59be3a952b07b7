"""The soft knowledge-distillation term every task's training shares (classification, detection
queries, lane queries, next-pixel and class logits of Image GPT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft KD term on rows of logits: T^2 * KL(teacher || student) at temperature T,
    averaged over the rows (T^2 keeps its gradients the size of a hard-label loss's)."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return kl * (t * t)
