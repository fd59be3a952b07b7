"""Training Image GPT: autoregressive pretraining, fine-tuning, and generative distillation.

- `pretrain`: next-pixel negative log-likelihood over whole images (reported in bits/dim);
- `finetune`: classification on the averaged final states plus the generative loss as an
  auxiliary term (iGPT found L = L_clf + L_gen better than L_clf alone);
- `distill_pixels`: the student matches the teacher's next-token distribution at every position
  (KL at temperature T, times T^2), optionally mixed with the data NLL.

One loop serves all three: AdamW, linear warmup then cosine decay, gradient clipping, a step or
wall-clock budget (so a CPU run fits the time it is given), and a held-out bits/dim check.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tvc.errors import ConfigError, NonFiniteError
from tvc.finite import check_finite_model
from tvc.progress import Progress
from tvc.train.kd import soft_kd

log = logging.getLogger("tvc")
LN2 = math.log(2.0)


@dataclass
class PixelTrainConfig:
    epochs: float = 1.0  # passes over the training tokens (fractions allowed)
    max_steps: int | None = None  # stop after this many steps
    time_budget_s: float | None = None  # stop after this many seconds (schedule follows it)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    eval_every: int = 0  # steps between held-out checks (0: only at the end)
    ema: float = 0.0  # decay of an exponential moving average of the weights, kept at the end
    # fine-tuning
    gen_weight: float = 0.5  # weight of the generative loss beside the classification loss
    label_smoothing: float = 0.0
    augment: bool = False  # fine-tuning: random shift (edges repeated) + horizontal flip
    augment_shift: int = 1  # the largest shift in pixels (0: mirroring only)
    # distillation (distill_pixels, and finetune given a teacher's soft targets)
    temperature: float = 1.0
    alpha: float = 1.0  # weight of the KD term; 1 - alpha on the data loss (NLL or label CE)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}", "use e.g. 64")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}", "use e.g. 1e-3")
        if self.epochs <= 0 and not self.max_steps and not self.time_budget_s:
            raise ConfigError("training has no budget", "give epochs, max_steps or a time budget")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}", "use e.g. 1.0")
        if self.augment_shift < 0:
            raise ConfigError(f"augment shift must be >= 0, got {self.augment_shift}", "use 1")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}", "use 1.0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"ema decay must be in [0, 1), got {self.ema}", "use e.g. 0.999")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PixelTrainConfig:
        """Build from a train/compress stage's settings, keeping the keys this loop knows."""
        names = set(cls.__dataclass_fields__)
        alias = {"steps": "max_steps", "batch": "batch_size", "kd_temperature": "temperature"}
        d = {}
        for k, v in settings.items():
            k = alias.get(k, k)
            if k in names and v is not None:
                d[k] = v
        cfg = cls(**d)
        cfg.validate()
        return cfg


def bpd_from_nats(nats: float) -> float:
    """Mean nats per pixel -> bits per dimension (one token per pixel, one dim per token for
    greyscale; iGPT's own definition for palettes)."""
    return float(nats / LN2)


