"""`tvc compress` for DETR and Deformable DETR: prune -> low-rank -> distil, then a model artifact.

The structural steps are tvc.compress.detection's (heads and FFN channels, low-rank projections);
distillation is tvc.train.detection's (the teacher's detections as set-loss targets, logit and
box imitation on matched queries). The teacher is the uncompressed source unless another
detector is given. With detection data, COCO mAP is measured on its test split for the source,
after pruning / factorizing and after distillation, with the student's agreement with the
teacher (the student's mAP against the teacher's confident detections).

Everything is computed before the artifact is written, and the recorded structure must rebuild
the exact model: a failed run leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.errors import ConfigError, UnsupportedModelError

if TYPE_CHECKING:
    import torch

    from tvc.artifact import Artifact
    from tvc.compress.detection import DetPruneConfig
    from tvc.compress.lowrank import LowRankConfig
    from tvc.data.detection import DetectionSet
    from tvc.models.load import LoadedModel
    from tvc.train.detection import DetDistillConfig

log = logging.getLogger("tvc")

SAMPLE_IMAGES = 16  # test scenes (or random inputs) for the output agreement with the teacher


@dataclass
class DetCompressConfig:
    prune: DetPruneConfig | None = None
    lowrank: LowRankConfig | None = None
    distill: DetDistillConfig | None = None
    data: str | None = None  # detection DATA: distillation (train split), mAP (test split)
    limit: int | None = None  # training scenes for distillation
    eval_limit: int | None = None  # test scenes for mAP

    def validate(self) -> None:
        if self.prune is None and self.lowrank is None and self.distill is None:
            raise ConfigError(
                "compress has nothing to do",
                "pass --prune RATIO, --lowrank ENERGY / --lowrank-rank R, or --distill [TEACHER]",
            )
        if self.distill is not None and self.data is None:
            raise ConfigError("--distill needs --data to train on", "e.g. --data fashion-mnist-det")
        if self.prune is not None:
            self.prune.validate()
        if self.distill is not None:
            self.distill.validate()

    def as_dict(self) -> dict[str, Any]:
        def part(c):
            if c is None:
                return None
            return c.as_dict() if hasattr(c, "as_dict") else dataclasses.asdict(c)

        return {
            "prune": part(self.prune),
            "lowrank": part(self.lowrank),
            "distill": part(self.distill),
            "data": self.data,
            "limit": self.limit,
            "eval_limit": self.eval_limit,
        }


def compress_detector_model(
    loaded: LoadedModel,
    out: str | Path,
    cfg: DetCompressConfig,
    *,
    teacher: LoadedModel | None = None,
    spec: dict[str, Any] | None = None,
) -> Artifact:
    """Compress a copy of detector `loaded` by `cfg`, distil it from `teacher` (default: `loaded`
    itself) and write the model artifact `out`, its report in metrics["compression"]."""
    from tvc.compress.detection import compress_detector
    from tvc.compress.report import summarize
    from tvc.data.detection import load_detection
    from tvc.eval.detection import evaluate_model
    from tvc.models.detection import is_detector
    from tvc.models.load import LoadedModel, ModelInfo, write_model_artifact

    cfg.validate()
    for who, m in (("the model", loaded), ("the teacher", teacher)):
        if m is not None and not is_detector(m):
            raise UnsupportedModelError(
                f"{who} ({m.info.name}) is not a detector",
                "distil a detector from a detector (e.g. its uncompressed source)",
            )
    teacher = teacher or loaded
    if cfg.distill is not None and teacher.artifact is None and teacher.info.weights == "random":
        raise ConfigError(
            f"the teacher {teacher.info.name} has random weights, so there is nothing to learn "
            "from it",
            "distil from a trained detector: a tvc train artifact, or --weights for MODEL",
        )
    info = loaded.info
    loaded.model.eval()
    test = load_detection(cfg.data, "test", limit=cfg.eval_limit) if cfg.data else None
    device = _device(cfg)
    report: dict[str, Any] = {
        "model": info.name,
        "task": "detection",
        "teacher": "source" if teacher is loaded else teacher.info.name,
        "before": summarize(loaded.model, info.input_size),
    }
    structural = cfg.prune is not None or cfg.lowrank is not None
    if structural:
        student, changes = compress_detector(loaded, prune=cfg.prune, lowrank=cfg.lowrank)
        report.update({k: changes[k] for k in ("prune", "lowrank") if k in changes})
    else:  # distillation only: the student starts as a copy of the source
        student = LoadedModel(
            copy.deepcopy(loaded.model).eval(),
            ModelInfo.from_json(info.to_json()),
            loaded.artifact,
        )
    samples, source = _samples(student, test)
    _check_rebuild(student, samples[:1])

    detection: dict[str, Any] = {}
    if test is not None:
        detection["source"] = evaluate_model(loaded, test, device=device)
        if structural:
            detection["compressed"] = evaluate_model(
                student, test, device=device, reference=teacher
            )

    if cfg.distill is not None:
        from tvc.train.detection import distill_detector

        train = load_detection(cfg.data, "train", limit=cfg.limit)
        log.info(
            "distilling %s from %s on %d scenes for %d epoch(s)",
            student.info.name,
            report["teacher"],
            len(train),
            cfg.distill.epochs,
        )
        dcfg = dataclasses.replace(cfg.distill, device=device)
        report["distill"] = distill_detector(student, teacher, train, dcfg)
        detection["distilled"] = evaluate_model(student, test, device=device, reference=teacher)

    for m in (student, teacher, loaded):
        m.model.cpu().eval()
    report["after"] = summarize(student.model, info.input_size)
    report["params_before"], report["params_after"] = (
        report["before"]["params"],
        report["after"]["params"],
    )
    report["agreement"] = output_agreement(teacher.model, student.model, samples, source=source)
    report["detection"] = detection
    metrics: dict[str, Any] = {
        "params": report["after"]["params"],
        "macs": report["after"]["macs"],
        "compression": report,
    }
    final = detection.get("distilled") or detection.get("compressed")
    if final is not None:  # travels with the model, as `tvc export` copies map / ap50
        metrics.update(map=final["map"], ap50=final["ap50"], detection=final)
    full_spec = {
        "stage": "compress",
        "task": "detection",
        "source": info.name,
        "teacher": report["teacher"],
        **cfg.as_dict(),
        **(spec or {}),
    }
    return write_model_artifact(student, out, spec=full_spec, metrics=metrics)


def _device(cfg: DetCompressConfig) -> str:
    from tvc.train.dist import pick_device

    return str(pick_device(cfg.distill.device if cfg.distill else "cpu"))


def _samples(loaded: LoadedModel, test: DetectionSet | None) -> tuple[torch.Tensor, str]:
    """Test scenes when there is data, else seeded random inputs."""
    import numpy as np
    import torch

    info = loaded.info
    if test is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(8, *info.input_size, generator=gen), "random inputs"
    sub = test.subset(min(SAMPLE_IMAGES, len(test)))
    x = np.concatenate(
        [b[0] for b in sub.batches(64, input_size=info.input_size, mean=info.mean, std=info.std)]
    )
    return torch.from_numpy(x), f"{test.name} {test.split} images"


def output_agreement(
    reference: torch.nn.Module, candidate: torch.nn.Module, x: torch.Tensor, *, source: str
) -> dict[str, Any]:
    """How closely the candidate's outputs follow the reference's, query by query (pruning and
    factorizing keep the queries in place; distillation matches them to the teacher's)."""
    import torch

    with torch.no_grad():
        ref_l, ref_b = reference.eval()(x)
        got_l, got_b = candidate.eval()(x)
    return {
        "inputs": source,
        "n": int(x.shape[0]),
        "class_agreement": float((ref_l.argmax(-1) == got_l.argmax(-1)).double().mean()),
        "logits_max_abs_diff": float((got_l - ref_l).abs().max()),
        "boxes_mean_abs_diff": float((got_b - ref_b).abs().mean()),
    }


def _check_rebuild(student: LoadedModel, x) -> None:
    """The recorded structure must rebuild this exact model: refuse to write one that cannot."""
    import torch

    from tvc.models.load import build_from_info

    fresh = build_from_info(student.info)
    own, got = student.model.state_dict(), fresh.state_dict()
    wrong = [k for k in own if k not in got or got[k].shape != own[k].shape]
    if wrong or set(got) - set(own):
        raise RuntimeError(f"compressed detector does not rebuild: {(wrong or list(got))[:3]}")
    fresh.load_state_dict(own, strict=True)
    with torch.no_grad():
        a, b = fresh.eval()(x), student.model.eval()(x)
    if not all(torch.equal(u, v) for u, v in zip(a, b, strict=True)):
        raise RuntimeError("the rebuilt compressed detector computes something else")


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What a detector compression did, a line each, for the terminal."""
    lines = []
    prune = report.get("prune")
    if prune:
        heads = [h for e in prune["layers"] for h in e.get("heads", {}).values()]
        ffn = [f for e in prune["layers"] if "ffn" in e for f in [e["ffn"]]]
        lines.append(
            f"pruned {prune['ratio']:.0%}: attention heads {sum(h[0] for h in heads)} -> "
            f"{sum(h[1] for h in heads)}, FFN channels {sum(f[0] for f in ffn)} -> "
            f"{sum(f[1] for f in ffn)}"
        )
    lowrank = report.get("lowrank")
    if lowrank:
        lines.append(
            f"low-rank: {lowrank['factorized']} of {len(lowrank['layers'])} layers factorized"
        )
    det = report.get("detection") or {}
    stages = [("source", "source"), ("compressed", "compressed"), ("distilled", "distilled")]
    parts = [f"{label} {det[k]['map']:.2f}" for k, label in stages if k in det]
    if parts:
        last = det.get("distilled") or det.get("compressed") or det["source"]
        agree = last.get("agreement")
        with_teacher = f"; agreement with the teacher mAP {agree:.2f}" if agree is not None else ""
        lines.append(
            f"mAP: {', '.join(parts)} on {last['n']} {last['dataset']} {last['split']} "
            f"images{with_teacher}"
        )
    d = report.get("distill")
    if d:
        lines.append(f"distillation: {d['epochs']} epoch(s), {d['steps']} steps, {d['seconds']} s")
    a = report["agreement"]
    lines.append(
        f"outputs vs teacher on {a['n']} {a['inputs']}: class agreement "
        f"{a['class_agreement']:.1%}, boxes mean abs diff {a['boxes_mean_abs_diff']:.3g}"
    )
    return lines
