"""DETR's set loss: Hungarian matching of queries to objects and the losses on matched pairs.

Queries are paired one-to-one with ground-truth objects by scipy's linear_sum_assignment over a
class + L1 + GIoU cost; L1 and GIoU box losses are added over the matched pairs, and a class loss
over all queries: cross-entropy with a down-weighted "no object" class (DETR, softmax) or a
sigmoid focal loss (Deformable DETR, which has no "no object" column). Boxes are normalised
[cx, cy, w, h], as the models predict them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tvc.deps import require
from tvc.errors import NonFiniteError

# --------------------------------------------------------------------------------- box maths


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU and union of xyxy boxes: (len(a), len(b)) each."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-9), union


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes, in [-1, 1]: IoU minus the empty share of the enclosing box."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = (wh[..., 0] * wh[..., 1]).clamp(min=1e-9)
    return iou - (enclosing - union) / enclosing


# ---------------------------------------------------------------------------------- matching


@dataclass
class SetLossConfig:
    """Weights of DETR's matching cost and loss (the paper's: class 1, L1 5, GIoU 2)."""

    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    eos_coef: float = 0.1  # weight of the "no object" class in the cross-entropy (DETR)
    focal_alpha: float = 0.25  # sigmoid focal loss (Deformable DETR)
    focal_gamma: float = 2.0


def _class_cost(
    logits: torch.Tensor, labels: torch.Tensor, no_object_class: bool, cfg: SetLossConfig
) -> torch.Tensor:
    """(Q, T) cost of giving query q the class of target t: low when q is confident in it."""
    if no_object_class:
        return -logits.softmax(-1)[:, labels]
    # Deformable DETR's focal cost: the focal loss of calling it positive minus negative.
    p = logits.sigmoid()[:, labels]
    a, g = cfg.focal_alpha, cfg.focal_gamma
    pos = a * (1 - p) ** g * -(p + 1e-8).log()
    neg = (1 - a) * p**g * -(1 - p + 1e-8).log()
    return pos - neg


def match_cost(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    target: dict[str, torch.Tensor],
    *,
    no_object_class: bool,
    cfg: SetLossConfig,
) -> torch.Tensor:
    """The (Q, T) matching cost of one image's queries against its targets."""
    labels, tboxes = target["labels"], target["boxes"]
    cost_bbox = torch.cdist(boxes, tboxes, p=1)
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tboxes))
    return (
        cfg.class_weight * _class_cost(logits, labels, no_object_class, cfg)
        + cfg.bbox_weight * cost_bbox
        + cfg.giou_weight * cost_giou
    )


@torch.no_grad()
def assign(cost: torch.Tensor | np.ndarray, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the minimum-cost one-to-one assignment of a cost matrix (scipy's
    linear_sum_assignment). NaN/Inf costs, from a model whose outputs went non-finite, are a
    NonFiniteError rather than scipy's 'cost matrix is infeasible'."""
    scipy_opt = require("scipy.optimize", purpose)
    cost = cost.detach().cpu().numpy() if isinstance(cost, torch.Tensor) else np.asarray(cost)
    if not np.isfinite(cost).all():
        raise NonFiniteError(
            "the model's outputs hold NaN/Inf (seen while matching predictions to targets)",
            "the run diverged or the weights are damaged: lower --lr, or check the weights",
        )
    rows, cols = scipy_opt.linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


def pair_index(
    pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image matches (rows, cols) flattened for indexing a batch: (image of each pair, its
    row, its col) as long tensors on `device`."""
    image = torch.cat(
        [torch.full((len(r),), i, dtype=torch.long) for i, (r, _) in enumerate(pairs)]
    )
    rows = torch.cat([torch.as_tensor(r, dtype=torch.long) for r, _ in pairs])
    cols = torch.cat([torch.as_tensor(c, dtype=torch.long) for _, c in pairs])
    return image.to(device), rows.to(device), cols.to(device)


def hungarian_match(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    *,
    no_object_class: bool,
    cfg: SetLossConfig | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, (query indices, target indices) of the minimum-cost one-to-one assignment."""
    cfg = cfg or SetLossConfig()
    out = []
    for lg, bx, tgt in zip(logits.float(), boxes.float(), targets, strict=True):
        if len(tgt["labels"]) == 0:
            out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        cost = match_cost(lg, bx, tgt, no_object_class=no_object_class, cfg=cfg)
        out.append(assign(cost, "Hungarian matching for detection training"))
    return out


# --------------------------------------------------------------------------------- set loss


def set_loss(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    *,
    no_object_class: bool,
    cfg: SetLossConfig | None = None,
    matches: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[torch.Tensor, dict[str, float], list[tuple[np.ndarray, np.ndarray]]]:
    """DETR's loss for a batch: (total, its parts, the matches used).

    logits (B, Q, K+1 with "no object" last, or K for sigmoid models), boxes (B, Q, 4) normalised
    cxcywh; targets: per image {"labels" (T,) int64, "boxes" (T, 4)}. Box losses are averaged
    over the batch's targets, as in DETR.
    """
    cfg = cfg or SetLossConfig()
    if matches is None:
        matches = hungarian_match(logits, boxes, targets, no_object_class=no_object_class, cfg=cfg)
    n_boxes = max(1, sum(len(t["labels"]) for t in targets))
    batch_idx, query_idx, _ = pair_index(matches, logits.device)
    matched_labels = torch.cat(
        [
            t["labels"][torch.as_tensor(c, dtype=torch.long)]
            for t, (_, c) in zip(targets, matches, strict=True)
        ]
    )
    matched_boxes = torch.cat(
        [
            t["boxes"][torch.as_tensor(c, dtype=torch.long)]
            for t, (_, c) in zip(targets, matches, strict=True)
        ]
    )
    batch, queries, n_logits = logits.shape
    if no_object_class:
        # Every query is "no object" unless matched; that class weighs eos_coef.
        target_classes = torch.full(
            (batch, queries), n_logits - 1, dtype=torch.long, device=logits.device
        )
        target_classes[batch_idx, query_idx] = matched_labels.to(logits.device)
        weight = torch.ones(n_logits, device=logits.device)
        weight[-1] = cfg.eos_coef
        loss_class = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight)
    else:
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, matched_labels.to(logits.device)] = 1.0
        loss_class = sigmoid_focal_loss(logits, onehot, cfg) / n_boxes
    pred = boxes[batch_idx, query_idx]
    matched_boxes = matched_boxes.to(pred)
    loss_bbox = F.l1_loss(pred, matched_boxes, reduction="sum") / n_boxes
    giou = generalized_box_iou(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(matched_boxes))
    loss_giou = (1 - torch.diag(giou)).sum() / n_boxes
    total = (
        cfg.class_weight * loss_class + cfg.bbox_weight * loss_bbox + cfg.giou_weight * loss_giou
    )
    parts = {"class": loss_class.item(), "bbox": loss_bbox.item(), "giou": loss_giou.item()}
    return total, parts, matches


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, cfg: SetLossConfig):
    """Summed focal loss (Lin et al.), the class loss of Deformable DETR."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** cfg.focal_gamma
    alpha_t = cfg.focal_alpha * targets + (1 - cfg.focal_alpha) * (1 - targets)
    return (alpha_t * loss).sum()


def targets_to_torch(targets: list[dict[str, np.ndarray]], device="cpu"):
    return [
        {
            "labels": torch.as_tensor(t["labels"], dtype=torch.long, device=device),
            "boxes": torch.as_tensor(t["boxes"], dtype=torch.float32, device=device),
        }
        for t in targets
    ]
