"""The compress stage: prune, factorize and/or distil MODEL into a smaller model artifact.

Every task goes through the same steps (tvc.compress.pipeline); what differs between
classifiers, detectors and the rest lives in their task adapter (tvc.tasks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tvc.errors import ConfigError
from tvc.stages.common import same_model
from tvc.stages.config import ModelOptions, OutputOptions, cli_flag, default_output, option

SUMMARY = "prune, factorize and/or distil a model into a smaller model artifact"

log = logging.getLogger("tvc")

_PRUNE_ONLY = ("importance", "global_", "prune_heads", "keep", "steps", "seed")
_TARGET_CHOOSES = ("prune", "prune_params", "merge_tokens", "lowrank", "lowrank_rank")
_DISTILL_ONLY = (
    "teacher_weights",
    "epochs",
    "kd",
    "temperature",
    "alpha",
    "limit",
    "lr",
    "batch_size",
    "device",
)


class Config(ModelOptions, OutputOptions):
    # MODEL may be left out when --distill names a model: that model is then compressed and
    # distilled from its own uncompressed self (`tvc compress --prune 0.3 --distill vit_b16`).
    model: str | None = option(None, "", argument=True)
    output: str | None = option(
        None,
        "Artifact directory to write [default: MODEL's name + '-compressed', here].",
        flag="-o/--output",
    )
    input_size: int | None = Field(
        None,
        ge=1,
        description="Input resolution for a model name or Hugging Face directory (position "
        "embeddings are resampled as the model family does); recorded in the artifact.",
    )
    prune: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Structured pruning: fraction of EVERY width to remove (attention heads or "
        "head dims, MLP/FFN channels, and the embedding unless --keep embed), in (0, 1). "
        "Parameters fall faster than widths: --prune 0.3 leaves about half of a ViT's "
        "parameters. For a parameter target use --prune-params.",
    )
    prune_params: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Structured pruning to a parameter target: fraction of the PARAMETERS to "
        "remove, in (0, 1); the width ratio that reaches it (within about 2%) is found by "
        "bisection over the model's structure before any training.",
    )
    importance: Literal["magnitude", "data", "taylor", "random"] = option(
        "magnitude",
        "Channel importance. data (recommended with --data): feature-matching Fisher on 128 "
        "--data images, no labels used; taylor: loss gradients on labelled --data; random: the "
        "control (--seed).",
    )
    global_: bool = Field(
        False,
        alias="global",
        description="Rank channels and heads across blocks (default: per block).",
    )
    prune_heads: bool = option(
        False, "Remove whole attention heads (default: dimensions of every head)."
    )
    round_to: int = Field(
        8, ge=1, description="Kept widths and low-rank ranks are multiples of this (alignment)."
    )
    keep: list[str] = option(
        lambda: ["head"],
        "Leave unpruned: head (the classifier's outputs, always kept), embed (the residual "
        "width), attn, mlp, or a block such as blocks.0; repeat or use commas.",
        multiple=True,
    )
    steps: int = Field(
        1, ge=1, description="Iterative pruning: reach the ratio in this many steps."
    )
    seed: int = Field(
        0, ge=0, description="Seed of --importance random (the control) and data's projections."
    )
    lowrank: float | None = Field(
        None, gt=0, le=1, description="Low-rank: spectral energy to keep per layer, in (0, 1]."
    )
    lowrank_rank: float | None = Field(
        None, gt=0, description="Low-rank: a fixed rank (64) or a fraction of full rank (0.25)."
    )
    merge_tokens: str | None = option(
        None,
        "Token merging (ToMe): merge R tokens after each block's attention, or a schedule "
        "R1,R2,... with one value per block.",
        metavar="R",
    )
    merge_metric: Literal["keys", "tokens"] = option(
        "keys",
        "What token merging compares: keys (the attention keys, as ToMe does) or tokens (the "
        "token features after attention, standardized as LayerNorm does; keeps more accuracy "
        "on some models, benchmarks/results/merge.md).",
    )
    target_latency: float | None = Field(
        None,
        gt=0,
        description="Latency target in ms (batch 1): choose the width prune ratio, low-rank "
        "factorization and token merging per block predicted to meet it with the most "
        "agreement with the parent, then time the result (ViT/DeiT/DINOv2; a table is "
        "measured here unless --latency-table).",
    )
    on: str | None = option(
        None,
        "Backend and threads that --target-latency is for: ort:THREADS (default ort:1).",
        metavar="BACKEND:THREADS",
    )
    latency_table: str | None = option(
        None,
        "Latency table JSON for --target-latency: read when it exists (e.g. measured on a "
        "board), else measured here and written there.",
        metavar="FILE",
    )
    distill: str | None = option(
        None,
        "Distil from this teacher MODEL after pruning / factorizing; alone, from the "
        "uncompressed MODEL itself.",
        metavar="[TEACHER]",
        flag_value="",
    )
    teacher_weights: str | None = option(None, "Weights for a teacher given by architecture name.")
    data: str | None = option(
        None,
        "Distillation data, taylor importance and agreement samples; for detectors detection "
        "data (fashion-mnist-det, COCO): distillation scenes and mAP on its test split.",
    )
    epochs: int | None = Field(None, ge=1, description="Distillation epochs (default 1).")
    lr: float | None = Field(
        None, gt=0, description="Distillation peak learning rate (default 5e-4)."
    )
    batch_size: int | None = Field(
        None, ge=1, description="Distillation batch (default 128; detectors 16)."
    )
    device: str | None = option(None, "Distillation device: auto (default), cpu, cuda:N.")
    eval_limit: int | None = Field(
        None,
        ge=1,
        description="Measure quality on this many --data test images, before and after "
        "(distillation measures on the whole test split by default).",
    )
    kd: Literal["soft", "hard", "token"] | None = option(None, "Distillation loss (default soft).")
    temperature: float | None = Field(None, gt=0, description="Soft KD temperature (default 4).")
    alpha: float | None = Field(
        None, ge=0, le=1, description="Weight of the KD loss (default 0.5)."
    )
    limit: int | None = Field(None, ge=1, description="Use at most N training images to distil.")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        typed = self.model_fields_set

        def first(names: tuple[str, ...]) -> str | None:
            hit = next((n for n in names if n in typed), None)
            return cli_flag(hit, type(self).model_fields[hit]) if hit else None

        if self.prune is not None and self.prune_params is not None:
            raise ConfigError(
                "--prune and --prune-params set the pruning in two ways",
                "pass --prune (fraction of each width) or --prune-params (fraction of the "
                "parameters), not both",
            )
        pruning = (self.prune, self.prune_params, self.target_latency)
        if all(v is None for v in pruning) and (stray := first(_PRUNE_ONLY)):
            raise ConfigError(
                f"{stray} only applies with --prune", "add --prune RATIO or drop the option"
            )
        if self.distill is None and (stray := first(_DISTILL_ONLY)):
            raise ConfigError(
                f"{stray} only applies with --distill", "add --distill TEACHER or drop the option"
            )
        if self.eval_limit is not None and self.data is None:
            raise ConfigError("--eval-limit needs --data", "add --data DATA or drop --eval-limit")
        if self.lowrank is not None and self.lowrank_rank is not None:
            raise ConfigError(
                "--lowrank and --lowrank-rank choose the rank in two ways", "pass only one of them"
            )
        r = self.lowrank_rank
        if r is not None and r >= 1 and r != int(r):
            raise ConfigError(
                f"--lowrank-rank {r} is neither a whole rank nor a fraction below 1",
                "e.g. --lowrank-rank 64 or --lowrank-rank 0.25",
            )
        if self.target_latency is not None and (stray := first(_TARGET_CHOOSES)):
            raise ConfigError(
                f"--target-latency chooses the pruning, low-rank and token merging itself, so "
                f"{stray} "
                "cannot be given with it",
                f"drop {stray}, or drop --target-latency and set the compression by hand",
            )
        merging = (self.merge_tokens, self.target_latency)
        if all(v is None for v in merging) and (stray := first(("merge_metric",))):
            raise ConfigError(
                f"{stray} only applies with --merge-tokens or --target-latency",
                "add --merge-tokens R or drop the option",
            )
        if self.target_latency is None and (stray := first(("on", "latency_table"))):
            raise ConfigError(
                f"{stray} only applies with --target-latency",
                "add --target-latency MS or drop the option",
            )
        if self.on is not None:
            from tvc.stages.latency import parse_on

            parse_on(self.on)
        if self.merge_tokens is not None:
            from tvc.compress.merge import parse_schedule

            parse_schedule(self.merge_tokens)
        nothing = (self.prune, self.prune_params, self.lowrank, r, self.distill,
                   self.merge_tokens, self.target_latency)  # fmt: skip
        if all(v is None for v in nothing):
            raise ConfigError(
                "compress has nothing to do",
                "pass --prune RATIO, --prune-params FRACTION, --lowrank ENERGY / "
                "--lowrank-rank R, --merge-tokens R, --target-latency MS, or --distill [TEACHER]",
            )
        if self.model is None and not self.distill:
            raise ConfigError(
                "compress needs a MODEL",
                "pass MODEL, or --distill MODEL to compress that model and distil it from its "
                "uncompressed self",
            )
        both = None not in (self.weights, self.teacher_weights)
        if self.model is None and both and self.weights != self.teacher_weights:
            raise ConfigError(
                f"--weights and --teacher-weights name two files for the one model {self.distill}",
                "pass only one of them",
            )
        return self

    def resolved(self) -> Config:
        """This config with MODEL and -o filled in: MODEL left out is the --distill model
        (with --weights or --teacher-weights), -o left out is MODEL's name + '-compressed'."""
        update: dict = {}
        if self.model is None:
            update["model"] = self.distill
            update["weights"] = self.weights or self.teacher_weights
            update["distill"] = ""  # its own uncompressed self teaches
        model = update.get("model", self.model)
        if self.output is None:
            update["output"] = default_output(model, "compressed")
        return self.model_copy(update=update) if update else self

    def lowrank_config(self):
        """The LowRankConfig that --lowrank / --lowrank-rank ask for, or None."""
        from tvc.compress.lowrank import LowRankConfig

        r = self.lowrank_rank
        if r is not None and r >= 1:
            return LowRankConfig(rank=int(r), round_to=self.round_to)
        if r is not None:
            return LowRankConfig(rank_ratio=r, round_to=self.round_to)
        if self.lowrank is not None:
            return LowRankConfig(energy=self.lowrank, round_to=self.round_to)
        return None


