"""Training and distillation of LSTR lane models with the paper's set loss.

LSTR predicts a fixed set of lane queries. The loss pairs queries with ground-truth lanes
one-to-one (Hungarian matching, scipy's linear_sum_assignment) on a cost of

    class_weight * (-p_lane) + curve_weight * mean |x_pred(y) - x_gt(y)| over the lane's rows
    + lower_weight * |lower - lower_gt| + upper_weight * |upper - upper_gt|

and then adds, over matched pairs, the same L1 terms (points, start, end) and, over all queries,
the lane / no-lane cross-entropy. Weights are the paper's (class 3, points 5, lower 2, upper 2).
Every decoder layer is supervised (auxiliary losses). Coordinates are normalised (x / W, y / H).

Distillation trains a (compressed) student against its teacher: the teacher's confident lanes
(its curve sampled on the rows it covers) are the set loss's targets; student queries matched
one-to-one to teacher queries (Hungarian on score and curve distance) also imitate the teacher's
lane scores (KL at a temperature) and, weighted by the teacher's lane probability, its curves
(L1 on points at fixed rows, start and end). With `label_weight` > 0 the data's own labels join in.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tvc.data.lanes import curve_x
from tvc.errors import ConfigError, DataError, NonFiniteError
from tvc.finite import check_finite_model
from tvc.progress import Progress
from tvc.train.kd import soft_kd
from tvc.train.set_loss import assign, pair_index

log = logging.getLogger("tvc")


@dataclass
class LaneLossConfig:
    class_weight: float = 3.0
    curve_weight: float = 5.0
    lower_weight: float = 2.0
    upper_weight: float = 2.0
    no_lane_weight: float = 1.0  # cross-entropy weight of the "no lane" class


def _points(curves: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """x of curves (..., 8) at rows ys (..., S), finite even where y meets the horizon f."""
    return torch.nan_to_num(curve_x(curves, ys), nan=0.0, posinf=10.0, neginf=-10.0)


def pad_targets(targets: list[dict[str, Any]], device="cpu") -> dict[str, torch.Tensor]:
    """A batch's lanes (LaneSet.target dicts, numpy or torch) as padded tensors: xs, ys, valid
    (B, T, S), lower, upper, present (B, T); T and S are the batch's largest lane and row
    counts."""
    b = len(targets)
    t_max = max([len(t["xs"]) for t in targets] + [1])
    s_max = max([t["xs"].shape[-1] for t in targets if len(t["xs"])] + [1])
    out = {
        "xs": torch.zeros(b, t_max, s_max),
        "ys": torch.zeros(b, t_max, s_max),
        "valid": torch.zeros(b, t_max, s_max, dtype=torch.bool),
        "lower": torch.zeros(b, t_max),
        "upper": torch.zeros(b, t_max),
        "present": torch.zeros(b, t_max, dtype=torch.bool),
    }
    for i, t in enumerate(targets):
        n = len(t["xs"])
        if not n:
            continue
        s = t["xs"].shape[-1]
        for k in ("xs", "ys", "valid"):
            out[k][i, :n, :s] = torch.as_tensor(np.asarray(t[k]) if not torch.is_tensor(t[k])
                                                else t[k].cpu())  # fmt: skip
        out["lower"][i, :n] = torch.as_tensor(np.asarray(t["lower"]) if not torch.is_tensor(
            t["lower"]) else t["lower"].cpu())  # fmt: skip
        out["upper"][i, :n] = torch.as_tensor(np.asarray(t["upper"]) if not torch.is_tensor(
            t["upper"]) else t["upper"].cpu())  # fmt: skip
        out["present"][i, :n] = True
    return {k: v.to(device) for k, v in out.items()}


def batch_cost(logits: torch.Tensor, curves: torch.Tensor, tg: dict[str, torch.Tensor],
               cfg: LaneLossConfig) -> torch.Tensor:  # fmt: skip
    """The (B, Q, T) matching cost of every image's queries against its (padded) lanes."""
    prob = logits.softmax(-1)[..., 1]  # (B, Q)
    valid = tg["valid"].float()  # (B, T, S)
    px = _points(curves[:, :, None, :], tg["ys"][:, None])  # (B, Q, T, S)
    dist = ((px - tg["xs"][:, None]).abs() * valid[:, None]).sum(-1)
    dist = dist / valid.sum(-1).clamp(min=1)[:, None]
    cost_lower = (curves[:, :, None, 0] - tg["lower"][:, None]).abs()
    cost_upper = (curves[:, :, None, 1] - tg["upper"][:, None]).abs()
    return (
        -cfg.class_weight * prob[..., None]
        + cfg.curve_weight * dist
        + cfg.lower_weight * cost_lower
        + cfg.upper_weight * cost_upper
    )


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, curves: torch.Tensor, tg: dict[str, torch.Tensor],
                    cfg: LaneLossConfig | None = None
                    ) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Per image, (query indices, lane indices) of the minimum-cost one-to-one assignment."""
    cfg = cfg or LaneLossConfig()
    cost = batch_cost(logits.float(), curves.float(), tg, cfg).cpu().numpy()
    counts = tg["present"].sum(1).tolist()
    out = []
    for i, n in enumerate(counts):
        if n == 0:
            out.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        out.append(assign(cost[i, :, :n], "Hungarian matching for lane training"))
    return out


def lane_loss(logits: torch.Tensor, curves: torch.Tensor, tg: dict[str, torch.Tensor],
              cfg: LaneLossConfig | None = None, matches=None
              ) -> tuple[torch.Tensor, dict[str, float], list]:  # fmt: skip
    """LSTR's loss for a batch: (total, parts, matches). logits (B, Q, 2), curves (B, Q, 8),
    `tg` the padded targets of `pad_targets`."""
    cfg = cfg or LaneLossConfig()
    if matches is None:
        matches = hungarian_match(logits, curves, tg, cfg)
    dev = logits.device
    b, q, _ = logits.shape
    bi = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, (r, _) in enumerate(matches)])
    qi = torch.cat([torch.as_tensor(r, dtype=torch.long) for r, _ in matches])
    ti = torch.cat([torch.as_tensor(c, dtype=torch.long) for _, c in matches])
    bi, qi, ti = bi.to(dev), qi.to(dev), ti.to(dev)
    labels = torch.zeros((b, q), dtype=torch.long, device=dev)
    labels[bi, qi] = 1
    weight = torch.tensor([cfg.no_lane_weight, 1.0], device=dev)
    loss_class = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), weight=weight)
    if len(bi):
        pred = curves[bi, qi]  # (M, 8)
        valid = tg["valid"][bi, ti].float()
        px = _points(pred, tg["ys"][bi, ti])
        err = ((px - tg["xs"][bi, ti]).abs() * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        loss_points = err.mean()
        loss_lower = (pred[:, 0] - tg["lower"][bi, ti]).abs().mean()
        loss_upper = (pred[:, 1] - tg["upper"][bi, ti]).abs().mean()
    else:
        loss_points = loss_lower = loss_upper = curves.sum() * 0
    total = (
        cfg.class_weight * loss_class
        + cfg.curve_weight * loss_points
        + cfg.lower_weight * loss_lower
        + cfg.upper_weight * loss_upper
    )
    parts = {
        "class": float(loss_class.detach()),
        "points": float(loss_points.detach()),
        "lower": float(loss_lower.detach()),
        "upper": float(loss_upper.detach()),
    }
    return total, parts, matches


# ---------------------------------------------------------------------------------- training


@dataclass
class LaneTrainConfig:
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    warmup_steps: int = 100
    seed: int = 0
    device: str = "cpu"
    aux_loss: bool = True
    augment: bool = True  # left-right flips
    # a time budget: training stops after this many minutes and the cosine schedule follows
    # the elapsed share of it instead of the step count (epochs is then an upper bound)
    minutes: float | None = None
    # keep BatchNorm running statistics as they are (eval-mode norms while training)
    freeze_norm: bool = False
    loss: LaneLossConfig | None = None

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}", "e.g. --epochs 20")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}", "e.g. --lr 1e-3")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}",
                              "e.g. --batch-size 32")  # fmt: skip


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _loop(model, data, info, cfg: LaneTrainConfig, step_loss, on_epoch=None) -> dict:
    """The shared optimisation loop; step_loss(x, targets) -> (loss, parts)."""
    torch.manual_seed(cfg.seed)
    if len(data) == 0:
        raise DataError("the lane training set is empty", "pass data with labelled images")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    t0 = time.perf_counter()

    def factor(s: int) -> float:
        if cfg.minutes and s >= cfg.warmup_steps:  # cosine over the elapsed share of the budget
            done = min(1.0, (time.perf_counter() - t0) / (60 * cfg.minutes))
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done))
        return _schedule(s, total, cfg.warmup_steps)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    history, step = [], 0
    out_of_time = False
    _train_mode(model, cfg.freeze_norm)
    bar = Progress().__enter__()  # a bar on a terminal, plain lines in a log
    try:
        for epoch in range(cfg.epochs):
            bar.task(f"train epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
            sums: dict[str, float] = {}
            for x, targets, _ in data.batches(
                cfg.batch_size,
                input_size=info.input_size,
                mean=info.mean,
                std=info.std,
                shuffle_seed=cfg.seed * 1000 + epoch,
                augment=cfg.augment,
            ):
                loss, parts = step_loss(
                    torch.from_numpy(x).to(cfg.device), pad_targets(targets, cfg.device)
                )
                if not torch.isfinite(loss):
                    raise NonFiniteError(
                        f"the lane loss became {float(loss)} at step {step}",
                        "the run diverged: lower --lr or --grad-clip and run it again",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                bar.advance()
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v
                if cfg.minutes and time.perf_counter() - t0 > 60 * cfg.minutes:
                    out_of_time = True
                    break
            bar.done()
            means = {k: round(v / steps_per_epoch, 5) for k, v in sums.items()}
            means["seconds"] = round(time.perf_counter() - t0, 1)
            if on_epoch is not None:
                model.eval()
                means.update(on_epoch(epoch) or {})
                _train_mode(model, cfg.freeze_norm)
            history.append(means)
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in means.items()))  # fmt: skip
            if out_of_time:
                break
    finally:
        bar.__exit__(None, None, None)
        model.eval()
    # a diverged run must not save as a success
    check_finite_model(model, "training", "the run diverged: lower --lr and run it again")
    return {"epochs": len(history), "steps": step, "images": len(data),
            "seconds": round(time.perf_counter() - t0, 1), "history": history}  # fmt: skip


def _train_mode(model, freeze_norm: bool) -> None:
    model.train()
    if freeze_norm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def _outputs(model, x, all_layers: bool):
    return model.forward_all_layers(x) if all_layers else [model(x)]


def train_lanes(loaded, data, cfg: LaneTrainConfig | None = None, on_epoch=None) -> dict:
    """Train `loaded` (an LSTR LoadedModel) in place on a LaneSet."""
    cfg = cfg or LaneTrainConfig()
    cfg.validate()
    model = loaded.model.to(cfg.device)
    loss_cfg = cfg.loss or LaneLossConfig()

    def step_loss(x, targets):
        loss, parts = 0.0, {}
        for logits, curves in _outputs(model, x, cfg.aux_loss):  # the last layer's parts report
            layer_loss, parts, _ = lane_loss(logits, curves, targets, loss_cfg)
            loss = loss + layer_loss
        return loss, parts

    metrics = _loop(model, data, loaded.info, cfg, step_loss, on_epoch)
    return {"stage": "train-lanes", "config": asdict(cfg), **metrics}


# ------------------------------------------------------------------------------ distillation


@dataclass
class LaneDistillConfig(LaneTrainConfig):
    kd_weight: float = 1.0
    set_weight: float = 1.0  # the set loss with the teacher's confident lanes as targets
    temperature: float = 2.0
    score_threshold: float = 0.5  # teacher lanes at least this confident become targets
    label_weight: float = 0.0  # > 0: also the set loss on the data's labels
    rows: int = 32  # rows at which matched curves are compared
    # the student keeps its teacher's backbone statistics: imitation compares like with like
    freeze_norm: bool = True


def teacher_targets(logits: torch.Tensor, curves: torch.Tensor, *, threshold: float,
                    rows: int = 32) -> dict[str, torch.Tensor]:  # fmt: skip
    """The teacher's confident lanes as (padded) set-loss targets: its curve sampled at `rows`
    rows spread over [0, 1], valid between its start and end and inside the image."""
    prob = logits.softmax(-1)[..., 1]  # (B, Q)
    b, q = prob.shape
    grid = torch.linspace(0, 1, rows, device=curves.device)
    ys = grid.expand(b, q, rows)
    xs = _points(curves, ys)
    valid = (ys >= curves[..., :1]) & (ys <= curves[..., 1:2]) & (xs >= 0) & (xs <= 1)
    keep = (prob >= threshold) & (valid.sum(-1) >= 2)
    return {"xs": xs, "ys": ys.contiguous(), "valid": valid & keep[..., None],
            "lower": curves[..., 0], "upper": curves[..., 1], "present": keep,
            "order": torch.argsort((~keep).float(), dim=1, stable=True)}  # fmt: skip


def _compact(tg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move each image's present lanes to the front (the layout pad_targets makes)."""
    order = tg["order"]
    out = {}
    for k in ("xs", "ys", "valid"):
        out[k] = torch.gather(tg[k], 1, order[..., None].expand_as(tg[k]))
    for k in ("lower", "upper", "present"):
        out[k] = torch.gather(tg[k], 1, order)
    return out