@torch.no_grad()
def heldout_bpd(model, tokens: np.ndarray, batch_size: int = 128) -> float:
    """Bits/dim of a PyTorch iGPT on held-out token sequences."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(tokens), batch_size):
        x = torch.from_numpy(np.asarray(tokens[s : s + batch_size], dtype=np.int64))
        logits = model.logits(x)
        total += float(
            F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum")
        )
        n += x.numel()
    model.train(was)
    return bpd_from_nats(total / max(n, 1))


def _schedule(step: int, total: int, cfg: PixelTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress))


def _loop(
    model,
    n_items: int,
    loss_fn: Callable[[np.ndarray], tuple[torch.Tensor, dict]],
    cfg: PixelTrainConfig,
    *,
    check: Callable[[], dict] | None = None,
    what: str = "train",
) -> dict[str, Any]:
    """Minibatches of item indices -> loss_fn -> AdamW; returns the history."""
    cfg.validate()
    steps_per_epoch = max(1, math.ceil(n_items / cfg.batch_size))
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch)) if cfg.epochs > 0 else 10**9
    if cfg.max_steps:
        total = min(total, cfg.max_steps) if cfg.epochs > 0 else cfg.max_steps
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    keep = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    # an average of the weights along the end of the run generalises better than its last step
    ema = [p.detach().clone() for p in model.parameters()] if cfg.ema else None
    model.train()
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    step, order, pos = 0, rng.permutation(n_items), 0
    running: dict[str, float] = {}
    planned = total
    bar = Progress().__enter__()  # a bar on a terminal, plain lines in a log
    bar.task(what, total if total < 10**9 else None, unit="steps")
    try:
        while step < total:
            elapsed = time.perf_counter() - t0
            if cfg.time_budget_s:
                if elapsed >= cfg.time_budget_s:
                    break
                if step >= 20:  # re-plan the schedule to what the rest of the budget allows
                    per_step = elapsed / step
                    left = int((cfg.time_budget_s - elapsed) / per_step)
                    planned = min(total, step + max(1, left))
            if pos + cfg.batch_size > n_items:
                order, pos = rng.permutation(n_items), 0
            idx = np.sort(order[pos : pos + cfg.batch_size])
            pos += cfg.batch_size
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _schedule(step, planned, cfg)
            loss, parts = loss_fn(idx)
            if not torch.isfinite(loss):
                raise NonFiniteError(
                    f"{what} loss became {float(loss)} at step {step}", "lower the learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - cfg.ema)
            step += 1
            bar.advance()
            for k, v in parts.items():
                running[k] = running.get(k, 0.0) + v
            running["_n"] = running.get("_n", 0) + 1
            if step % cfg.log_every == 0 or step == total:
                n = running.pop("_n")
                row = {
                    "step": step,
                    "seconds": round(time.perf_counter() - t0, 1),
                    **{k: round(v / n, 4) for k, v in running.items()},
                }
                if check is not None and cfg.eval_every and step % cfg.eval_every == 0:
                    row.update(check())
                    model.train()
                history.append(row)
                # a time budget's total is the steps it is expected to allow so far
                of = f"~{planned}" if cfg.time_budget_s else str(total)
                log.info("%s step %d/%s %s", what, step, of, row)
                running = {}
    finally:
        bar.__exit__(None, None, None)
    if ema is not None:
        with torch.no_grad():
            for p, avg in zip(model.parameters(), ema, strict=True):
                p.copy_(avg)
    model.eval()
    # a diverged run must not save as a success
    check_finite_model(model, "training", "the run diverged: lower --lr and run it again")
    return {
        "history": history,
        "steps": step,
        "epochs_done": round(step * cfg.batch_size / n_items, 3),
        "seconds": round(time.perf_counter() - t0, 1),
        "config": asdict(cfg),
    }


def pretrain(
    model, tokens: np.ndarray, cfg: PixelTrainConfig, *, val_tokens: np.ndarray | None = None
) -> dict[str, Any]:
    """Autoregressive pretraining on token sequences (N, L); reports bits/dim."""
    tokens = np.asarray(tokens, dtype=np.int64)

    def loss_fn(idx):
        x = torch.from_numpy(tokens[idx])
        logits = model.logits(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        return loss, {"train_bpd": loss.item() / LN2}

    check = (
        (lambda: {"val_bpd": round(heldout_bpd(model, val_tokens[:1000]), 4)})
        if (val_tokens is not None)
        else None
    )
    report = _loop(model, len(tokens), loss_fn, cfg, check=check, what="pretrain")
    if val_tokens is not None:
        report["val_bpd"] = heldout_bpd(model, val_tokens)
    return report


def finetune(
    model,
    tokens: np.ndarray,
    labels: np.ndarray,
    cfg: PixelTrainConfig,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    soft_targets: np.ndarray | None = None,
) -> dict[str, Any]:
    """Classification fine-tuning (cls_head on averaged final states) + gen_weight * NLL.

    `soft_targets` (N, classes): a teacher's logits for each training image; the classification
    loss is then (1 - alpha) * label CE + alpha * T^2 * KL(teacher || model) at temperature T
    (Hinton et al.; how DeiT distils a CNN into a transformer)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    teacher = None if soft_targets is None else _soft_targets(soft_targets, len(tokens), model)
    temp = cfg.temperature
    height, width = model.cfg.height, model.cfg.width
    draws = [0]  # each batch gets its own crops and flips, a fixed function of the seed

    def loss_fn(idx):
        x, y = torch.from_numpy(tokens[idx]), torch.from_numpy(labels[idx])
        if cfg.augment:
            x = augment_tokens(x, height, width, cfg.seed, draws[0], idx, cfg.augment_shift)
            draws[0] += 1
        logits, _, cls = model(x)
        clf = F.cross_entropy(cls, y, label_smoothing=cfg.label_smoothing)
        stats = {}
        if teacher is not None:
            kd = soft_kd(cls, teacher[idx], temp)
            stats["kd"] = kd.item()
            clf = (1 - cfg.alpha) * clf + cfg.alpha * kd
        gen = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
        acc = float((cls.argmax(1) == y).float().mean())
        return clf + cfg.gen_weight * gen, {
            **stats,
            "clf": clf.item(),
            "train_bpd": gen.item() / LN2,
            "train_acc": acc,
        }

    check = (lambda: {"val_accuracy": round(classify_accuracy(model, *val), 4)}) if val else None
    report = _loop(model, len(tokens), loss_fn, cfg, check=check, what="finetune")
    if val is not None:
        report["val_accuracy"] = classify_accuracy(model, *val)
    return report