def run(cfg: Config):
    """Compress cfg.model as cfg asks and write the model artifact cfg.output."""
    from tvc.compress.pipeline import compress_model
    from tvc.stages.common import (
        check_data_task,
        claim_output,
        refuse_options,
        task_of_model,
    )

    cfg = cfg.resolved()
    claim_output(cfg, cfg.model, cfg.weights, cfg.distill, cfg.teacher_weights, cfg.data)
    if cfg.latency_table is not None and Path(cfg.latency_table).exists():
        from tvc.compress.latency_table import load_table

        load_table(cfg.latency_table)  # a bad table file is refused before any model loads
    elif cfg.latency_table is not None and not Path(cfg.latency_table).parent.is_dir():
        # measuring the table takes minutes: refuse a place it cannot be written first
        raise ConfigError(
            f"--latency-table {cfg.latency_table}: the folder "
            f"{Path(cfg.latency_table).parent} does not exist",
            "create it, or give a path in an existing folder",
        )
    task = task_of_model(cfg.model, "compression")
    refuse_options(task, "compress", cfg)
    if cfg.importance in ("taylor", "data") and cfg.data is None:
        what = "labelled images" if cfg.importance == "taylor" else "images (no labels needed)"
        raise ConfigError(
            f"--importance {cfg.importance} scores channels with gradients on {what}",
            f"pass --data DATA (e.g. {task.data_example}), or use --importance magnitude",
        )
    if cfg.distill is not None and cfg.data is None:
        raise ConfigError("--distill needs --data to train on", f"e.g. --data {task.data_example}")
    # A random teacher is refused before any data or model is loaded (the options' own
    # errors come first: they say what to change in the command line as typed).
    _refuse_random_teacher(cfg)
    check_data_task(task, cfg.model, cfg.data)
    if cfg.prune is not None and cfg.data and "importance" not in cfg.model_fields_set:
        log.info("ranking channels by magnitude; --importance data (feature Fisher on --data "
                 "images, no labels) kept more of the parent in tvc's measurements")  # fmt: skip
    loaded = task.load_model(cfg.model, **cfg.model_kwargs(), input_size=cfg.input_size)
    teacher = None
    if cfg.distill is not None:
        # The uncompressed source teaches unless another model is named: reusing it (rather
        # than loading MODEL again) also keeps a randomly initialised config's exact weights.
        own = cfg.distill == "" or (
            same_model(cfg.distill, cfg.model) and cfg.teacher_weights in (None, cfg.weights)
        )
        teacher = loaded if own else task.load_model(cfg.distill, weights=cfg.teacher_weights)
        _check_teacher(task, teacher)
    measure = None
    if cfg.target_latency is not None:
        from tvc.stages.latency import plan_for_target

        cfg, measure = plan_for_target(task, loaded, cfg)
    return compress_model(task, loaded, cfg, Path(cfg.output), teacher=teacher, latency=measure)


