"""`tvc compress`: prune -> low-rank -> distil one model, and write it as a model artifact.

The artifact holds weights.safetensors and, in artifact.json, the model's rebuild info with the
compressed structure (see structure.py), so `load_model(artifact)` rebuilds it without pickled
modules and every later step (export, bench, compress again) reads it like any other model.
Everything is computed before the artifact is written: a failed run leaves nothing behind.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.artifact import Artifact, load_artifact, write_artifact
from tvc.compress.lowrank import LowRankConfig
from tvc.compress.prune import PruneConfig
from tvc.errors import ConfigError, MissingDependencyError

if TYPE_CHECKING:
    from tvc.compress.distill import DistillConfig
    from tvc.models.load import LoadedModel

log = logging.getLogger("tvc")

SAMPLE_IMAGES = 32  # images for output agreement and low-rank errors (when --data is given)
RANDOM_SAMPLES = 8  # random inputs otherwise
TAYLOR_BATCHES, TAYLOR_BATCH_SIZE = 4, 32  # labelled images for taylor importance


@dataclass
class CompressConfig:
    prune: PruneConfig | None = None
    lowrank: LowRankConfig | None = None
    distill: DistillConfig | None = None

    def __post_init__(self) -> None:
        if self.prune is None and self.lowrank is None and self.distill is None:
            raise ConfigError(
                "compress has nothing to do",
                "pass --prune RATIO, --lowrank ENERGY / --lowrank-rank R, or --distill TEACHER",
            )

    def as_dict(self) -> dict[str, Any]:
        def part(c):
            if c is None:
                return None
            return c.as_dict() if hasattr(c, "as_dict") else dataclasses.asdict(c)

        return {"prune": part(self.prune), "lowrank": part(self.lowrank),
                "distill": part(self.distill)}  # fmt: skip


def compress_model(
    loaded: LoadedModel, cfg: CompressConfig, out: Path, *, data_spec: str | None = None
) -> Artifact:
    """Compress a copy of `loaded` by `cfg` and write the model artifact `out`."""

    from tvc.compress import report as rep
    from tvc.compress.structure import describe_structure
    from tvc.models.load import LoadedModel, build_from_info, save_model

    info = loaded.info
    original = loaded.model.eval()
    student = copy.deepcopy(original)
    samples, source = sample_inputs(info, data_spec)
    report: dict[str, Any] = {
        "model": info.name,
        "before": rep.summarize(original, info.input_size),
    }

    if cfg.prune is not None:
        from tvc.compress.prune import prune

        batches = None
        if cfg.prune.importance == "taylor":
            if data_spec is None:
                raise ConfigError(
                    "--importance taylor scores channels with gradients on labelled images",
                    "pass --data DATA (e.g. fashion-mnist), or use --importance magnitude",
                )
            batches = taylor_batches(info, data_spec)
        log.info("pruning %s by %.0f%%", info.name, cfg.prune.ratio * 100)
        report["prune"] = prune(student, cfg.prune, example_input=samples[:1], batches=batches)
        report["prune"]["agreement"] = rep.output_agreement(original, student, samples,
                                                            source=source)  # fmt: skip

    if cfg.lowrank is not None:
        from tvc.compress.lowrank import factorize

        log.info("factorizing the attention and MLP layers of %s", info.name)
        report["lowrank"] = factorize(student, cfg.lowrank, sample_inputs=samples)

    # The structure is relative to a fresh build of the architecture, so compressing a
    # compressed artifact again records the whole change, not only the last one.
    base = dataclasses.replace(info, structure=None)
    new_info = dataclasses.replace(
        info, structure=describe_structure(student, build_from_info(base))
    )
    _check_rebuild(student, new_info, samples[:1])

    if cfg.distill is not None:
        try:
            from tvc.compress.distill import distill
        except ImportError as exc:
            raise MissingDependencyError(
                f"distillation is not available in this tvc installation ({exc})",
                "update tvc, or compress without --distill",
            ) from exc
        student_loaded = LoadedModel(student, new_info, loaded.artifact)
        report["distill"] = distill(student_loaded, cfg.distill)
        student = student_loaded.model.eval()

    report["after"] = rep.summarize(student, info.input_size)
    report["agreement"] = rep.output_agreement(original, student, samples, source=source)
    report["ratios"] = {k: rep.ratio(report["after"][k], report["before"][k])
                        for k in ("params", "macs", "size_bytes")}  # fmt: skip

    spec = {"stage": "compress", "source": info.name, **cfg.as_dict(), "data": data_spec}
    metrics: dict[str, Any] = {
        "params": report["after"]["params"],
        "macs": report["after"]["macs"],
        "compression": report,
    }
    for key in ("top1", "top5", "accuracy"):  # distillation's accuracy travels with the model
        if isinstance(report.get("distill"), dict) and key in report["distill"]:
            metrics[key] = report["distill"][key]
    with write_artifact(out, "model", parent=loaded.artifact, spec=spec) as w:
        save_model(w, LoadedModel(student, new_info, loaded.artifact))
        w.meta["metrics"] = metrics
    return load_artifact(out)


def _check_rebuild(model, info, x) -> None:
    """The recorded structure must rebuild this exact model: refuse to write one that cannot."""
    import torch

    from tvc.models.load import build_from_info

    fresh = build_from_info(info)
    own, got = model.state_dict(), fresh.state_dict()
    wrong = [k for k in own if k not in got or got[k].shape != own[k].shape]
    if wrong or set(got) - set(own):
        raise RuntimeError(f"compressed structure does not rebuild: {(wrong or list(got))[:3]}")
    fresh.load_state_dict(own, strict=True)
    with torch.no_grad():
        if not torch.equal(fresh.eval()(x), model.eval()(x)):
            raise RuntimeError("the rebuilt compressed model computes something else")


# -------------------------------------------------------------------------------------- data


def _images(info, data_spec: str, split: str, limit: int):
    from tvc.data import load_images

    return load_images(data_spec, split, input_size=info.input_size, mean=info.mean,
                       std=info.std, limit=limit, seed=0)  # fmt: skip


def sample_inputs(info, data_spec: str | None):
    """Inputs for agreement and low-rank error: held-out images, else seeded random ones."""
    import torch

    if data_spec is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(RANDOM_SAMPLES, *info.input_size, generator=gen), "random inputs"
    data = _images(info, data_spec, "val", SAMPLE_IMAGES)
    x, _ = next(iter(data.batches(SAMPLE_IMAGES)))
    return torch.from_numpy(x), f"{data.name} {data.split} images"


def taylor_batches(info, data_spec: str):
    import torch

    data = _images(info, data_spec, "train", TAYLOR_BATCHES * TAYLOR_BATCH_SIZE)
    return [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data.batches(TAYLOR_BATCH_SIZE)]