def _soft_targets(logits: np.ndarray, n: int, model) -> torch.Tensor:
    """A teacher's logits, one row per training image and one column per class, as a float
    tensor; anything else is refused with the shape it should have."""
    t = np.asarray(logits)
    classes = model.cls_head.out_features
    if t.shape != (n, classes):
        raise ConfigError(
            f"soft targets have shape {t.shape}, the training set needs ({n}, {classes})",
            "give the teacher's logits for exactly these training images, in their order",
        )
    if not np.isfinite(t).all():
        raise ConfigError("soft targets contain NaN or infinite values", "recompute them")
    return torch.from_numpy(t.astype(np.float32))


def augment_tokens(
    x: torch.Tensor,
    height: int,
    width: int,
    seed: int,
    draw: int,
    idx: np.ndarray,
    shift: int = 1,
) -> torch.Tensor:
    """Token images (B, H*W) shifted by up to `shift` pixels (edges repeated) and mirrored at
    random: the classifiers' crop-and-flip (`tvc.train.loop.augment`), applied to the raster
    sequence; the draws are a fixed function of (seed, draw, image index), as theirs are."""
    from tvc.train.loop import augment, augment_params

    dy, dx, flip = (torch.from_numpy(t) for t in augment_params(seed, draw, idx, shift))
    img = x.reshape(len(x), 1, height, width)
    return augment(img, dy, dx, flip, pad=shift).reshape(len(x), height * width)


@torch.no_grad()
def classify_accuracy(
    model, tokens: np.ndarray, labels: np.ndarray, batch: int = 256, *, mirror: bool = False
) -> float:
    """Top-1 of the classification head (a fraction); `mirror`: on the class logits averaged
    over each image and its left-right mirror (test-time augmentation, two passes)."""
    model.eval()
    h, w = model.cfg.height, model.cfg.width
    right = 0
    for s in range(0, len(tokens), batch):
        x = torch.from_numpy(np.asarray(tokens[s : s + batch], dtype=np.int64))
        logits = model(x)[2]
        if mirror:
            logits = logits + model(x.reshape(-1, h, w).flip(2).reshape(len(x), -1))[2]
        right += int((logits.argmax(1).numpy() == labels[s : s + batch]).sum())
    return right / max(1, len(tokens))


def distill_pixels(
    student,
    teacher,
    tokens: np.ndarray,
    cfg: PixelTrainConfig,
    *,
    val_tokens: np.ndarray | None = None,
) -> dict[str, Any]:
    """The student matches the teacher's next-token distributions at every position."""
    tokens = np.asarray(tokens, dtype=np.int64)
    teacher.eval()
    t = cfg.temperature

    def loss_fn(idx):
        x = torch.from_numpy(tokens[idx])
        with torch.no_grad():
            target = teacher.logits(x)
        logits = student.logits(x)
        flat = logits.reshape(-1, logits.shape[-1])
        kd = soft_kd(flat, target.reshape(flat.shape), t)
        nll = F.cross_entropy(flat, x.reshape(-1))
        loss = cfg.alpha * kd + (1 - cfg.alpha) * nll
        return loss, {"kd": kd.item(), "train_bpd": nll.item() / LN2}

    report = _loop(student, len(tokens), loss_fn, cfg, what="distill")
    if val_tokens is not None:
        report["val_bpd"] = heldout_bpd(student, val_tokens)
        report["teacher_val_bpd"] = heldout_bpd(teacher, val_tokens)
    return report
