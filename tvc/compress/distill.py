"""Knowledge distillation: train a (usually pruned or factorised) student to match a teacher.

Three losses, each mixed with the label loss as (1 - alpha) * CE(student, labels) + alpha * KD:
- `soft`: KL divergence between temperature-softened teacher and student distributions, times T^2
  (Hinton et al.);
- `hard`: cross-entropy against the teacher's top-1 class (DeiT's hard-label distillation);
- `token`: DeiT's distillation token. The student's class-token head learns the labels and its
  distillation-token head the teacher's top-1 class; at inference the two heads are averaged.
  Needs a student with a distillation token (timm `deit_*_distilled`, tvc `deit_pico_distilled`).

Teacher logits are cached on disk (`cache_logits`, the default): one teacher pass over the data,
then every epoch, and every later run on the same teacher + data, reads them instead of running
the teacher. Cached logits belong to fixed images, so cached runs train without augmentation;
`augment=True` needs `cache_logits=False`, and then the teacher sees exactly the augmented images
the student sees (which needs both to take the same input size and normalisation).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvc.data.base import ImageSet
from tvc.errors import ConfigError, UnsupportedModelError
from tvc.eval.classification import evaluate
from tvc.finite import check_finite_array
from tvc.models.info import image_view, model_class_names, model_images
from tvc.progress import Progress
from tvc.train import dist
from tvc.train.kd import soft_kd
from tvc.train.loop import TrainConfig, amp_dtype, fit, torch_predict

log = logging.getLogger("tvc")
KD_MODES = ("soft", "hard", "token")
CACHE_VERSION = "tvc-teacher-logits/1"


@dataclass
class DistillConfig:
    teacher: str  # any MODEL: name (+ teacher_weights), HF directory, or model artifact
    data: str  # a --data spec; the student trains on its 'train' split
    epochs: int = 1
    kd: str = "soft"  # soft | hard | token
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the distillation loss; 1 - alpha goes to the labels
    lr: float = 5e-4
    batch_size: int = 128
    limit: int | None = None
    cache_logits: bool = True
    teacher_weights: str | None = None
    # tvc's additions; the defaults keep the behaviour above
    augment: bool = False  # random crop + flip (needs cache_logits=False)
    cache_dir: str | None = None  # default: $TVC_CACHE_DIR or ~/.cache/tvc
    eval_split: str | None = "test"  # evaluate student and teacher here after training
    eval_limit: int | None = None
    weight_decay: float = 0.05
    warmup_epochs: float = 0.25
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        if self.kd not in KD_MODES:
            raise ConfigError(f"unknown --kd '{self.kd}'", f"use one of: {', '.join(KD_MODES)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {self.alpha}", "e.g. --alpha 0.5")
        if self.temperature <= 0:
            raise ConfigError(
                f"--temperature must be positive, got {self.temperature}", "e.g. --temperature 4"
            )
        if self.augment and self.cache_logits:
            raise ConfigError(
                "augmentation changes the images every epoch, so cached teacher logits would not "
                "match them",
                "turn off augmentation, or turn off the logit cache (cache_logits=False)",
            )
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs,
                           label_smoothing=self.label_smoothing, augment=self.augment,
                           seed=self.seed, device=self.device, progress=self.progress)  # fmt: skip


def kd_loss(kd: str, alpha: float, temperature: float, label_smoothing: float):
    """The loss on (student outputs, labels, teacher logits) for one KD mode."""
    import torch.nn.functional as F

    def loss(out, y, teacher):
        teacher = teacher.float()
        if kd == "token":
            cls, dist_out = out
            ce = F.cross_entropy(cls.float(), y, label_smoothing=label_smoothing)
            kd_part = F.cross_entropy(dist_out.float(), teacher.argmax(1))
        else:
            if isinstance(out, tuple):
                out = (out[0] + out[1]) / 2
            s = out.float()
            ce = F.cross_entropy(s, y, label_smoothing=label_smoothing)
            if kd == "soft":
                kd_part = soft_kd(s, teacher, temperature)
            else:
                kd_part = F.cross_entropy(s, teacher.argmax(1))
        total = (1 - alpha) * ce + alpha * kd_part
        return total, {"ce": ce.detach(), "kd": kd_part.detach()}

    return loss


def _images(spec: str, split: str, info, limit: int | None, seed: int) -> ImageSet:
    """`split` of `spec` prepared for the model described by `info`, labelled in its classes."""
    return model_images(spec, split, info, limit=limit, seed=seed)


def _same_view(a, b) -> bool:
    return image_view(a) == image_view(b)


def distill(student, cfg: DistillConfig, *, teacher=None) -> dict[str, Any]:
    """Train `student.model` in place to match `teacher` (default: load `cfg.teacher`) on
    `cfg.data`; return metrics."""
    import torch

    from tvc.models import load_model

    cfg.validate()
    ctx = dist.setup(cfg.device)
    t_start = time.perf_counter()
    if teacher is None:
        teacher = load_model(cfg.teacher, weights=cfg.teacher_weights)
    if teacher.artifact is None and teacher.info.weights == "random":
        raise ConfigError(
            f"the teacher {cfg.teacher} has random weights, so there is nothing to learn from it",
            "pass its trained weights (--weights for the teacher) or a trained model artifact",
        )
    _check_student(student, teacher, cfg)
    t_names = model_class_names(teacher.info)
    if t_names and not model_class_names(student.info):
        # the student learns the teacher's outputs, so its labels must mean the same classes
        student.info.extra["class_names"] = t_names
    s_view, t_view = student.info, teacher.info
    train_set = _images(cfg.data, "train", s_view, cfg.limit, cfg.seed)
    shared_view = _same_view(s_view, t_view)
    teacher_set = train_set if shared_view else _images(cfg.data, "train", t_view, cfg.limit,
                                                        cfg.seed)  # fmt: skip
    if train_set.num_classes != s_view.num_classes:
        raise ConfigError(
            f"{cfg.data} has {train_set.num_classes} classes, the student predicts "
            f"{s_view.num_classes}",
            "distil a student whose classifier matches the dataset",
        )
    if cfg.augment and not shared_view:
        raise ConfigError(
            "augmentation with a live teacher needs teacher and student to take the same input "
            f"(teacher {t_view.input_size}, student {s_view.input_size})",
            "turn augmentation off (the default)",
        )

    device = ctx.device
    tmodel = teacher.model.to(device).eval()
    for p in tmodel.parameters():
        p.requires_grad_(False)
    dtype = amp_dtype(device, None)
    base = kd_loss(cfg.kd, cfg.alpha, cfg.temperature, cfg.label_smoothing)
    cache_info: dict[str, Any] = {"enabled": cfg.cache_logits}
    if cfg.cache_logits:
        logits, cache_info = teacher_logits(teacher, teacher_set, ctx, cfg)

        def loss_fn(out, x, y, idx):
            return base(out, y, logits[idx])
    else:
        from tvc.train.loop import DeviceData

        t_data = None if shared_view else DeviceData(teacher_set, device, 4 << 30)

        def loss_fn(out, x, y, idx):
            with torch.no_grad():
                t_out = tmodel(x if t_data is None else t_data.get(idx)[0])
            return base(out, y, t_out)

    if cfg.kd == "token":
        student.model.set_distilled_training(True)
    try:
        result = fit(student.model, train_set, cfg.train_config(), loss_fn=loss_fn,
                     desc=f"distill ({cfg.kd})")  # fmt: skip
    finally:
        if cfg.kd == "token":
            student.model.set_distilled_training(False)
    metrics: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "device")},
        "teacher_id": _teacher_id(teacher),
        "cache": cache_info,
        "training": result,
    }
    if cfg.eval_split:
        metrics.update(_evaluate_pair(student, teacher, cfg, ctx, dtype))
    student.model.cpu().eval()
    tmodel.cpu()
    metrics["wall_s"] = time.perf_counter() - t_start
    return metrics


def _check_student(student, teacher, cfg: DistillConfig) -> None:
    if student.info.num_classes != teacher.info.num_classes:
        raise ConfigError(
            f"the student predicts {student.info.num_classes} classes, the teacher "
            f"{teacher.info.num_classes}",
            "distil between models with the same classifier (same dataset)",
        )
    s_names, t_names = model_class_names(student.info), model_class_names(teacher.info)
    if s_names and t_names and s_names != t_names:
        differ = next(i for i, (a, b) in enumerate(zip(s_names, t_names, strict=True)) if a != b)
        raise ConfigError(
            f"output {differ} of the student is '{s_names[differ]}' but of the teacher "
            f"'{t_names[differ]}'",
            "distil between models trained on the same classes in the same order",
        )
    if cfg.kd == "token" and getattr(student.model, "dist_token", None) is None:
        raise UnsupportedModelError(
            f"--kd token needs a student with a distillation token; {student.info.name} has none",
            "use a deit_*_distilled student (e.g. deit_pico_distilled), or --kd soft / hard",
        )


def _evaluate_pair(student, teacher, cfg: DistillConfig, ctx, dtype) -> dict[str, Any]:
    """Student and teacher accuracy on the eval split, and their top-1 agreement (rank 0)."""
    out = None
    if ctx.is_main:
        s, t = student.info, teacher.info
        s_set = _images(cfg.data, cfg.eval_split, s, cfg.eval_limit, cfg.seed)
        same = _same_view(s, t)
        t_set = s_set if same else _images(cfg.data, cfg.eval_split, t, cfg.eval_limit, cfg.seed)
        student.model.eval()
        s_pred = torch_predict(student.model, ctx.device, dtype)
        t_pred = torch_predict(teacher.model, ctx.device, dtype)
        t_logits = np.concatenate([t_pred(x) for x, _ in t_set.batches(256)])
        out = {
            "accuracy": evaluate(s_pred, s_set, batch_size=256,
                                 reference=_by_position(t_logits)),
            "teacher_accuracy": evaluate(_by_position(t_logits), s_set, batch_size=256),
        }  # fmt: skip
        log.info("after distillation: student top-1 %.2f%%, teacher %.2f%%, agreement %.2f%%",
                 out["accuracy"]["top1"], out["teacher_accuracy"]["top1"],
                 out["accuracy"]["agreement"])  # fmt: skip
    return dist.broadcast(ctx, out)


def _by_position(logits: np.ndarray):
    """A 'predict' that returns precomputed logits for consecutive batches of a set, in order."""
    state = {"pos": 0}

    def predict(x: np.ndarray) -> np.ndarray:
        start = state["pos"]
        state["pos"] = start + len(x)
        return logits[start : start + len(x)]

    return predict


# ------------------------------------------------------------------------- teacher logit cache


def cache_root(cfg: DistillConfig) -> Path:
    root = cfg.cache_dir or os.environ.get("TVC_CACHE_DIR") or Path.home() / ".cache" / "tvc"
    return Path(root) / "teacher-logits"


def _teacher_id(teacher) -> str | None:
    """What makes the teacher's outputs reproducible: its artifact id or its weights' hash."""
    from tvc.artifact import sha256_file

    if teacher.artifact is not None:
        return f"artifact:{teacher.artifact.id}"
    source = Path(teacher.info.weights)
    if source.is_file():
        return f"weights:{teacher.info.arch}:{sha256_file(source)}"
    if source.is_dir():  # a Hugging Face directory: names, sizes and times of its files
        stat = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                      for p in source.iterdir() if p.is_file())  # fmt: skip
        return f"dir:{source.resolve()}:{hashlib.sha256(repr(stat).encode()).hexdigest()}"
    return None


def _read_cache(path: Path) -> np.ndarray | None:
    """A cached logit array, or None when the file is truncated, corrupt or holds NaN/Inf."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    ok = isinstance(arr, np.ndarray) and arr.ndim == 2 and np.isfinite(arr).all()
    return arr if ok else None