def _refuse_random_teacher(cfg: Config) -> None:
    """A teacher given by name without weights would be randomly initialised (tvc never
    downloads): refuse it before anything is built, rather than after loading it."""
    if cfg.distill is None:
        return
    own = cfg.distill == "" or (
        same_model(cfg.distill, cfg.model) and cfg.teacher_weights in (None, cfg.weights)
    )
    name, weights = (cfg.model, cfg.weights) if own else (cfg.distill, cfg.teacher_weights)
    if weights is None and not Path(name).exists():
        flag = "--weights" if own else "--teacher-weights"
        raise ConfigError(
            f"the teacher {name} would have random weights (tvc never downloads, and no "
            f"{flag} was given), so there is nothing to distil from it",
            f"pass the trained weights with {flag} FILE, or a tvc train artifact or Hugging "
            "Face directory instead of the name",
        )


def _check_teacher(task, teacher) -> None:
    """A teacher of the same task, with weights worth learning from."""
    from tvc.errors import UnsupportedModelError
    from tvc.tasks import task_for_info

    if task_for_info(teacher.info) is not task:
        raise UnsupportedModelError(
            f"the teacher {teacher.info.name} is not a {task.noun}",
            f"distil a {task.noun} from a {task.noun} (e.g. its uncompressed source)",
        )
    if teacher.artifact is None and teacher.info.weights == "random":
        raise ConfigError(
            f"the teacher {teacher.info.name} has random weights, so there is nothing to learn "
            "from it",
            "distil from a trained model: a tvc train artifact, or --weights / "
            "--teacher-weights with the trained weights",
        )
