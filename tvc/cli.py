"""The `tvc` command line: one thin command per verb and one error boundary.

Commands parse options, call into the packages, and print. Every `TvcError` raised below ends as
one line on stderr (`error: what went wrong; how to fix it`) and a non-zero exit code.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import traceback
from pathlib import Path

import click

from tvc import __version__
from tvc.errors import ConfigError, TvcError, first_line

log = logging.getLogger("tvc")


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


class TvcGroup(click.Group):
    """The one error boundary: user errors become one line and an exit code, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["tvc.argv"] = list(args)  # kept for records: the exact command that ran
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvcError as exc:
            click.echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # output piped into `head` and friends: not an error
            sys.stderr.close()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted; earlier results are left intact", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("TVC_DEBUG"):
                traceback.print_exc()
            first = first_line(exc)
            click.echo(
                f"error: internal error {type(exc).__name__}: {first}; this is a bug in tvc, "
                "re-run with TVC_DEBUG=1 for the traceback and report it",
                err=True,
            )
            ctx.exit(70)


def command_line() -> str:
    """The command as typed, for records that say how each number was produced."""
    ctx = click.get_current_context(silent=True)
    args = ctx.find_root().meta.get("tvc.argv", sys.argv[1:]) if ctx else sys.argv[1:]
    return shlex.join(["tvc", *args])


def parse_int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise ConfigError(
            f"{option} must be comma-separated integers, got '{value}'", f"e.g. {option} 1,8"
        ) from exc
    if not items or any(i < 1 for i in items):
        raise ConfigError(f"{option} values must be >= 1, got '{value}'", f"e.g. {option} 1,8")
    return items