def teacher_logits(teacher, data: ImageSet, ctx, cfg: DistillConfig):
    """Teacher logits for every image of `data` (a tensor on the device), from cache or computed.

    Each process computes a share of the images; the shares are gathered and rank 0 writes the
    cache file atomically.
    """
    import torch

    tid = _teacher_id(teacher)
    key = hashlib.sha256(f"{CACHE_VERSION}|{tid}|{data.fingerprint}".encode()).hexdigest()[:24]
    path = cache_root(cfg) / f"{key}.npy" if tid else None
    info: dict[str, Any] = {"enabled": True, "file": str(path) if path else None, "hit": False}
    if path is None:
        log.warning("the teacher's weights have no stable identity; its logits are computed "
                    "once for this run and not kept on disk")  # fmt: skip
    t0 = time.perf_counter()
    if path is not None and path.is_file():
        arr = _read_cache(path)  # None when truncated or corrupt: recomputed and rewritten
        if arr is not None and arr.shape == (len(data), teacher.info.num_classes):
            info.update(hit=True, load_s=time.perf_counter() - t0)
            log.info("teacher logits from cache %s", path)
            return torch.from_numpy(arr).to(ctx.device), info
        log.warning("ignoring the teacher-logit cache %s: it is damaged or has another shape; "
                    "computing the logits again", path)  # fmt: skip
    model = teacher.model
    predict = torch_predict(model, ctx.device, amp_dtype(ctx.device, None))
    positions = np.arange(ctx.rank, len(data), ctx.world_size)
    rows = []
    with Progress(ctx.is_main and cfg.progress) as bar:  # a bar, or plain lines in a log
        bar.task(f"teacher logits for {len(data)} images", len(positions), unit="images")
        for i in range(0, len(positions), 512):
            rows.append(torch.from_numpy(predict(data.take(positions[i : i + 512])[0])))
            bar.advance(len(positions[i : i + 512]))
    local = torch.cat(rows).to(ctx.device) if rows else torch.empty(0, teacher.info.num_classes)
    logits = dist.gather_rows(ctx, local, torch.as_tensor(positions, device=ctx.device), len(data))
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    info["teacher_pass_s"] = time.perf_counter() - t0
    check_finite_array(logits, f"the teacher {teacher.info.name}'s logits",
                       "use a teacher whose weights and outputs are finite")  # fmt: skip
    if path is not None and ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npy")
        try:
            np.save(tmp, logits.float().cpu().numpy())
            os.replace(tmp, path)
            log.info("cached the teacher's logits for %d images in %s", len(data), path)
        except OSError as exc:  # the cache only saves time: a full disk must not stop the run
            log.warning("could not cache the teacher's logits in %s (%s)", path, exc.strerror)
        finally:
            tmp.unlink(missing_ok=True)
    dist.barrier(ctx)
    return logits.float(), info
