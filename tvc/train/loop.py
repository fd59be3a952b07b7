"""The training loop behind `tvc train` and distillation.

AdamW with a linear warm-up and cosine decay (per step), label smoothing, bf16/fp16 autocast on
GPUs, evaluation after each epoch, and a checkpoint after each epoch (written atomically) that
`resume` continues from. Under torchrun the model is wrapped in DistributedDataParallel and a
DistributedSampler shards each epoch; rank 0 alone evaluates, writes and shows progress.

Results do not depend on the number of processes: the batch size is the global one (split over
the processes), the epoch order comes from the sampler's seed, and augmentation is a fixed
function of (seed, epoch, image), so 1 process and N processes take the same steps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvc.data.base import ImageSet
from tvc.errors import ConfigError
from tvc.eval.classification import evaluate
from tvc.finite import check_finite_array, check_finite_model
from tvc.models.weights import load_failure
from tvc.progress import Progress
from tvc.safe_io import storage_errors
from tvc.train import dist

log = logging.getLogger("tvc")

# loss_fn(outputs, x, y, indices) -> (loss, {name: detached scalar tensor}) for logging;
# indices: the batch's positions in the training set, a LongTensor on the training device
LossFn = Callable[[Any, Any, Any, Any], tuple[Any, dict[str, Any]]]


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3  # peak learning rate, for the global batch
    batch_size: int = 128  # global: split over the processes under torchrun
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01  # the cosine ends at lr * min_lr_ratio
    label_smoothing: float = 0.1
    augment: bool = True  # random crop (padding H/8) + horizontal flip
    amp: bool | None = None  # None: autocast on GPUs, not on CPUs
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    eval_batch_size: int = 256

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1", "e.g. --epochs 10"),
            (self.lr > 0, "--lr must be positive", "e.g. --lr 1e-3"),
            (self.batch_size >= 1, "--batch-size must be >= 1", "e.g. --batch-size 128"),
            (self.weight_decay >= 0, "weight decay must be >= 0", "e.g. 0.05"),
            (self.warmup_epochs >= 0, "warm-up epochs must be >= 0", "e.g. 1"),
            (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)", "e.g. 0.1"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]", "e.g. 0.01"),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise ConfigError(problem, fix)

    def run_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run that resumes it."""
        skip = ("progress", "device", "eval_batch_size")
        return {k: v for k, v in asdict(self).items() if k not in skip}


# why a loss or a weight is NaN/Inf after training: the run diverged
_DIVERGED = "the run diverged: lower --lr or --grad-clip and run it again"


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine down to `min_ratio`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and the position / class / distillation tokens."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip


def augment_params(seed: int, epoch: int, indices: np.ndarray, pad: int):
    """Crop offsets in [0, 2*pad] and flip flags, a fixed function of (seed, epoch, image)."""
    with np.errstate(over="ignore"):
        h = indices.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= np.uint64((seed * 1_000_003 + epoch) & 0xFFFFFFFF) * np.uint64(0xBF58476D1CE4E5B9)
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):  # splitmix64
            h ^= h >> np.uint64(shift)
            h *= np.uint64(mult)
        h ^= h >> np.uint64(31)
    span = np.uint64(2 * pad + 1)
    dy = (h % span).astype(np.int64)
    dx = ((h >> np.uint64(16)) % span).astype(np.int64)
    flip = ((h >> np.uint64(40)) & np.uint64(1)).astype(bool)
    return dy, dx, flip