@torch.no_grad()
def match_queries(s_logits, s_curves, t_logits, t_curves, rows: int = 32):
    """Per image, a one-to-one pairing of student and teacher queries (Hungarian) by how alike
    their lane probabilities are (L1) and, weighted by the teacher's lane probability, their
    curves (mean L1 over fixed rows, start, end)."""
    grid = torch.linspace(0, 1, rows, device=s_curves.device)
    out = []
    for sl, sc, tl, tc in zip(s_logits.float(), s_curves.float(), t_logits.float(),
                              t_curves.float(), strict=True):  # fmt: skip
        sp, tp = sl.softmax(-1)[:, 1], tl.softmax(-1)[:, 1]
        spx = _points(sc, grid[None].expand(len(sc), -1))
        tpx = _points(tc, grid[None].expand(len(tc), -1))
        dist = torch.cdist(spx, tpx, p=1) / rows + torch.cdist(sc[:, :2], tc[:, :2], p=1)
        cost = (sp[:, None] - tp[None]).abs() + tp[None] * 5 * dist
        out.append(assign(cost, "Hungarian matching for lane distillation"))
    return out


def kd_loss(s_logits, s_curves, t_logits, t_curves, *, temperature: float,
            rows: int = 32) -> torch.Tensor:  # fmt: skip
    """Imitation of the teacher on matched queries: lane scores (KL at a temperature) on every
    query, curves (points at fixed rows, start, end; L1) weighted by the teacher's lane
    probability."""
    pairs = match_queries(s_logits, s_curves, t_logits, t_curves, rows)
    dev = s_logits.device
    b, sq, tq = pair_index(pairs, dev)
    s_log, t_log = s_logits[b, sq], t_logits[b, tq]
    logit_kd = soft_kd(s_log, t_log, temperature)
    weight = t_log.softmax(-1)[:, 1]
    grid = torch.linspace(0, 1, rows, device=dev)[None].expand(len(b), -1)
    sc, tc = s_curves[b, sq], t_curves[b, tq]
    inside = ((grid >= tc[:, :1]) & (grid <= tc[:, 1:2])).float()
    pts = ((_points(sc, grid) - _points(tc, grid)).abs() * inside).sum(-1)
    pts = pts / inside.sum(-1).clamp(min=1)
    ends = (sc[:, :2] - tc[:, :2]).abs().sum(-1)
    curve_kd = (weight * (5 * pts + 2 * ends)).sum() / weight.sum().clamp(min=1e-6)
    return logit_kd + curve_kd


