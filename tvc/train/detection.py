"""Training and distillation of detection transformers with DETR's set loss.

A DETR predicts a fixed set of queries; the loss first pairs queries with ground-truth objects
one-to-one (Hungarian matching with scipy's linear_sum_assignment over a class + L1 + GIoU cost),
then adds, over the matched pairs, L1 and GIoU box losses, and over all queries a class loss:
cross-entropy with a down-weighted "no object" class (DETR, softmax) or a sigmoid focal loss
(Deformable DETR, which has no "no object" column).

Distillation trains a (compressed) student against its teacher: the teacher's confident
detections are the targets of the set loss, and student queries matched one-to-one to teacher
queries (Hungarian again) also imitate the teacher's class distribution (KL at a temperature)
and, where the teacher sees an object, its box (L1).

Boxes are normalised [cx, cy, w, h] throughout, as the models predict them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tvc.errors import ConfigError, NonFiniteError
from tvc.finite import check_finite_model
from tvc.progress import Progress
from tvc.train.kd import soft_kd
from tvc.train.set_loss import (
    SetLossConfig,
    assign,
    cxcywh_to_xyxy,
    generalized_box_iou,
    pair_index,
    set_loss,
    targets_to_torch,
)

if TYPE_CHECKING:
    from tvc.data.detection import DetectionSet
    from tvc.models.load import LoadedModel

log = logging.getLogger("tvc")


# ---------------------------------------------------------------------------------- training


@dataclass
class DetTrainConfig:
    epochs: int = 10
    lr: float = 1e-4  # DETR's fine-tuning rate; tiny models trained from scratch take ~1e-3
    batch_size: int = 16
    weight_decay: float = 1e-4
    grad_clip: float = 0.1  # DETR's max gradient norm
    # None: derived from the run's length (warmup_steps_for); an int: exactly that many
    warmup_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    train_backbone_stem: bool = True  # HF freezes the ResNet stem (for pretrained weights)
    aux_loss: bool = True  # supervise every decoder layer, as DETR does
    loss: SetLossConfig | None = None
    progress: bool = True  # a bar per epoch with the ETA (the classifiers' display)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}", "e.g. --epochs 10")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}", "e.g. --lr 1e-4")
        if self.batch_size < 1:
            raise ConfigError(
                f"--batch-size must be >= 1, got {self.batch_size}", "e.g. --batch-size 16"
            )


def _optimizer(model: torch.nn.Module, cfg: DetTrainConfig):
    if cfg.train_backbone_stem:
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


MAX_WARMUP_STEPS = 50  # DETR-style warm-up of a long run
WARMUP_FRACTION = 0.1  # ... but never more than this share of a short run


def warmup_steps_for(total_steps: int) -> int:
    """The default linear warm-up: min(50 steps, 10% of the run), at least 1 step, so a small
    set (34 images: 2 steps an epoch) does not spend 25 epochs warming up."""
    return max(1, min(MAX_WARMUP_STEPS, round(WARMUP_FRACTION * total_steps)))


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _loop(model, data, info, cfg: DetTrainConfig, step_loss) -> dict:
    """The shared optimisation loop; step_loss(x, pixel_mask, targets) -> (loss, parts)."""
    from tvc.eval.detection import resize_of

    torch.manual_seed(cfg.seed)
    opt = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else warmup_steps_for(total)
    warmup = max(1, warmup)
    log.info(
        "schedule: %d steps (%d epoch(s) x %d of batch %d), linear warm-up %d step(s)%s, "
        "then cosine from lr %g to %g",
        total,
        cfg.epochs,
        steps_per_epoch,
        cfg.batch_size,
        warmup,
        "" if cfg.warmup_steps is not None else " (min(50, 10% of the steps))",
        cfg.lr,
        0.05 * cfg.lr,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, warmup))
    model.train()
    history, t0, step = [], time.perf_counter(), 0
    try:
        with Progress(cfg.progress) as bar:  # a bar on a terminal, plain lines in a log
            for epoch in range(cfg.epochs):
                bar.task(f"train epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
                sums: dict[str, float] = {}
                for x, mask, targets, _ in data.batches(
                    cfg.batch_size,
                    input_size=info.input_size,
                    mean=info.mean,
                    std=info.std,
                    shuffle_seed=cfg.seed * 1000 + epoch,
                    resize=resize_of(info),
                    masks=True,
                ):
                    loss, parts = step_loss(
                        torch.from_numpy(x).to(cfg.device),
                        None if mask is None else torch.from_numpy(mask).to(cfg.device),
                        targets_to_torch(targets, cfg.device),
                    )
                    if not torch.isfinite(loss):
                        raise NonFiniteError(
                            f"the detection loss became {float(loss)} at step {step}",
                            "the run diverged: lower --lr or --grad-clip and run it again",
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    sched.step()
                    step += 1
                    bar.advance()
                    for k, v in {"loss": loss.item(), **parts}.items():
                        sums[k] = sums.get(k, 0.0) + v
                bar.done()
                epoch_means = {k: round(v / steps_per_epoch, 4) for k, v in sums.items()}
                history.append(epoch_means)
                log.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    cfg.epochs,
                    ", ".join(f"{k} {v:.3f}" for k, v in epoch_means.items()),
                )
    finally:
        model.eval()
    # a diverged run must not save as a success
    check_finite_model(model, "training", "the run diverged: lower --lr and run it again")
    return {
        "epochs": cfg.epochs,
        "steps": step,
        "warmup_steps": warmup,
        "images": len(data),
        "seconds": round(time.perf_counter() - t0, 1),
        "history": history,
    }


def train_detector(loaded, data, cfg: DetTrainConfig | None = None) -> dict:
    """Fine-tune (or train) `loaded` (a detector LoadedModel) in place on a DetectionSet."""
    cfg = cfg or DetTrainConfig()
    cfg.validate()
    model = loaded.model.to(cfg.device)
    loss_cfg = cfg.loss or SetLossConfig()
    no_obj = model.no_object_class
    _check_classes(loaded, data)

    def step_loss(x, mask, targets):
        layers = _outputs(model, x, mask, cfg.aux_loss)
        loss, parts = 0.0, {}
        for logits, boxes in layers:  # the last layer's parts are the ones reported
            layer_loss, parts, _ = set_loss(
                logits, boxes, targets, no_object_class=no_obj, cfg=loss_cfg
            )
            loss = loss + layer_loss
        return loss, parts

    metrics = _loop(model, data, loaded.info, cfg, step_loss)
    return {"stage": "train-detection", "config": asdict(cfg), **metrics}


def _outputs(model, x, mask, all_layers: bool) -> list:
    """[(logits, boxes)] of the final layer, or of every decoder layer (auxiliary losses)."""
    return model.forward_all_layers(x, mask) if all_layers else [model(x, mask)]


def _check_classes(loaded, data) -> None:
    if len(data.class_names) > loaded.info.num_classes:
        raise ConfigError(
            f"the data has {len(data.class_names)} classes but the detector predicts "
            f"{loaded.info.num_classes}",
            f"load the model with --num-classes {len(data.class_names)}",
        )


# ------------------------------------------------------------------------------ distillation


@dataclass
class DetDistillConfig(DetTrainConfig):
    kd_weight: float = 1.0  # weight of the logit + box imitation on matched queries
    temperature: float = 2.0
    score_threshold: float = 0.5  # teacher detections at least this confident become targets
    # > 0: also DETR's set loss against the data's own labels, at this weight (labelled data);
    # 0: the teacher alone supervises (unlabelled data works too).
    label_weight: float = 0.0


def teacher_targets(
    logits: torch.Tensor, boxes: torch.Tensor, *, no_object_class: bool, threshold: float
) -> list[dict[str, torch.Tensor]]:
    """The teacher's confident detections as set-loss targets; "query" keeps which query."""
    prob = logits.softmax(-1)[..., :-1] if no_object_class else logits.sigmoid()
    scores, labels = prob.max(-1)
    out = []
    for s, lab, bx in zip(scores, labels, boxes, strict=True):
        keep = torch.nonzero(s >= threshold).flatten()
        out.append({"labels": lab[keep], "boxes": bx[keep], "query": keep})
    return out


