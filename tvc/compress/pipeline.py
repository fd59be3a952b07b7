"""One compress pipeline for every task: prune -> low-rank -> token merging -> distil, then a
model artifact.

What differs between tasks (how to prune, which outputs to compare, the metric, the
distillation loss) is asked of the task adapter (tvc.tasks); the steps, the rebuild proof, the
quality checkpoints and the artifact are the same for all. The artifact holds
weights.safetensors and, in artifact.json, the model's rebuild info with the compressed
structure (see tvc.models.structure), so `load_model(artifact)` rebuilds it without pickled
modules. Everything is computed before the artifact is written: a failed run leaves nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from tvc.artifact import Artifact
    from tvc.models.load import LoadedModel
    from tvc.stages.compress import Config
    from tvc.tasks import Task

log = logging.getLogger("tvc")

SAMPLE_INPUTS = 32  # held-out inputs for output agreement and low-rank errors
RANDOM_SAMPLES = 8  # random inputs when there is no data
TAYLOR_BATCHES, TAYLOR_BATCH_SIZE = 4, 32  # labelled images for taylor importance
DATA_BATCHES = 8  # batches of TAYLOR_BATCH_SIZE images for data importance (labels unused)


def compress_model(
    task: Task,
    loaded: LoadedModel,
    cfg: Config,
    out: Path,
    *,
    teacher: LoadedModel | None = None,
    latency: Callable[[LoadedModel], dict[str, Any]] | None = None,
) -> Artifact:
    """Compress a copy of `loaded` as `cfg` asks, distil it from `teacher` when cfg.distill
    is set, and write the model artifact `out` with the report in metrics["compression"].
    `latency(student)` (from --target-latency) times the result; its report is kept too."""
    from tvc.compress import report as rep
    from tvc.compress.merge import merge, merging_suspended, parse_schedule
    from tvc.compress.target import ratio_line, width_ratio_for_params
    from tvc.models.load import LoadedModel, build_from_info, write_model_artifact
    from tvc.models.structure import describe_structure
    from tvc.train.dist import pick_device

    info = loaded.info
    original = loaded.model.eval()
    student = LoadedModel(
        copy.deepcopy(original).eval(), dataclasses.replace(info), loaded.artifact
    )
    settings = cfg.model_dump(exclude_unset=True)
    settings.setdefault("round_to", cfg.round_to)
    n = SAMPLE_INPUTS if cfg.data else RANDOM_SAMPLES
    samples, source = task.sample_inputs(info, cfg.data, n)
    reference = task.outputs(original, samples)
    task.check_finite(reference, f"the source model {info.name}")
    report: dict[str, Any] = {
        "model": info.name,
        "task": task.name,
        "metric": task.metric,
        "metric_label": task.metric_label,
        "teacher": None
        if teacher is None
        else ("source" if teacher is loaded else teacher.info.name),
        "before": rep.summarize(original, info.input_size),
    }

    lowrank = cfg.lowrank_config()
    # Widths first, on the model without token merging (a merged source keeps its schedule).
    with merging_suspended(student.model):
        if cfg.prune is not None or cfg.prune_params is not None:
            batches = None
            if cfg.importance in ("taylor", "data"):  # data reads the images only
                n = TAYLOR_BATCHES if cfg.importance == "taylor" else DATA_BATCHES
                batches = task.taylor_batches(info, cfg.data, n, TAYLOR_BATCH_SIZE)
            if cfg.prune_params is not None:  # solve the width ratio before any training
                solved = width_ratio_for_params(task, student.model, settings, cfg.prune_params,
                                                example=samples[:1], batches=batches)  # fmt: skip
                cfg = cfg.model_copy(update={"prune": solved.ratio})
                settings["prune"] = solved.ratio
            log.info("pruning %s by %.1f%% of each width", info.name, cfg.prune * 100)
            report["prune"] = task.prune(
                student.model, settings, example=samples[:1], batches=batches
            )
            report["prune"].setdefault("ratio", cfg.prune)
            pruned = rep.summarize(student.model, info.input_size)
            report["prune"]["params_ratio"] = rep.ratio(
                pruned["params"], report["before"]["params"]
            )
            report["prune"]["macs_ratio"] = rep.ratio(pruned["macs"], report["before"]["macs"])
            if cfg.prune_params is not None:
                report["prune"]["params_target"] = {"remove": cfg.prune_params,
                                                    "kept": round(solved.kept, 4)}  # fmt: skip
            log.info("%s", ratio_line(cfg.prune, report["prune"]["params_ratio"],
                                      report["prune"]["macs_ratio"]))  # fmt: skip
            report["prune"]["agreement"] = _agreement(
                task, reference, student.model, samples, source
            )
            _warn_collapse(report["prune"])
        if lowrank is not None:
            log.info("factorizing the attention and MLP layers of %s", info.name)
            report["lowrank"] = task.factorize(student.model, lowrank, samples=samples)
    if cfg.merge_tokens is not None:
        report["merge"] = merge(
            student.model,
            parse_schedule(cfg.merge_tokens),
            info.input_size,
            metric=cfg.merge_metric,
        )
        log.info("merging tokens of %s: %s per block", info.name, report["merge"]["schedule"])
        if report["merge"]["clamped"]:  # say so: the user asked for more than the tokens allow
            log.warning(
                "--merge-tokens asked %s; capped at half the patch tokens left before each block",
                report["merge"]["requested"],
            )
        report["merge"]["agreement"] = _agreement(task, reference, student.model, samples, source)

    # The structure is relative to a fresh build of the architecture, so compressing a
    # compressed artifact again records the whole change, not only the last one.
    fresh = build_from_info(dataclasses.replace(info, structure=None))
    student.info = dataclasses.replace(info, structure=describe_structure(student.model, fresh))
    _check_rebuild(task, student, samples[:1])

    quality: dict[str, Any] = {}
    device = pick_device(cfg.device or "auto")
    # Quality on the test split: always when distilling, else when --eval-limit asks for it.
    measure = cfg.data is not None and (teacher is not None or cfg.eval_limit is not None)
    test = task.load_data(cfg.data, "test", info, limit=cfg.eval_limit) if measure else None
    if test is not None:
        quality["source"] = task.quality(loaded, test, device=device)
        if cfg.prune is not None or lowrank is not None or cfg.merge_tokens is not None:
            quality["compressed"] = task.quality(
                student, test, reference=teacher or loaded, device=device
            )
    if teacher is not None:
        log.info("distilling %s from %s", info.name, report["teacher"])
        report["distill"] = task.distill(student, teacher, cfg.data, settings)
        student.model.cpu().eval()
        quality["distilled"] = task.quality(student, test, reference=teacher, device=device)
    task.check_finite(task.outputs(student.model, samples), f"the compressed {info.name}")

    report["after"] = rep.summarize(student.model, info.input_size)
    report["agreement"] = _agreement(
        task, task.outputs((teacher or loaded).model, samples), student.model, samples, source
    )
    report["ratios"] = {
        k: rep.ratio(report["after"][k], report["before"][k])
        for k in ("params", "macs", "size_bytes")
    }
    report["quality"] = quality
    if latency is not None:
        report["latency_target"] = latency(student)
    metrics: dict[str, Any] = {
        "params": report["after"]["params"],
        "macs": report["after"]["macs"],
        "compression": report,
    }
    final = quality.get("distilled") or quality.get("compressed")
    if final is not None:  # the model's own quality travels with it (tvc export copies it)
        metrics.update(task.headline(final))
    spec = {
        "stage": "compress",
        "task": task.name,
        "source": info.name,
        "prune": _prune_spec(cfg) if cfg.prune is not None else None,
        "lowrank": lowrank.as_dict() if lowrank is not None else None,
        "merge": _merge_spec(report["merge"]) if cfg.merge_tokens is not None else None,
        "distill": {"teacher": report["teacher"], **settings} if teacher else None,
        "data": cfg.data,
        "options": cfg.model_dump(mode="json", exclude_unset=True, exclude={"force"}),
    }
    return write_model_artifact(student, out, spec=spec, metrics=metrics, force=cfg.force)


def _prune_spec(cfg: Config) -> dict[str, Any]:
    return {
        "ratio": cfg.prune,
        "importance": cfg.importance,
        "global_pruning": cfg.global_,
        "prune_heads": cfg.prune_heads,
        "round_to": cfg.round_to,
        "keep": list(cfg.keep),
        "steps": cfg.steps,
        "seed": cfg.seed,
        "params_target": cfg.prune_params,
    }


COLLAPSE_AGREEMENT = 0.5  # below this output agreement with the parent, pruning has collapsed


def _warn_collapse(prune_report: dict[str, Any]) -> None:
    """Say loudly (terminal and artifact) when the pruned model no longer follows its parent."""
    agree = prune_report["agreement"].get("agreement")
    if agree is None or agree >= COLLAPSE_AGREEMENT:
        return
    prune_report["warning"] = (
        f"pruning collapsed the model: agreement with its parent {agree:.1%} on "
        f"{prune_report['agreement']['inputs']}; prune less or add --distill to recover"
    )
    log.warning("PRUNING COLLAPSED: %s", prune_report["warning"])


def _merge_spec(merged: dict[str, Any]) -> dict[str, Any]:
    return {k: merged[k] for k in ("requested", "schedule", "proportional_attention", "metric")}


def _agreement(task: Task, reference, candidate, samples, source: str) -> dict[str, Any]:
    return {"inputs": source, **task.agreement(reference, task.outputs(candidate, samples))}


def _check_rebuild(task: Task, student: LoadedModel, x) -> None:
    """The recorded structure must rebuild this exact model: refuse to write one that cannot."""
    import numpy as np

    from tvc.models.load import build_from_info

    fresh = build_from_info(student.info)
    own, got = student.model.state_dict(), fresh.state_dict()
    wrong = [k for k in own if k not in got or got[k].shape != own[k].shape]
    if wrong or set(got) - set(own):
        raise RuntimeError(f"compressed structure does not rebuild: {(wrong or list(got))[:3]}")
    fresh.load_state_dict(own, strict=True)
    a, b = task.outputs(fresh, x), task.outputs(student.model, x)
    if any(not np.array_equal(a[k], b[k]) for k in a):
        raise RuntimeError("the rebuilt compressed model computes something else")