def distill_lanes(student, teacher, data, cfg: LaneDistillConfig | None = None) -> dict:
    """Train `student` in place to reproduce `teacher`'s lanes on `data`; its labels join in
    with cfg.label_weight > 0."""
    cfg = cfg or LaneDistillConfig()
    cfg.validate()
    if cfg.label_weight < 0:
        raise ConfigError(f"label weight must be >= 0, got {cfg.label_weight}", "e.g. 1.0")
    if not 0 < cfg.score_threshold < 1:
        raise ConfigError(f"score threshold must be in (0, 1), got {cfg.score_threshold}",
                          "e.g. 0.5")  # fmt: skip
    s_model = student.model.to(cfg.device)
    t_model = teacher.model.to(cfg.device).eval()
    loss_cfg = cfg.loss or LaneLossConfig()

    def step_loss(x, targets):
        with torch.no_grad():
            t_logits, t_curves = t_model(x)
        pseudo = _compact(
            teacher_targets(t_logits, t_curves, threshold=cfg.score_threshold, rows=cfg.rows)
        )
        layers = _outputs(s_model, x, cfg.aux_loss)
        loss = 0.0
        for logits, curves in layers[:-1]:
            loss = loss + cfg.set_weight * lane_loss(logits, curves, pseudo, loss_cfg)[0]
        logits, curves = layers[-1]
        final, parts, _ = lane_loss(logits, curves, pseudo, loss_cfg)
        final = cfg.set_weight * final
        kd = kd_loss(logits, curves, t_logits, t_curves, temperature=cfg.temperature,
                     rows=cfg.rows)  # fmt: skip
        parts["kd"] = float(kd.detach())
        loss = loss + final + cfg.kd_weight * kd
        if cfg.label_weight:
            labelled = sum(lane_loss(lg, cv, targets, loss_cfg)[0] for lg, cv in layers)
            parts["labels"] = float(labelled.detach())
            loss = loss + cfg.label_weight * labelled
        return loss, parts

    metrics = _loop(s_model, data, student.info, cfg, step_loss)
    return {"stage": "distill-lanes", "config": asdict(cfg), **metrics}