@click.group(cls=TvcGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tvc")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """tvc: compress, export and benchmark vision transformers for edge hardware."""
    _setup_logging(verbose)


# --------------------------------------------------------------------------------------- info


@cli.command()
def info() -> None:
    """Which backends and devices are available here, and why not."""
    from tvc.runtime.availability import backend_report

    for name, ok, detail in backend_report():
        mark = "yes" if ok else "no "
        click.echo(f"{mark}  {name:<22} {detail}")


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every timm architecture.")
def models(show_all: bool) -> None:
    """Model names tvc understands: aliases, small configs, timm names."""
    from tvc.models import registry

    click.echo("tvc small configs (train on a CPU in minutes):")
    for name, cfg in registry.SMALL_CONFIGS.items():
        click.echo(f"  {name:<24} {cfg.description}")
    try:
        from tvc.models.detection import DETECTION_CONFIGS
    except ImportError:  # detection needs the 'hf' extra (transformers)
        DETECTION_CONFIGS = {}
    if DETECTION_CONFIGS:
        click.echo("tvc detection configs (96x96 Fashion-MNIST scenes):")
    for name, det in DETECTION_CONFIGS.items():
        click.echo(f"  {name:<24} {det.description}")
    click.echo("aliases:")
    for alias, arch in registry.ALIASES.items():
        click.echo(f"  {alias:<24} {arch}")
    if show_all:
        click.echo("timm architectures:")
        for n in registry.timm_names():
            click.echo(f"  {n}")
    else:
        click.echo("(any timm architecture name also works; --all lists them)")


# ------------------------------------------------------------------------------------- export


def artifact_output(help: str):
    """The required -o/--output option of commands that write an artifact directory."""
    return click.option(
        "-o", "--output", "out", required=True, type=click.Path(file_okay=False), help=help
    )


def model_options(f):
    """Options shared by every command that takes a MODEL."""
    f = click.option(
        "--weights",
        type=click.Path(dir_okay=False),
        default=None,
        help="Weights for a named architecture (.safetensors or .pth state dict).",
    )(f)
    f = click.option(
        "--num-classes",
        type=click.IntRange(min=1),
        default=None,
        help="Classifier size (default: the model's or the weights').",
    )(f)
    f = click.option(
        "--pretrained", is_flag=True, help="Require pretrained weights (error if none are on disk)."
    )(f)
    return f


@cli.command()
@click.argument("model")
@artifact_output("Artifact directory to write.")
@model_options
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--batch", default=1, show_default=True, type=int, help="Fixed batch size.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension.")
@click.option("--input-size", type=int, default=None, help="Input resolution (model names only).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--fp16", is_flag=True, help="Also write an FP16 ONNX (norms/softmax kept FP32).")
@click.option(
    "--int8",
    type=click.Choice(["static", "dynamic"]),
    default=None,
    help="Also write an INT8 ONNX: static (calibrated Q/DQ) or dynamic.",
)
@click.option("--calib", default=None, help="Calibration DATA for static INT8.")
@click.option("--calib-size", default=512, show_default=True, type=int)
@click.option(
    "--calib-method",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
)
@click.option(
    "--int8-budget",
    default=0.5,
    show_default=True,
    type=float,
    help="Max top-1 points INT8 may lose before layers fall back to float.",
)
@click.option(
    "--allow-accuracy-drop",
    is_flag=True,
    help="Keep an INT8 model that misses its budget (exit 0, loud warning).",
)
@click.option(
    "--int8-ops",
    type=click.Choice(["safe", "all"]),
    default="safe",
    show_default=True,
    help="safe: only Linear/MatMul inputs; all: every op (the naive setting).",
)
@click.option(
    "--eval-data",
    default=None,
    help="DATA for the INT8 accuracy gate (default: the calibration set's val split).",
)
@click.option("--trt", is_flag=True, help="Build a TensorRT engine on this machine.")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--workspace-mb", default=1024, show_default=True, type=click.IntRange(min=16))
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    default=None,
    help="Timing cache file, reused across builds.",
)
@click.option(
    "--dla",
    "dla_core",
    type=click.IntRange(min=0),
    default=None,
    help="Jetson DLA core to build for.",
)
@click.option(
    "--sampling",
    type=click.Choice(["gather", "grid"]),
    default="gather",
    show_default=True,
    help="Deformable DETR: bilinear sampling by Gathers, or by GridSample.",
)
@click.option("--pixel-mask", is_flag=True, help="Detectors: add a pixel_mask input for padding.")
def export(
    model,
    out,
    weights,
    num_classes,
    pretrained,
    opset,
    batch,
    dynamic_batch,
    input_size,
    no_simplify,
    fp16,
    int8,
    calib,
    calib_size,
    calib_method,
    int8_budget,
    allow_accuracy_drop,
    int8_ops,
    eval_data,
    trt,
    min_batch,
    opt_batch,
    max_batch,
    workspace_mb,
    timing_cache,
    dla_core,
    sampling,
    pixel_mask,
) -> None:
    """Export MODEL (name, HF dir, model or ONNX artifact) to ONNX and optimised variants.

    The FP32 ONNX is proven against PyTorch; --fp16 / --int8 add variants to the same artifact;
    --trt builds a TensorRT engine here (or writes the trtexec command for the board).
    """
    from tvc.export.flow import ExportRequest, Int8Request, run_export
    from tvc.export.onnx import OnnxExportConfig

    if trt and not (min_batch <= opt_batch <= max_batch):
        raise ConfigError(
            f"batch profile must satisfy min <= opt <= max, got "
            f"{min_batch}/{opt_batch}/{max_batch}",
            "e.g. --min-batch 1 --opt-batch 1 --max-batch 8",
        )
    is_path = Path(model).exists()
    req = ExportRequest(
        onnx=OnnxExportConfig(
            opset=opset,
            batch=batch,
            dynamic_batch=dynamic_batch or (trt and max_batch > 1),
            simplify=not no_simplify,
        ),
        fp16=fp16,
        int8=Int8Request(
            mode=int8,
            calib=calib,
            calib_size=calib_size,
            calib_method=calib_method,
            budget=int8_budget,
            allow_accuracy_drop=allow_accuracy_drop,
            ops=int8_ops,
            eval_data=eval_data,
        )
        if int8
        else None,
        trt={
            "min_batch": min_batch,
            "opt_batch": opt_batch,
            "max_batch": max_batch,
            "workspace_mb": workspace_mb,
            "timing_cache": Path(timing_cache) if timing_cache else None,
            "dla_core": dla_core,
        }
        if trt
        else None,
    )
    model_kwargs = {
        "weights": weights,
        "num_classes": num_classes,
        "pretrained": pretrained,
        "input_size": input_size if not is_path else None,
    }
    from tvc.deps import available

    if available("torch"):  # DETR / Deformable DETR go through tvc/export/detection.py
        from tvc.models.detection import is_detection_spec

        if is_detection_spec(model):
            from tvc.export.detection import DetExportConfig, export_detection_model

            det = DetExportConfig(
                opset=opset,
                batch=batch,
                input_size=input_size,
                pixel_mask=pixel_mask,
                sampling=sampling,
                simplify=not no_simplify,
                int8=int8,
                calib=calib,
                calib_size=calib_size,
                eval_data=eval_data,
            )
            refused = {"--fp16": fp16, "--trt": trt, "--dynamic-batch": dynamic_batch}
            art = export_detection_model(model, Path(out), det, model_kwargs, unsupported=refused)
            _print_export(art)
            return
    art = run_export(model, Path(out), req, model_kwargs)
    if input_size is not None and is_path and art.meta["model"]["input_size"][1] != input_size:
        log.warning(
            "--input-size is ignored for artifacts and directories (fixed at %s)",
            art.meta["model"]["input_size"][1],
        )
    _print_export(art)


def _print_export(art) -> None:
    p = art.meta["metrics"].get("parity", {})
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB in all)")
    if p:
        # Detectors record the per-query class agreement; classifiers top-1 agreement.
        agree = (
            ("class", p["class_agreement"])
            if "class_agreement" in p
            else ("top-1", p["top1_agreement"])
        )
        click.echo(
            f"  model.onnx: parity vs PyTorch max abs diff {p['max_abs_diff']:.2e}, "
            f"{agree[0]} agreement {agree[1]:.0%}, "
            f"{'simplified' if art.meta['metrics'].get('simplified') else 'not simplified'}"
        )
    for fname, v in art.meta.get("variants", {}).items():
        if fname == "model.onnx":
            continue
        size = art.meta["files"].get(fname, {}).get("bytes", 0) / 1e6
        line = f"  {fname}: {v['precision']}, {size:.2f} MB"
        if "accuracy_drop" in v:
            line += f", top-1 drop {v['accuracy_drop']:.2f} points"
        if v.get("float_layers"):
            line += f", {len(v['float_layers'])} layer(s) kept in float"
        click.echo(line)


# ----------------------------------------------------------------------------------- compress

_PRUNE_ONLY = ("importance", "global_pruning", "prune_heads", "keep", "steps")
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
# Classification pruning and distillation settings that DETR-style detectors have no use for.
_CLASSIFIER_COMPRESS_ONLY = (
    "global_pruning",
    "prune_heads",
    "keep",
    "steps",
    "kd",
    "temperature",
    "alpha",
)


def _given(ctx: click.Context, names) -> list[str]:
    """The options (as typed, e.g. --global) among parameters `names` the user passed."""
    from click.core import ParameterSource

    typed = [
        p
        for p in ctx.command.params
        if p.name in names and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE
    ]
    return ["/".join(o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")) for p in typed]


def _lowrank_config(energy: float | None, rank: float | None, round_to: int):
    from tvc.compress.lowrank import LowRankConfig

    if energy is not None and rank is not None:
        raise ConfigError(
            "--lowrank and --lowrank-rank choose the rank in two ways", "pass only one of them"
        )
    if rank is not None and rank >= 1:
        if rank != int(rank):
            raise ConfigError(
                f"--lowrank-rank {rank} is neither a whole rank nor a fraction below 1",
                "e.g. --lowrank-rank 64 or --lowrank-rank 0.25",
            )
        return LowRankConfig(rank=int(rank), round_to=round_to)
    if rank is not None:
        return LowRankConfig(rank_ratio=rank, round_to=round_to)
    return LowRankConfig(energy=energy, round_to=round_to)


@cli.command()
@click.argument("model")
@artifact_output("Model artifact directory to write.")
@model_options
@click.option(
    "--prune",
    "prune_ratio",
    type=float,
    default=None,
    help="Structured pruning: fraction of each width to remove, in (0, 1).",
)
@click.option(
    "--importance",
    type=click.Choice(["magnitude", "taylor", "random"]),
    default="magnitude",
    show_default=True,
    help="Channel importance; taylor uses a few batches of --data.",
)
@click.option(
    "--global",
    "global_pruning",
    is_flag=True,
    help="Rank channels and heads across blocks (default: per block).",
)
@click.option(
    "--prune-heads",
    is_flag=True,
    help="Remove whole attention heads (default: dimensions of every head).",
)
@click.option(
    "--round-to",
    type=int,
    default=8,
    show_default=True,
    help="Kept widths and low-rank ranks are multiples of this (alignment).",
)
@click.option(
    "--keep",
    multiple=True,
    default=("head",),
    show_default=True,
    help="Leave unpruned: head (the classifier's outputs, always kept), embed (the "
    "residual width), attn, mlp, or a block such as blocks.0; repeat or use "
    "commas.",
)
@click.option(
    "--steps",
    type=int,
    default=1,
    show_default=True,
    help="Iterative pruning: reach the ratio in this many steps.",
)
@click.option(
    "--lowrank",
    "lowrank_energy",
    type=float,
    default=None,
    help="Low-rank: spectral energy to keep per layer, in (0, 1].",
)
@click.option(
    "--lowrank-rank",
    type=float,
    default=None,
    help="Low-rank: a fixed rank (64) or a fraction of full rank (0.25).",
)
@click.option(
    "--distill",
    "teacher",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[TEACHER]",
    help="Distil from this teacher MODEL after pruning / factorizing; alone, from the "
    "uncompressed MODEL itself.",
)
@click.option(
    "--teacher-weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Weights for a teacher given by architecture name.",
)
@click.option(
    "--data",
    default=None,
    help="Images: distillation data, taylor importance, agreement samples; for detectors "
    "detection data (fashion-mnist-det, COCO): distillation scenes and mAP on its test split.",
)
@click.option("--epochs", type=int, default=None, help="Distillation epochs (default 1).")
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Distillation peak learning rate (default 5e-4).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Distillation batch (default 128; detectors 16).",
)
@click.option("--device", default=None, help="Distillation device: auto (default), cpu, cuda:N.")
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on this many test images (default: the whole test split).",
)
@click.option(
    "--kd",
    type=click.Choice(["soft", "hard", "token"]),
    default=None,
    help="Distillation loss (default soft).",
)
@click.option("--temperature", type=float, default=None, help="Soft KD temperature (default 4).")
@click.option("--alpha", type=float, default=None, help="Weight of the KD loss (default 0.5).")
@click.option("--limit", type=int, default=None, help="Use at most N training images to distil.")
@click.pass_context
def compress(
    ctx,
    model,
    out,
    weights,
    num_classes,
    pretrained,
    prune_ratio,
    importance,
    global_pruning,
    prune_heads,
    round_to,
    keep,
    steps,
    lowrank_energy,
    lowrank_rank,
    teacher,
    teacher_weights,
    data,
    epochs,
    lr,
    batch_size,
    device,
    eval_limit,
    kd,
    temperature,
    alpha,
    limit,
) -> None:
    """Prune, factorize and/or distil MODEL into a smaller model artifact.

    Detectors (DETR, Deformable DETR) lose attention heads and FFN channels (--prune), get
    low-rank projections (--lowrank), and are distilled on detection --data from their
    uncompressed source (--distill) or another detector (--distill TEACHER).
    """
    from tvc.compress.pipeline import CompressConfig, compress_model
    from tvc.compress.prune import PruneConfig
    from tvc.compress.report import print_compression_report

    detector = _is_detector(model, "compression")  # first: it says when torch is missing
    from tvc.models import load_model
    from tvc.train.detection import check_task

    check_task(model, detector, data)
    if detector:
        stray = _given(ctx, _CLASSIFIER_COMPRESS_ONLY)
        if importance != "magnitude":
            stray.insert(0, f"--importance {importance}")
        if stray:
            why = (
                "detectors distil with DETR's set loss on matched queries"
                if stray[0] in ("--kd", "--temperature", "--alpha")
                else "detectors prune heads and FFN channels of every layer by weight magnitude"
            )
            raise ConfigError(
                f"{stray[0]} applies to classifiers only, not to the detector {model}",
                f"drop {stray[0]} ({why})",
            )
    if prune_ratio is None and (stray := _given(ctx, _PRUNE_ONLY)):
        raise ConfigError(
            f"{stray[0]} only applies with --prune", "add --prune RATIO or drop the option"
        )
    if teacher is None and (stray := _given(ctx, _DISTILL_ONLY)):
        raise ConfigError(
            f"{stray[0]} only applies with --distill", "add --distill TEACHER or drop the option"
        )
    if detector:
        _compress_detector(
            model,
            out,
            model_kwargs={"weights": weights, "num_classes": num_classes},
            prune_ratio=prune_ratio,
            round_to=round_to,
            lowrank=(lowrank_energy, lowrank_rank),
            teacher=teacher,
            teacher_weights=teacher_weights,
            data=data,
            distill={"epochs": epochs, "lr": lr, "batch_size": batch_size, "device": device},
            limit=limit,
            eval_limit=eval_limit,
        )
        return
    if teacher is None and eval_limit is not None:
        raise ConfigError(
            "--eval-limit only applies with --distill", "add --distill TEACHER or drop the option"
        )
    if teacher == "":  # a bare --distill: the uncompressed MODEL teaches
        teacher, teacher_weights = model, teacher_weights or weights
    prune_cfg = lowrank_cfg = distill_cfg = None
    if prune_ratio is not None:
        keep_parts = tuple(k.strip() for item in keep for k in item.split(",") if k.strip())
        prune_cfg = PruneConfig(
            ratio=prune_ratio,
            importance=importance,
            global_pruning=global_pruning,
            prune_heads=prune_heads,
            round_to=round_to,
            keep=keep_parts,
            steps=steps,
        )
    if lowrank_energy is not None or lowrank_rank is not None:
        lowrank_cfg = _lowrank_config(lowrank_energy, lowrank_rank, round_to)
    if teacher is not None:
        if data is None:
            raise ConfigError("--distill needs --data to train on", "e.g. --data fashion-mnist")
        from tvc.compress.distill import DistillConfig

        given = {
            "epochs": epochs,
            "kd": kd,
            "temperature": temperature,
            "alpha": alpha,
            "limit": limit,
            "teacher_weights": teacher_weights,
            "lr": lr,
            "batch_size": batch_size,
            "device": device,
            "eval_limit": eval_limit,
        }
        given = {k: v for k, v in given.items() if v is not None}
        distill_cfg = DistillConfig(teacher=teacher, data=data, **given)
        distill_cfg.validate()
    cfg = CompressConfig(prune=prune_cfg, lowrank=lowrank_cfg, distill=distill_cfg)
    loaded = load_model(model, weights=weights, num_classes=num_classes, pretrained=pretrained)
    art = compress_model(loaded, cfg, Path(out), data_spec=data)
    print_compression_report(art.meta["metrics"]["compression"])
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB)")


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _compress_detector(model, out, *, model_kwargs, prune_ratio, round_to, lowrank, teacher,
                       teacher_weights, data, distill, limit, eval_limit) -> None:  # fmt: skip
    """`tvc compress` for DETR-style detectors: tvc.compress.detection_pipeline does the work."""
    from tvc.compress.detection import DetPruneConfig
    from tvc.compress.detection_pipeline import (
        DetCompressConfig,
        compress_detector_model,
        summary_lines,
    )
    from tvc.compress.report import print_compression_report
    from tvc.models import load_model
    from tvc.train.detection import DetDistillConfig

    if eval_limit is not None and data is None:
        raise ConfigError("--eval-limit needs --data", "e.g. --data fashion-mnist-det")
    distill_cfg = None
    if teacher is not None:
        # lr 5e-4 with clip 1.0: what distils tvc's detectors (benchmarks/bench_detection.py)
        defaults = {"epochs": 1, "lr": 5e-4, "batch_size": 16, "device": "auto"}
        given = {k: v for k, v in distill.items() if v is not None}
        distill_cfg = DetDistillConfig(grad_clip=1.0, **{**defaults, **given})
    energy, rank = lowrank
    cfg = DetCompressConfig(
        prune=DetPruneConfig(ratio=prune_ratio, round_to=round_to)
        if prune_ratio is not None
        else None,
        lowrank=_lowrank_config(energy, rank, round_to)
        if energy is not None or rank is not None
        else None,
        distill=distill_cfg,
        data=data,
        limit=limit,
        eval_limit=eval_limit,
    )
    cfg.validate()  # before loading anything
    loaded = load_model(model, **model_kwargs)
    teacher_loaded = None
    # The uncompressed source teaches unless another model is named: reusing it (rather than
    # loading MODEL again) also keeps a randomly initialised config's exact weights.
    if teacher and not (
        _same_model(teacher, model) and teacher_weights in (None, model_kwargs["weights"])
    ):
        teacher_loaded = load_model(teacher, weights=teacher_weights)
    art = compress_detector_model(
        loaded, out, cfg, teacher=teacher_loaded, spec={"command": command_line()}
    )
    report = art.meta["metrics"]["compression"]
    print_compression_report({"before": report["before"], "after": report["after"]})
    for line in summary_lines(report):
        click.echo(line)
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB)")


# -------------------------------------------------------------------------------------- bench


@cli.command()
@click.argument("target")
@click.option(
    "--backend",
    default="ort",
    show_default=True,
    help="Comma-separated: ort, torch (trt where TensorRT is installed).",
)
@click.option("--batch", "batches", default="1", show_default=True, help="e.g. 1,8")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores)."
)
@click.option("--provider", default="cpu", show_default=True, help="ORT provider: cpu, cuda, trt.")
@click.option("--warmup-s", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--min-runs", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--min-time-s", default=3.0, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write bench records (tvc.bench/1) to this file.",
)
@click.option(
    "--data",
    default=None,
    help="Also measure top-1/top-5 on DATA's test split (into the records); COCO mAP for "
    "detectors on detection DATA.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded subset of this many images.",
)
@model_options
def bench(
    target,
    backend,
    batches,
    threads,
    provider,
    warmup_s,
    min_runs,
    min_time_s,
    json_out,
    data,
    limit,
    weights,
    num_classes,
    pretrained,
) -> None:
    """Measure latency, throughput, size and memory of TARGET (ONNX, artifact or model)."""
    from tvc.report.schema import write_records
    from tvc.report.table import print_records
    from tvc.runtime.bench import BenchConfig
    from tvc.runtime.run import bench_target

    backends = tuple(b.strip() for b in backend.split(",") if b.strip())
    cfg = BenchConfig(
        backends=backends,
        batches=parse_int_list(batches, "--batch"),
        threads=threads,
        warmup_s=warmup_s,
        min_runs=min_runs,
        min_time_s=min_time_s,
        provider=provider,
    )
    records = bench_target(
        target,
        cfg,
        command=command_line(),
        model_kwargs={"weights": weights, "num_classes": num_classes, "pretrained": pretrained},
        data=data,
        limit=limit,
    )
    print_records(records)
    if json_out:
        write_records(records, json_out)
        click.echo(f"wrote {len(records)} record(s) to {json_out}")


# -------------------------------------------------------------------------------- train, eval


_TRAIN_CLASSIFIER_ONLY = ("label_smoothing", "augment", "resume")


def _is_detector(model: str, purpose: str) -> bool:
    """MODEL names a DETR-style detector (a config name, HF directory or artifact), decided
    without building it."""
    from tvc.deps import require

    require("torch", purpose)
    from tvc.models.detection import is_detection_spec

    return is_detection_spec(model)


def _refuse_pretrained_detector(model: str, pretrained: bool, weights) -> None:
    from tvc.models.detection import DETECTION_CONFIGS

    if pretrained and weights is None and model in DETECTION_CONFIGS:
        raise ConfigError(
            f"{model} has no pretrained weights on disk and tvc never downloads",
            "pass --weights FILE, or a Hugging Face detection directory as MODEL",
        )


@cli.command()
@click.argument("model")
@click.option(
    "--data",
    required=True,
    help="fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors "
    "fashion-mnist-det or a COCO-format directory.",
)
@artifact_output("Model artifact directory to write (checkpoints go to OUT.ckpt/).")
@model_options
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--lr",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate [default: 1e-3; detectors: 1e-3 from random weights, 1e-4 "
    "(DETR's fine-tuning rate) from trained ones].",
)
@click.option(
    "--batch-size",
    default=None,
    type=click.IntRange(min=1),
    help="Global batch, split over torchrun processes [default: 128; detectors: 32 from "
    "random weights, 16 from trained ones].",
)
@click.option("--input-size", type=int, default=None, help="Input resolution (model names only).")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Train on a seeded subset of this many images.",
)
@click.option(
    "--eval-limit",
    type=click.IntRange(min=1),
    default=None,
    help="Validate/test on subsets of this many images.",
)
@click.option(
    "--weight-decay",
    default=None,
    type=click.FloatRange(min=0),
    help="AdamW weight decay [default: 0.05; detectors: 1e-4].",
)
@click.option(
    "--warmup-epochs",
    default=None,
    type=click.FloatRange(min=0),
    help="Linear warm-up [default: 1 epoch; detectors: 50 steps].",
)
@click.option(
    "--grad-clip",
    default=None,
    type=click.FloatRange(min=0),
    help="Max gradient norm, 0 for none [default: 1.0; detectors: 0.1, DETR's, "
    "from random or trained weights].",
)
@click.option(
    "--label-smoothing",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Classifiers only.",
)
@click.option(
    "--augment/--no-augment",
    default=True,
    show_default=True,
    help="Random crop and horizontal flip (classifiers only).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from OUT.ckpt/ after an interruption (classifiers only).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def train(
    ctx,
    model,
    data,
    out,
    weights,
    num_classes,
    pretrained,
    epochs,
    lr,
    batch_size,
    input_size,
    limit,
    eval_limit,
    weight_decay,
    warmup_epochs,
    grad_clip,
    label_smoothing,
    augment,
    seed,
    device,
    resume,
    no_progress,
) -> None:
    """Train or fine-tune MODEL on DATA; write a model artifact with its test accuracy.

    Classifiers report top-1; detectors (detr_pico, deformable_detr_pico, a Hugging Face DETR
    directory or a detector artifact) train with DETR's set loss and report COCO mAP.
    Classifiers run on all GPUs of a node with: torchrun --nproc_per_node N -m tvc train ...
    """
    detector = _is_detector(model, "training")  # first: it says when torch is missing
    from tvc.train.detection import check_task

    check_task(model, detector, data)
    if detector:
        if stray := _given(ctx, _TRAIN_CLASSIFIER_ONLY):
            raise ConfigError(
                f"{stray[0]} applies to classifiers only, not to the detector {model}",
                f"drop {stray[0]}",
            )
        _refuse_pretrained_detector(model, pretrained, weights)
        _train_detector(
            model,
            data,
            out,
            model_kwargs={"weights": weights, "num_classes": num_classes, "input_size": input_size},
            train_kwargs={
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_size,
                "weight_decay": weight_decay,
                "grad_clip": grad_clip,
                "seed": seed,
                "device": device,
            },
            limit=limit,
            eval_limit=eval_limit,
            warmup_epochs=warmup_epochs,
        )
        return

    from tvc.models import load_model
    from tvc.train.loop import TrainConfig
    from tvc.train.train import train_model

    given = {"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
             "warmup_epochs": warmup_epochs, "grad_clip": grad_clip}  # fmt: skip
    cfg = TrainConfig(
        epochs=epochs,
        label_smoothing=label_smoothing,
        augment=augment,
        seed=seed,
        device=device,
        progress=not no_progress,
        **{k: v for k, v in given.items() if v is not None},
    )
    if cfg.grad_clip == 0:
        cfg.grad_clip = None
    cfg.validate()
    import torch

    torch.manual_seed(seed)  # the same fresh weights in every process
    is_path = Path(model).exists()
    loaded = load_model(
        model,
        weights=weights,
        num_classes=num_classes,
        pretrained=pretrained,
        input_size=None if is_path else input_size,
        warn_random=False,
    )
    art = train_model(
        loaded,
        data,
        out,
        cfg,
        limit=limit,
        eval_limit=eval_limit,
        resume=resume,
        spec={"command": command_line(), "model": model},
    )
    if art is not None:
        acc = art.meta["metrics"]["accuracy"]
        click.echo(
            f"wrote {art.path}: test top-1 {acc['top1']:.2f}% on {acc['n']} images "
            f"({art.meta['metrics']['training']['wall_s']:.0f} s of training)"
        )


def _train_detector(model, data, out, *, model_kwargs, train_kwargs, limit, eval_limit,
                    warmup_epochs) -> None:  # fmt: skip
    """`tvc train` for DETR-style detectors: tvc.train.detection does the work."""
    import torch

    from tvc.models import load_model
    from tvc.train.detection import det_train_config, train_detector_artifact

    torch.manual_seed(train_kwargs["seed"])  # the same fresh weights for the same --seed
    if Path(model).exists():
        model_kwargs = {**model_kwargs, "input_size": None}  # fixed by the artifact / directory
    loaded = load_model(model, warn_random=False, **model_kwargs)
    cfg = det_train_config(loaded, **train_kwargs)
    art = train_detector_artifact(
        loaded,
        data,
        out,
        cfg,
        limit=limit,
        eval_limit=eval_limit,
        warmup_epochs=warmup_epochs,
        spec={"command": command_line(), "model": model},
    )
    m = art.meta["metrics"]
    det = m["detection"]
    click.echo(
        f"wrote {art.path}: test mAP {det['map']:.2f} (AP50 {det['ap50']:.2f}) on {det['n']} "
        f"images ({m['training']['seconds']:.0f} s of training)"
    )


@cli.command("eval")
@click.argument("target")
@click.option(
    "--data",
    required=True,
    help="fashion-mnist, fashion-mnist:DIR, or an image folder; for detectors "
    "fashion-mnist-det or a COCO-format directory (COCO mAP).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Evaluate on a seeded subset of this many images.",
)
@click.option(
    "--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"])
)
@click.option(
    "--reference",
    default=None,
    help="MODEL or artifact to measure top-1 agreement with (e.g. FP32 source).",
)
@click.option(
    "--backend",
    default=None,
    type=click.Choice(["ort", "torch", "trt"]),
    help="Default: ort for ONNX files/export artifacts, torch for models.",
)
@click.option(
    "--variant",
    "variant_file",
    default=None,
    help="Only this file of an export artifact, e.g. model.int8.onnx.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--provider", default="cpu", show_default=True, help="ORT provider: cpu, cuda, trt.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results as JSON.",
)
@model_options
def eval_cmd(
    target,
    data,
    limit,
    split,
    reference,
    backend,
    variant_file,
    threads,
    provider,
    batch_size,
    json_out,
    weights,
    num_classes,
    pretrained,
) -> None:
    """Top-1/top-5 of TARGET (model, model artifact, ONNX file or export artifact) on DATA."""
    import json

    from tvc.data.detection import is_detection_spec as is_detection_data

    common = {
        "split": split,
        "limit": limit,
        "reference": reference,
        "variant_file": variant_file,
        "threads": threads,
        "provider": provider,
        "batch_size": batch_size,
        "model_kwargs": {"weights": weights, "num_classes": num_classes, "pretrained": pretrained},
    }
    if is_detection_data(data):  # COCO mAP of DETR-style detectors: tvc/eval/detection.py
        from tvc.eval.detection import eval_detection_target

        if backend == "trt":
            raise ConfigError("detection evaluation runs on ort or torch", "drop --backend trt")
        results = eval_detection_target(target, data, **common)
        for r in results:
            agree = f", agreement mAP {r['agreement']:.2f}" if r["agreement"] is not None else ""
            click.echo(
                f"{r['variant']}: mAP {r['map']:.2f}, AP50 {r['ap50']:.2f}{agree} on {r['n']} "
                f"{r['dataset']} {r['split']} images"
            )
    else:
        from tvc.eval.run import eval_target

        results = eval_target(target, data, backend=backend, **common)
        for r in results:
            top5 = f", top-5 {r['top5']:.2f}%" if r["top5"] is not None else ""
            agree = f", agreement {r['agreement']:.2f}%" if r["agreement"] is not None else ""
            click.echo(
                f"{r['variant']} [{r['backend']}]: top-1 {r['top1']:.2f}%{top5}{agree} on "
                f"{r['n']} {r['dataset']} {r['split']} images"
            )
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


# ------------------------------------------------------------------------------------- report


@cli.command()
@click.argument("records", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="report.html (one self-contained page) or report.md.",
)
@click.option(
    "--baseline", default=None, help="Variant to compare against (default: the first fp32 variant)."
)
@click.option("--title", default=None, help="Report title.")
def report(records, out, baseline, title) -> None:
    """Render bench RECORDS (files from 'tvc bench --json', any boards) as HTML or Markdown."""
    from tvc.report.render import analyse, headline, write_report
    from tvc.report.schema import read_records

    recs = [r for path in records for r in read_records(path)]
    path = write_report(recs, out, baseline=baseline, title=title)
    a = analyse(recs, baseline)
    click.echo(
        f"wrote {path} ({len(recs)} records, {len(a.boards)} board(s), baseline {a.baseline})"
    )
    head = headline(a)
    if head:
        click.echo(f"headline: {head}")


# ---------------------------------------------------------------------------------------- run


@cli.command("run")
@click.argument("recipe")
@click.option(
    "-o",
    "--output",
    "out",
    default=None,
    type=click.Path(file_okay=False),
    help="Run directory (default: the recipe's output, else runs/<name>).",
)
@click.option("--data", default=None, help="Data for every stage that takes data.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Weights for the recipe's model (instead of the recipe's).",
)
@click.option("--force", is_flag=True, help="Run every stage again, even unchanged ones.")
@click.option("--dry-run", is_flag=True, help="Check the recipe and print the commands only.")
def run_cmd(recipe, out, data, weights, force, dry_run) -> None:
    """Run RECIPE (a YAML file or a shipped recipe name): every stage, skipping unchanged ones."""
    from tvc.pipeline.recipe import load_recipe
    from tvc.pipeline.runner import Runner

    rec = load_recipe(recipe)
    if weights:
        rec.model.weights = weights
    run_dir = Path(out or rec.output or Path("runs") / rec.name)
    runner = Runner(rec, run_dir, data=data, force=force, echo=lambda s: click.echo(s, err=True))
    if dry_run:
        click.echo("\n".join(runner.plan_text()))
        return
    results = runner.run()
    ran = sum(r.status == "ran" for r in results)
    click.echo(f"{rec.name}: {ran} stage(s) ran, {len(results) - ran} unchanged; in {run_dir}")
    for r in results:
        if r.step.kind == "report":
            for fmt in r.step.formats:
                click.echo(f"report: {r.output / f'report.{fmt}'}")


@cli.command()
@click.option("--show", "show", default=None, metavar="NAME", help="Print one recipe's YAML.")
def recipes(show) -> None:
    """Recipes that ship with tvc (run one with 'tvc run NAME')."""
    from tvc.pipeline.recipe import recipe_path, shipped_recipes

    if show:
        click.echo(recipe_path(show).read_text(), nl=False)
        return
    for name, description in shipped_recipes().items():
        click.echo(f"{name:<24} {description}")


# --------------------------------------------------------------------------------------- demo


@cli.command()
@click.option(
    "-o",
    "--output",
    "out",
    default=None,
    type=click.Path(file_okay=False),
    help="Run directory, reused on a re-run [default: runs/demo; runs/demo-det with --detection].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for the benchmarks (default: the recipe's, 1).",
)
@click.option(
    "--detection",
    is_flag=True,
    help="The detection story instead: DETR on the built-in Fashion-MNIST scenes (fmnist-det).",
)
def demo(out, threads, detection) -> None:
    """The main job on the built-in default: Fashion-MNIST ViT, pruned, distilled, INT8, report."""
    from tvc.demo import run_demo

    if out is None:
        out = "runs/demo-det" if detection else "runs/demo"
    run_demo(Path(out), threads=threads, detection=detection)


def main() -> None:
    cli(prog_name="tvc")


if __name__ == "__main__":
    main()