def augment(x, dy, dx, flip, pad: int | None = None):
    """Crop each image at offsets (dy, dx) of its replicate-padded copy; mirror where `flip`.

    `dy`, `dx`, `flip`: (B,) tensors on x's device, from `augment_params` with the same `pad`
    (default H/8). The padded copy is never built: clamping the indices into the image repeats
    its edges the same way, and works on any dtype (iGPT's palette tokens too).
    """
    import torch

    b, c, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    dev = x.device
    rows = (dy[:, None] - pad + torch.arange(h, device=dev)).clamp(0, h - 1)  # (B, h)
    cols = (dx[:, None] - pad + torch.arange(w, device=dev)).clamp(0, w - 1)  # (B, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def epoch_crops(seed: int, epoch: int, order: np.ndarray, height: int, device):
    """Crop offsets and flips for a whole epoch's images, moved to the device in one copy."""
    import torch

    dy, dx, flip = augment_params(seed, epoch, order, max(1, height // 8))
    both = torch.as_tensor(np.stack([dy, dx, flip.astype(np.int64)]), device=device)
    return both[0], both[1], both[2].bool()


class DeviceData:
    """An ImageSet's images on the training device, whole when they fit `budget_bytes`."""

    def __init__(self, data: ImageSet, device, budget_bytes: int) -> None:
        import torch

        self.data = data
        self.device = device
        per_image = 4 * int(np.prod(data.input_size))
        self.whole = len(data) * per_image <= budget_bytes
        self.y = torch.as_tensor(np.array(data.labels), device=device)
        self.x = None
        if self.whole:
            chunks = [torch.from_numpy(x) for x, _ in data.batches(1024)]
            self.x = torch.cat(chunks).to(device)

    def get(self, indices):
        """Images and labels at `indices` (a tensor on the device, or a numpy array)."""
        import torch

        idx = torch.as_tensor(indices, device=self.device)
        if self.whole:
            return self.x[idx], self.y[idx]
        x, _ = self.data.take(idx.cpu().numpy())
        return torch.from_numpy(x).to(self.device), self.y[idx]


def amp_dtype(device, amp: bool | None):
    """bf16 where the GPU has it, else fp16; None (full precision) on CPUs or when off."""
    import torch

    if device.type != "cuda" or amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def torch_predict(model, device, dtype=None) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy logits function over `model` on `device` (eval mode, no grad)."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype,
                                                    enabled=dtype is not None):  # fmt: skip
            out = model(torch.from_numpy(x).to(device))
        return out.float().cpu().numpy()

    return predict


def default_loss(label_smoothing: float) -> LossFn:
    import torch.nn.functional as F

    def loss_fn(out, x, y, idx):
        if isinstance(out, tuple):  # a DeiT student in distilled-training mode
            out = (out[0] + out[1]) / 2
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        return loss, {"ce": loss.detach()}

    return loss_fn


def fit(
    model,
    train_set: ImageSet,
    cfg: TrainConfig,
    *,
    val_set: ImageSet | None = None,
    loss_fn: LossFn | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    run_key: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    desc: str = "train",
) -> dict[str, Any]:
    """Train `model` in place; return the history and timings. See the module docstring."""
    import torch
    from torch.utils.data import DistributedSampler

    cfg.validate()
    ctx = dist.setup(cfg.device)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} does not split evenly over {ctx.world_size} processes",
            f"use a multiple of {ctx.world_size}",
        )
    local_batch = cfg.batch_size // ctx.world_size
    device = ctx.device
    model.to(device)
    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = loss_fn or default_loss(cfg.label_smoothing)
    budget = (4 << 30) if device.type == "cuda" else (1 << 30)
    data = DeviceData(train_set, device, budget)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=ctx.world_size,
                                 rank=ctx.rank, shuffle=True, seed=cfg.seed)  # fmt: skip
    steps_per_epoch = math.ceil(len(sampler) / local_batch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    # the fused kernel is one launch per step instead of several per tensor: small ViTs are
    # launch-bound on GPUs
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            fused=device.type == "cuda")  # fmt: skip
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    key = json.dumps({**cfg.run_key(), **(run_key or {}), "images": train_set.fingerprint},
                     sort_keys=True, default=str)  # fmt: skip
    start_epoch, history = 0, []
    if checkpoint is not None and resume:
        start_epoch, history = _load_checkpoint(checkpoint, key, model, opt, scaler, device)
    elif checkpoint is not None and checkpoint.exists() and ctx.is_main:
        log.warning("starting afresh over the checkpoint in %s (pass --resume to continue it)",
                    checkpoint.parent)  # fmt: skip

    t_fit = time.perf_counter()
    with Progress(ctx.is_main and cfg.progress) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            net.train()
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            # one host-to-device copy per epoch: a copy per step would stall the GPU queue
            order_dev = torch.as_tensor(order, device=device)
            if cfg.augment:
                crops = epoch_crops(cfg.seed, epoch, order, train_set.input_size[1], device)
            sums: dict[str, float] = {}
            bar.task(f"{desc} epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
            for s in range(steps_per_epoch):
                batch = slice(s * local_batch, (s + 1) * local_batch)
                idx = order_dev[batch]
                step = epoch * steps_per_epoch + s
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, total_steps, warmup, cfg.min_lr_ratio)
                x, y = data.get(idx)
                if cfg.augment:
                    x = augment(x, *(c[batch] for c in crops))
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = net(x)
                    loss, parts = loss_fn(out, x, y, idx)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                for k, v in {"loss": loss.detach(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + v  # tensors: no GPU sync per step
                bar.advance()
            names = sorted(sums)
            means = dist.all_mean(ctx, [float(sums[k]) / steps_per_epoch for k in names])
            check_finite_array(means, f"{desc} loss in epoch {epoch + 1}", _DIVERGED)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            record: dict[str, Any] = {"epoch": epoch + 1, **dict(zip(names, means, strict=True)),
                                      "lr": opt.param_groups[0]["lr"],
                                      "train_s": time.perf_counter() - t0}  # fmt: skip
            if val_set is not None and ctx.is_main:
                model.eval()
                res = evaluate(torch_predict(model, device, dtype), val_set,
                               batch_size=cfg.eval_batch_size)  # fmt: skip
                record["val_top1"] = res["top1"]
            record["epoch_s"] = time.perf_counter() - t0
            history.append(record)
            bar.done()
            if ctx.is_main:
                log.info("%s", _describe(desc, record, cfg.epochs))
                if checkpoint is not None:
                    _save_checkpoint(checkpoint, key, epoch + 1, history, model, opt, scaler)
            dist.barrier(ctx)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    model.eval()
    check_finite_model(model, desc, _DIVERGED)  # a diverged run must not save as a success
    return {
        "history": history,
        "epochs": cfg.epochs,
        "resumed_from_epoch": start_epoch if resume else None,
        "wall_s": time.perf_counter() - t_fit,
        "world_size": ctx.world_size,
        "device": str(device),
        "amp": str(dtype).replace("torch.", "") if dtype is not None else None,
        "global_batch": cfg.batch_size,
        "train_images": len(train_set),
    }


def _describe(desc: str, r: dict[str, Any], epochs: int) -> str:
    parts = [f"{desc} epoch {r['epoch']}/{epochs}", f"loss {r['loss']:.4f}"]
    parts += [f"{k} {r[k]:.4f}" for k in ("ce", "kd") if k in r]
    if "val_top1" in r:
        parts.append(f"val top-1 {r['val_top1']:.2f}%")
    parts.append(f"{r['epoch_s']:.1f}s")
    return ", ".join(parts)


def _save_checkpoint(path: Path, key: str, epoch: int, history, model, opt, scaler) -> None:
    """Write the checkpoint beside its final name, then rename: a crash leaves the old one."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with storage_errors(path):  # a full disk: one line, and no half-written temp file left
            torch.save({"format": "tvc.train/1", "run_key": key, "epoch": epoch,
                        "history": json.dumps(history), "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "scaler": scaler.state_dict()},
                       tmp)  # fmt: skip
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path, key: str, model, opt, scaler, device) -> tuple[int, list]:
    import torch

    if not path.is_file():
        log.info("no checkpoint at %s yet; starting from epoch 1", path)
        return 0, []
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read the checkpoint {path} ({load_failure(exc)})",
                          "delete it to start afresh (drop --resume)") from exc  # fmt: skip
    if state.get("run_key") != key:
        theirs = json.loads(state.get("run_key", "{}"))
        ours = json.loads(key)
        diff = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
        raise ConfigError(
            f"the checkpoint in {path.parent} is from a run with other settings "
            f"({', '.join(diff) or 'unknown'} differ)",
            "resume with the same options, or drop --resume to start afresh",
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    log.info("resuming from the checkpoint after epoch %d", state["epoch"])
    return int(state["epoch"]), json.loads(state["history"])