# ------------------------------------------------------------------------- settings -> config

FROM_SCRATCH = {"lr": 1e-3, "batch_size": 32, "grad_clip": 1.0}
FINE_TUNE = {"lr": 2e-4, "batch_size": 32, "grad_clip": 1.0}


def lane_train_config(loaded, settings: dict[str, Any], cls=LaneTrainConfig):
    """A LaneTrainConfig (or LaneDistillConfig) from the train stage's settings; unset values
    follow the start (random weights: lr 1e-3; trained weights: 2e-4)."""
    base = FROM_SCRATCH if loaded.info.weights == "random" else FINE_TUNE
    fields = {f for f in cls.__dataclass_fields__}
    known = {k: v for k, v in settings.items() if k in fields and v is not None}
    if known.get("device") in (None, "auto"):
        from tvc.train.dist import pick_device

        known["device"] = str(pick_device(known.get("device") or "auto"))
    cfg = cls(**{**base, **known})
    cfg.validate()
    return cfg


__all__ = [
    "LaneDistillConfig",
    "LaneLossConfig",
    "LaneTrainConfig",
    "batch_cost",
    "distill_lanes",
    "hungarian_match",
    "kd_loss",
    "lane_loss",
    "lane_train_config",
    "pad_targets",
    "teacher_targets",
    "train_lanes",
]
