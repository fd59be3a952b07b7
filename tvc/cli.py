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
from tvc.errors import ConfigError, TvcError

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
        except KeyboardInterrupt:
            click.echo("error: interrupted; earlier results are left intact", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("TVC_DEBUG"):
                traceback.print_exc()
            first = (str(exc).strip().splitlines() or [""])[0][:300]
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


def model_options(f):
    """Options shared by every command that takes a MODEL."""
    f = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="Weights for a named architecture (.safetensors or .pth state dict).")(f)  # fmt: skip
    f = click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classifier size (default: the model's or the weights').")(f)  # fmt: skip
    f = click.option("--pretrained", is_flag=True,
                     help="Require pretrained weights (error if none are on disk).")(f)  # fmt: skip
    return f


@cli.command()
@click.argument("model")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False),
              help="Artifact directory to write.")
@model_options
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--batch", default=1, show_default=True, type=int, help="Fixed batch size.")
@click.option("--dynamic-batch", is_flag=True, help="Export with a dynamic batch dimension.")
@click.option("--input-size", type=int, default=None, help="Input resolution (model names only).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--fp16", is_flag=True, help="Also write an FP16 ONNX (norms/softmax kept FP32).")
@click.option("--int8", type=click.Choice(["static", "dynamic"]), default=None,
              help="Also write an INT8 ONNX: static (calibrated Q/DQ) or dynamic.")
@click.option("--calib", default=None, help="Calibration DATA for static INT8.")
@click.option("--calib-size", default=512, show_default=True, type=int)
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy"]),
              default="minmax", show_default=True)
@click.option("--int8-budget", default=0.5, show_default=True, type=float,
              help="Max top-1 points INT8 may lose before layers fall back to float.")
@click.option("--allow-accuracy-drop", is_flag=True,
              help="Keep an INT8 model that misses its budget (exit 0, loud warning).")
@click.option("--int8-ops", type=click.Choice(["safe", "all"]), default="safe", show_default=True,
              help="safe: only Linear/MatMul inputs; all: every op (the naive setting).")
@click.option("--eval-data", default=None,
              help="DATA for the INT8 accuracy gate (default: the calibration set's val split).")
@click.option("--trt", is_flag=True, help="Build a TensorRT engine on this machine.")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--workspace-mb", default=1024, show_default=True, type=click.IntRange(min=16))
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file, reused across builds.")
@click.option("--dla", "dla_core", type=click.IntRange(min=0), default=None,
              help="Jetson DLA core to build for.")
def export(model, out, weights, num_classes, pretrained, opset, batch, dynamic_batch, input_size,
           no_simplify, fp16, int8, calib, calib_size, calib_method, int8_budget,
           allow_accuracy_drop, int8_ops, eval_data, trt, min_batch, opt_batch, max_batch,
           workspace_mb, timing_cache, dla_core) -> None:
    """Export MODEL (name, HF dir, model or ONNX artifact) to ONNX and optimised variants.

    The FP32 ONNX is proven against PyTorch; --fp16 / --int8 add variants to the same artifact;
    --trt builds a TensorRT engine here (or writes the trtexec command for the board).
    """
    from tvc.export.flow import ExportRequest, Int8Request, run_export
    from tvc.export.onnx import OnnxExportConfig

    if trt and not (min_batch <= opt_batch <= max_batch):
        raise ConfigError(
            f"batch profile must satisfy min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}",
            "e.g. --min-batch 1 --opt-batch 1 --max-batch 8",
        )
    is_path = Path(model).exists()
    req = ExportRequest(
        onnx=OnnxExportConfig(opset=opset, batch=batch, dynamic_batch=dynamic_batch or
                              (trt and max_batch > 1), simplify=not no_simplify),
        fp16=fp16,
        int8=Int8Request(mode=int8, calib=calib, calib_size=calib_size, calib_method=calib_method,
                         budget=int8_budget, allow_accuracy_drop=allow_accuracy_drop, ops=int8_ops,
                         eval_data=eval_data) if int8 else None,
        trt={"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
             "workspace_mb": workspace_mb, "timing_cache": Path(timing_cache) if timing_cache
             else None, "dla_core": dla_core} if trt else None,
    )
    model_kwargs = {"weights": weights, "num_classes": num_classes, "pretrained": pretrained,
                    "input_size": input_size if not is_path else None}
    art = run_export(model, Path(out), req, model_kwargs)
    if input_size is not None and is_path and art.meta["model"]["input_size"][1] != input_size:
        log.warning("--input-size is ignored for artifacts and directories (fixed at %s)",
                    art.meta["model"]["input_size"][1])
    _print_export(art)


def _print_export(art) -> None:
    p = art.meta["metrics"].get("parity", {})
    click.echo(f"wrote {art.path} ({art.size_bytes / 1e6:.2f} MB in all)")
    if p:
        click.echo(f"  model.onnx: parity vs PyTorch max abs diff {p['max_abs_diff']:.2e}, "
                   f"top-1 agreement {p['top1_agreement']:.0%}, "
                   f"{'simplified' if art.meta['metrics'].get('simplified') else 'not simplified'}")
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


# -------------------------------------------------------------------------------------- bench


@cli.command()
@click.argument("target")
@click.option("--backend", default="ort", show_default=True,
              help="Comma-separated: ort, torch (trt where TensorRT is installed).")  # fmt: skip
@click.option("--batch", "batches", default="1", show_default=True, help="e.g. 1,8")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads (default: all cores).")  # fmt: skip
@click.option("--provider", default="cpu", show_default=True, help="ORT provider: cpu, cuda, trt.")
@click.option("--warmup-s", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--min-runs", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--min-time-s", default=3.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write bench records (tvc.bench/1) to this file.")  # fmt: skip
@model_options
def bench(target, backend, batches, threads, provider, warmup_s, min_runs, min_time_s, json_out,
          weights, num_classes, pretrained) -> None:  # fmt: skip
    """Measure latency, throughput, size and memory of TARGET (ONNX, artifact or model)."""
    from tvc.report.schema import write_records
    from tvc.report.table import print_records
    from tvc.runtime.bench import BenchConfig
    from tvc.runtime.run import bench_target

    backends = tuple(b.strip() for b in backend.split(",") if b.strip())
    cfg = BenchConfig(backends=backends, batches=parse_int_list(batches, "--batch"),
                      threads=threads, warmup_s=warmup_s, min_runs=min_runs,
                      min_time_s=min_time_s, provider=provider)  # fmt: skip
    records = bench_target(target, cfg, command=command_line(),
                           model_kwargs={"weights": weights, "num_classes": num_classes,
                                         "pretrained": pretrained})  # fmt: skip
    print_records(records)
    if json_out:
        write_records(records, json_out)
        click.echo(f"wrote {len(records)} record(s) to {json_out}")


# --------------------------------------------------------------------------------------- demo


@cli.command()
@click.option("-o", "--output", "out", default="runs/demo", show_default=True,
              type=click.Path(file_okay=False))  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=None)
def demo(out, threads) -> None:
    """The built-in end-to-end run: export a small ViT, benchmark it against PyTorch."""
    from tvc.demo import run_demo

    run_demo(Path(out), threads=threads, command=command_line())


def main() -> None:
    cli(prog_name="tvc")


if __name__ == "__main__":
    main()
