"""Data-driven channel importance without labels: feature-matching Fisher (Optimal Brain Damage).

Pruning a channel perturbs its weights by -w. On a self-distillation loss
L(theta) = E_x ||f_theta(x) - f_parent(x)||^2 (f: the model's output: a classifier's logits, or
the pooled features of a model without a classifier), the loss is
0 with zero gradient at the parent, so its second-order term decides: removing weights w costs
about 1/2 * sum_i H_ii * w_i^2, with H = 2 E[J^T J] (Gauss-Newton). The diagonal of J^T J is
estimated without forming J: with a random +-1 vector r per image and feature dimension,
E_r[(d (r . f(x)) / d theta)^2] = sum_k (d f_k(x) / d theta)^2. So a few backward passes of
r . f(x) on unlabelled calibration images give every parameter's curvature F, and a channel's
importance is the sum of F * w^2 over every weight (and bias) the channel's group removes.

Measured (benchmarks/results/prune_importance.md): matching the logits kept more of the parent's
predictions and pooled features than matching the pre-logit features (Fashion-MNIST teacher, 30%,
top-1 agreement 0.72 vs 0.66 over three seeds); both beat magnitude and random.

Why not torch-pruning's GroupHessianImportance: its accumulate_grad mixes names and parameters
as dict keys (the per-parameter counters never accumulate), so the scores are computed here and
fed to the dependency graph through FisherImportance, a torch-pruning Importance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tvc.errors import ConfigError, DataError

PROJECTIONS = 4  # random sign vectors per batch


def feature_fisher(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    seed: int = 0,
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-parameter mean squared gradient of random projections of `model`'s output over
    `batches` of images: the diagonal of E[J^T J]. Labels are not used."""
    if not batches:
        raise ConfigError(
            "data importance needs a few batches of images",
            "pass --data DATA, or use --importance magnitude",
        )
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = {p: torch.zeros_like(p) for p in params}
    gen = torch.Generator().manual_seed(seed)
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for x in batches:
                for _ in range(PROJECTIONS):
                    model.zero_grad(set_to_none=True)
                    feats = model(x)
                    signs = torch.randint(0, 2, feats.shape, generator=gen).to(feats) * 2 - 1
                    (feats * signs).sum().backward()
                    for p in params:
                        if p.grad is not None:
                            fisher[p] += p.grad.detach().pow(2)
                    count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for p in params:
        fisher[p] /= count
        if not torch.isfinite(fisher[p]).all():
            raise DataError(
                "the feature gradients on the calibration images are not finite",
                "check the data and the model's weights, or use --importance magnitude",
            )
    return fisher


def fisher_importance(fisher: dict[nn.Parameter, torch.Tensor]):
    """A torch-pruning Importance scoring channels by sum(F * w^2) over their group."""
    from tvc.deps import require

    tp = require("torch_pruning", "structured pruning")
    fn = tp.pruner.function

    class FisherImportance(tp.importance.GroupMagnitudeImportance):
        def __init__(self) -> None:
            super().__init__(p=2, group_reduction="sum", normalizer=None)

        def _curv(self, w: nn.Parameter) -> torch.Tensor:
            f = fisher.get(w)
            return torch.zeros_like(w) if f is None or f.shape != w.shape else f

        def _terms(self, layer: nn.Module, prune_fn, idxs: list[int]) -> list[torch.Tensor]:
            w = layer.weight
            if prune_fn in (fn.prune_linear_out_channels, fn.prune_conv_out_channels):
                cost = (w.detach() ** 2 * self._curv(w))[idxs].flatten(1).sum(1)
                out = [cost]
                if layer.bias is not None:
                    b = layer.bias
                    out.append((b.detach() ** 2 * self._curv(b))[idxs])
                return out
            if prune_fn in (fn.prune_linear_in_channels, fn.prune_conv_in_channels):
                cost = (w.detach() ** 2 * self._curv(w)).transpose(0, 1).flatten(1).sum(1)
                return [cost[idxs]]
            if prune_fn == fn.prune_layernorm_out_channels and layer.elementwise_affine:
                out = [(w.detach() ** 2 * self._curv(w))[idxs]]
                if layer.bias is not None:
                    out.append((layer.bias.detach() ** 2 * self._curv(layer.bias))[idxs])
                return out
            return []

        @torch.no_grad()
        def __call__(self, group) -> torch.Tensor | None:
            imps, roots = [], []
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
                    continue
                if isinstance(layer, nn.Conv2d) and layer.groups != 1:
                    continue
                for term in self._terms(layer, dep.pruning_fn, list(idxs)):
                    imps.append(term)
                    roots.append(group[i].root_idxs)
            if not imps:
                return None
            return self._reduce(imps, roots)

    return FisherImportance()
