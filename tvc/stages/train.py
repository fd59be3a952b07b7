"""The train stage: train or fine-tune MODEL on DATA and write a model artifact with its quality.

The task adapter trains (classifiers with tvc.train.loop, detectors with DETR's set loss) and
evaluates on the test split; this stage checks the request and writes the artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tvc.stages.config import ModelOptions, OutputOptions, option

if TYPE_CHECKING:
    from tvc.artifact import Artifact
    from tvc.models.load import LoadedModel
    from tvc.tasks import Task

SUMMARY = "train or fine-tune a model on a dataset and write it with its test quality"


class Config(ModelOptions, OutputOptions):
    output: str = option(
        ..., "Model artifact directory to write (checkpoints go to OUT.ckpt/).", flag="-o/--output"
    )
    data: str = option(
        ...,
        "fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors fashion-mnist-det "
        "or a COCO-format directory.",
    )
    epochs: int = Field(10, ge=1, description="Epochs.")
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate [default: 1e-3; detectors: 1e-3 from random weights, "
        "1e-4 (DETR's fine-tuning rate) from trained ones].",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Global batch, split over torchrun processes [default: 128; detectors: 32 "
        "from random weights, 16 from trained ones].",
    )
    input_size: int | None = Field(
        None,
        ge=1,
        description="Input resolution (model names, and Hugging Face detector directories).",
    )
    num_queries: int | None = Field(
        None,
        ge=1,
        description="Detectors: object queries, the most objects one image can yield "
        "[default: max(10, 1.5 x the most objects in one training image); a Hugging Face "
        "checkpoint keeps its own when they suffice]. Changing a checkpoint's re-initialises "
        "its query embeddings.",
    )
    limit: int | None = Field(
        None, ge=1, description="Train on a seeded subset of this many images."
    )
    eval_limit: int | None = Field(
        None, ge=1, description="Validate/test on subsets of this many images."
    )
    weight_decay: float | None = Field(
        None, ge=0, description="AdamW weight decay [default: 0.05; detectors: 1e-4]."
    )
    warmup_epochs: float | None = Field(
        None,
        ge=0,
        description="Linear warm-up [default: 1 epoch; detectors: min(50 steps, 10% of all "
        "steps)].",
    )
    grad_clip: float | None = Field(
        None,
        ge=0,
        description="Max gradient norm, 0 for none [default: 1.0; detectors: 0.1, DETR's, "
        "from random or trained weights].",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="Classifiers only.")
    augment: bool = option(
        True,
        "Random crop and horizontal flip (classifiers; iGPT fine-tuning only when given).",
        flag="--augment/--no-augment",
        show_default=True,
    )
    seed: int = option(0, "Seed of the fresh weights, the data order and augmentation.")
    finetune: bool = option(
        False,
        "Image GPT: fine-tune for classification on the labels (default: pretrain on "
        "next-pixel likelihood).",
    )
    ema: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Image GPT: keep a running average of the weights with this decay (e.g. "
        "0.999) and save the average.",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N.")
    resume: bool = option(
        False, "Continue from OUT.ckpt/ after an interruption (classifiers only)."
    )
    no_progress: bool = option(False, "No progress bar.")


def run(cfg: Config):
    """Train cfg.model on cfg.data and write the model artifact cfg.output (None on the
    non-main processes of a torchrun job)."""
    import torch

    from tvc.stages.common import check_data_task, claim_output, refuse_options, task_of_model

    task = task_of_model(cfg.model, "training")
    refuse_options(task, "train", cfg)
    check_data_task(task, cfg.model, cfg.data)
    claim_output(cfg, cfg.model, cfg.weights, cfg.data)
    torch.manual_seed(cfg.seed)  # the same fresh weights in every process, for the same --seed
    is_path = Path(cfg.model).exists()
    settings: dict[str, Any] = cfg.model_dump(exclude_unset=True)
    kwargs = {
        **cfg.model_kwargs(),
        "warn_random": False,
        "input_size": None if is_path else cfg.input_size,
        **task.training_model_kwargs(cfg.model, cfg.data, settings),
    }
    loaded = task.load_model(cfg.model, **kwargs)
    settings.update(output=cfg.output, model=cfg.model)
    metrics = task.train(loaded, cfg.data, settings)
    if metrics is None:  # not rank 0 of a torchrun job: rank 0 writes
        return None
    options = cfg.model_dump(mode="json", exclude_unset=True, exclude={"force"})
    return save_trained(
        task,
        loaded,
        cfg.data,
        metrics,
        cfg.output,
        spec={"model": cfg.model, "options": options},
        force=cfg.force,
    )


def save_trained(
    task: Task,
    loaded: LoadedModel,
    data: str,
    metrics: dict[str, Any],
    out: str | Path,
    *,
    spec: dict[str, Any] | None = None,
    force: bool | None = None,
) -> Artifact:
    """Write a model `task.train` has trained as the model artifact `out`, with `metrics`
    plus its size and MACs, and lineage from the model it started from."""
    from tvc.compress.report import count_macs
    from tvc.models.load import write_model_artifact

    info = loaded.info
    info.weights = f"tvc train on {data}, starting from {info.weights}"
    metrics = {
        **metrics,
        "params": int(sum(p.numel() for p in loaded.model.parameters())),
        "macs": count_macs(loaded.model.eval(), info.input_size),
    }
    full = {
        "step": "train",
        "task": task.name,
        "data": data,
        **(spec or {}),
        "config": metrics.get("training", {}).get("config"),
    }
    return write_model_artifact(loaded, out, spec=full, metrics=metrics, force=force)
