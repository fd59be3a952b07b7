"""Small pieces of structured pruning shared by every family's pruner (DETR, LSTR, Image GPT)."""

from __future__ import annotations

import torch
from torch import nn


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new Linear holding `weight` (out x in) and `bias`: the kept rows / columns of a layer."""
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def keep_largest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the `n` largest scores, in their original order (so kept units stay in place)."""
    return torch.sort(torch.topk(scores, n).indices).values