def _probs(logits: torch.Tensor, no_object_class: bool) -> torch.Tensor:
    return logits.softmax(-1) if no_object_class else logits.sigmoid()


def _foreground(logits: torch.Tensor, no_object_class: bool) -> torch.Tensor:
    """How likely each query holds an object: 1 - p(no object), or the best class's sigmoid."""
    if no_object_class:
        return 1 - logits.softmax(-1)[..., -1]
    return logits.sigmoid().max(-1).values


@torch.no_grad()
def match_queries(
    student_logits, student_boxes, teacher_logits, teacher_boxes, *, no_object_class: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, a one-to-one pairing of student and teacher queries (Hungarian) by how alike
    their class distributions (L1) and boxes (L1 + GIoU, weighted by the teacher's objectness)
    are. A compressed student's query i is usually still the teacher's query i; matching does
    not rely on it."""
    out = []
    for sl, sb, tl, tb in zip(
        student_logits.float(),
        student_boxes.float(),
        teacher_logits.float(),
        teacher_boxes.float(),
        strict=True,
    ):
        cost_class = torch.cdist(_probs(sl, no_object_class), _probs(tl, no_object_class), p=1)
        giou = generalized_box_iou(cxcywh_to_xyxy(sb), cxcywh_to_xyxy(tb))
        cost_box = 5 * torch.cdist(sb, tb, p=1) - 2 * giou
        cost = cost_class + _foreground(tl, no_object_class)[None, :] * cost_box
        out.append(assign(cost, "Hungarian matching for detection distillation"))
    return out


def kd_loss(
    student_logits,
    student_boxes,
    teacher_logits,
    teacher_boxes,
    *,
    no_object_class: bool,
    temperature: float,
) -> torch.Tensor:
    """Imitation of the teacher on matched queries: the class distribution (KL at a
    temperature, binary for sigmoid heads) on every query, and the box (L1) weighted by the
    teacher's confidence that the query holds an object."""
    pairs = match_queries(
        student_logits,
        student_boxes,
        teacher_logits,
        teacher_boxes,
        no_object_class=no_object_class,
    )
    b, sq, tq = pair_index(pairs, student_logits.device)
    s_log, t_log = student_logits[b, sq], teacher_logits[b, tq]
    temp = temperature
    if no_object_class:
        logit_kd = soft_kd(s_log, t_log, temp)
    else:
        logit_kd = (
            F.binary_cross_entropy_with_logits(s_log / temp, torch.sigmoid(t_log / temp)) * temp**2
        )
    weight = _foreground(t_log, no_object_class)
    box_l1 = (student_boxes[b, sq] - teacher_boxes[b, tq]).abs().sum(-1)
    box_kd = (weight * box_l1).sum() / weight.sum().clamp(min=1e-6)
    return logit_kd + box_kd


def distill_detector(student, teacher, data, cfg: DetDistillConfig | None = None) -> dict:
    """Train `student` in place to reproduce `teacher`'s detections on `data`; its labels join
    in with cfg.label_weight > 0."""
    cfg = cfg or DetDistillConfig()
    cfg.validate()
    if cfg.label_weight < 0:
        raise ConfigError(f"label weight must be >= 0, got {cfg.label_weight}", "e.g. 1.0")
    if not 0 < cfg.score_threshold < 1:
        raise ConfigError(
            f"score threshold must be in (0, 1), got {cfg.score_threshold}", "e.g. 0.5"
        )
    s_model = student.model.to(cfg.device)
    t_model = teacher.model.to(cfg.device).eval()
    if s_model.no_object_class != t_model.no_object_class or (
        student.info.num_classes != teacher.info.num_classes
    ):
        raise ConfigError(
            "the student and teacher detectors predict different class sets",
            "distil a student made from this teacher (same classes and head type)",
        )
    loss_cfg = cfg.loss or SetLossConfig()
    no_obj = s_model.no_object_class

    def step_loss(x, mask, targets):
        with torch.no_grad():
            t_logits, t_boxes = t_model(x, mask)
        pseudo = teacher_targets(
            t_logits, t_boxes, no_object_class=no_obj, threshold=cfg.score_threshold
        )
        layers = _outputs(s_model, x, mask, cfg.aux_loss)
        loss = 0.0
        for logits, boxes in layers[:-1]:  # auxiliary layers: the set loss only
            loss = loss + set_loss(logits, boxes, pseudo, no_object_class=no_obj, cfg=loss_cfg)[0]
        logits, boxes = layers[-1]
        final, parts, _ = set_loss(logits, boxes, pseudo, no_object_class=no_obj, cfg=loss_cfg)
        kd = kd_loss(
            logits, boxes, t_logits, t_boxes, no_object_class=no_obj, temperature=cfg.temperature
        )
        parts["kd"] = kd.item()
        loss = loss + final + cfg.kd_weight * kd
        if cfg.label_weight:
            labelled = sum(
                set_loss(lg, bx, targets, no_object_class=no_obj, cfg=loss_cfg)[0]
                for lg, bx in layers
            )
            parts["labels"] = float(labelled.detach())
            loss = loss + cfg.label_weight * labelled
        return loss, parts

    metrics = _loop(s_model, data, student.info, cfg, step_loss)
    return {"stage": "distill-detection", "config": asdict(cfg), **metrics}


# ------------------------------------------------------------------- `tvc train` for detectors

# Defaults by where the weights come from: DETR's fine-tuning recipe for trained weights, and
# what trains tvc's tiny configs from random weights (benchmarks/bench_detection.py). From
# scratch, a class weight of 2 (Deformable DETR's) gets DETR off its ln(classes) plateau several
# epochs sooner than the paper's 1 (measured on detr_micro / fashion-mnist-det).
FROM_SCRATCH = {"lr": 1e-3, "grad_clip": 0.1, "batch_size": 32, "class_weight": 2.0}
FINE_TUNE = {"lr": 1e-4, "grad_clip": 0.1, "batch_size": 16, "class_weight": 1.0}


def det_train_config(
    loaded: LoadedModel,
    *,
    epochs: int = 10,
    lr: float | None = None,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    grad_clip: float | None = None,
    seed: int = 0,
    device: str = "auto",
) -> DetTrainConfig:
    """A DetTrainConfig whose unset values depend on the start (FROM_SCRATCH for random
    weights, else FINE_TUNE: DETR's fine-tuning lr 1e-4, batch 16, class weight 1)."""
    from tvc.train.dist import pick_device

    base = FROM_SCRATCH if loaded.info.weights == "random" else FINE_TUNE
    cfg = DetTrainConfig(
        epochs=epochs,
        lr=base["lr"] if lr is None else lr,
        batch_size=base["batch_size"] if batch_size is None else batch_size,
        weight_decay=1e-4 if weight_decay is None else weight_decay,
        grad_clip=base["grad_clip"] if grad_clip is None else grad_clip,
        seed=seed,
        device=str(pick_device(device)),
        loss=SetLossConfig(class_weight=base["class_weight"]),
    )
    cfg.validate()
    return cfg


def train_detector_run(
    loaded: LoadedModel,
    data_spec: str,
    cfg: DetTrainConfig,
    *,
    limit: int | None = None,
    eval_limit: int | None = None,
    warmup_epochs: float | None = None,
    train: DetectionSet | None = None,
) -> dict[str, Any]:
    """Train detector `loaded` on `data_spec`'s train split and measure COCO mAP on its test
    split; returns the metrics for its artifact.

    `warmup_epochs`, when given, sets the warm-up in epochs instead of cfg.warmup_steps;
    `train`, when given, is the train split already read.
    """
    from dataclasses import replace

    from tvc.data.detection import load_detection
    from tvc.eval.detection import evaluate_model
    from tvc.models.detection import is_detector
    from tvc.train.dist import launched_by_torchrun

    if not is_detector(loaded):
        raise ConfigError(f"{loaded.info.name} is not a detector", "use tvc train for classifiers")
    if launched_by_torchrun():
        raise ConfigError(
            "detector training runs in one process, not under torchrun",
            "run 'tvc train' without torchrun (--device cuda uses one GPU)",
        )
    cfg.validate()
    # Scenes keep the dataset's own seed, so test numbers of different runs are comparable.
    if train is None:
        train = load_detection(data_spec, "train", limit=limit)
    test = load_detection(data_spec, "test", limit=eval_limit)
    if warmup_epochs is not None:
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        cfg = replace(cfg, warmup_steps=max(1, round(warmup_epochs * steps_per_epoch)))
    log.info(
        "training %s on %d %s scenes (%d objects), %d epoch(s), lr %g",
        loaded.info.name,
        len(train),
        train.name,
        train.num_objects,
        cfg.epochs,
        cfg.lr,
    )
    result = train_detector(loaded, train, cfg)
    detection = evaluate_model(loaded, test, device=cfg.device)
    log.info(
        "test mAP %.2f (AP50 %.2f) on %d images",
        detection["map"],
        detection["ap50"],
        detection["n"],
    )
    loaded.model.cpu().eval()
    return {
        "map": detection["map"],
        "ap50": detection["ap50"],
        "detection": detection,
        "training": {**result, "data": data_spec, "limit": limit},
    }
