"""Issue 8 measurements: DETR and Deformable DETR on tvc's built-in Fashion-MNIST detection set.

    .venv/bin/python benchmarks/bench_detection.py                    # the full run
    .venv/bin/python benchmarks/bench_detection.py --device cuda      # train on a GPU
    .venv/bin/python benchmarks/bench_detection.py --teacher runs/bench_detection/teacher
    .venv/bin/python benchmarks/bench_detection.py --quick            # smoke run, a few minutes

DETR: `detr_pico` is trained here from scratch on the built-in set (DETR's set loss with
Hungarian matching and auxiliary decoder losses), or taken from --teacher (a tvc model
artifact). A student is made from it by pruning attention heads and FFN channels (--prune) and
distilled from it (the teacher's detections as targets, logit/box imitation on matched queries).
Both are exported to ONNX (FP32, proven against PyTorch) with a static INT8 Q/DQ variant
(transformer-safe placement, calibrated on training scenes). Recorded per variant: COCO
mAP@[.5:.95] and AP50 on the test scenes (PyTorch and ONNX Runtime), ONNX Runtime CPU latency
(batch 1, fixed threads, interleaved rounds: the median of per-round medians), size, parameters.

Deformable DETR: `deformable_detr_pico` (random weights, or trained --ddetr-epochs) exported with
both bilinear samplers (gather, grid): the parity of each with PyTorch on test scenes, of the two
with each other, and their ORT CPU latency.

Results: benchmarks/results/detection.json and .md (--quick: detection_quick.*). Models and ONNX
files go under --work (default runs/bench_detection).

The committed detection.* come from two runs on a 2-core CPU. The first trained the teacher for
40 epochs (`--train-images 4000 --eval-images 500 --epochs 40 --prune 0.5`) and was stopped once
it had saved it (runs/bench_detection/teacher, copied to teacher40); the second continued that
teacher for 60 more epochs and measured everything (its command heads detection.md). The
teacher it wrote is kept as benchmarks/artifacts/detr_teacher (the fmnist-det recipe's model).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import rel, write_result

from tvc.artifact import load_artifact, update_metrics
from tvc.compress.detection import DetPruneConfig, compress_detector
from tvc.data.detection import load_detection
from tvc.eval.detection import evaluate_model
from tvc.export.flow import export_model
from tvc.export.parity import outputs_parity
from tvc.models import load_model
from tvc.models.load import LoadedModel, write_model_artifact
from tvc.runtime.bench import time_calls
from tvc.runtime.ort import OrtRunner
from tvc.stages.export import Config as ExportConfig
from tvc.tasks.detection import DetectionTask
from tvc.train.detection import DetDistillConfig, DetTrainConfig, distill_detector, train_detector
from tvc.train.set_loss import SetLossConfig

log = logging.getLogger("tvc")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs")
    p.add_argument("--data", default="fashion-mnist-det", help="detection DATA (built-in set)")
    p.add_argument("--teacher", default=None, help="a trained DETR model artifact to start from")
    p.add_argument("--model", default="detr_micro", help="DETR config trained as the teacher")
    p.add_argument(
        "--more-epochs",
        type=int,
        default=0,
        help="train the --teacher artifact this many more epochs first (--lr, set loss as here)",
    )
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--epochs", type=int, default=60, help="teacher training epochs")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--prune", type=float, default=0.3, help="share of heads and FFN removed")
    p.add_argument("--distill-epochs", type=int, default=15)
    p.add_argument(
        "--class-weight", type=float, default=2.0, help="class term of the set loss (DETR: 1)"
    )
    p.add_argument(
        "--label-weight",
        type=float,
        default=1.0,
        help="distillation also fits the labels at this weight (0: the teacher alone)",
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the control: the pruned student fine-tuned on labels alone, no teacher",
    )
    p.add_argument("--ddetr-epochs", type=int, default=0, help="train Deformable DETR first")
    p.add_argument("--calib-images", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime CPU threads")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--work", default="runs/bench_detection")
    args = p.parse_args()
    if args.quick:
        args.train_images, args.eval_images, args.epochs = 48, 16, 1
        args.distill_epochs, args.calib_images, args.rounds = 1, 8, 2
        args.ddetr_epochs = min(args.ddetr_epochs, 1)
        args.work = str(Path(args.work) / "quick")
    return args


def evaluate(loaded, data, device: str) -> dict[str, Any]:
    return evaluate_model(loaded, data, device=device, batch_size=64)


def save(loaded, path: Path, spec: dict, metrics: dict) -> None:
    write_model_artifact(loaded, path, spec=spec, metrics=metrics)


def teacher_model(args, train, test) -> tuple[Any, dict]:
    if args.teacher and not args.more_epochs:
        loaded = load_model(args.teacher)
        return loaded, {"source": args.teacher, "trained_here": False}
    torch.manual_seed(0)
    loaded = load_model(args.teacher or args.model, warn_random=False)
    epochs = args.more_epochs or args.epochs
    cfg = DetTrainConfig(
        epochs=epochs,
        lr=args.lr,
        grad_clip=0.1,
        batch_size=args.batch_size,
        device=args.device,
        loss=SetLossConfig(class_weight=args.class_weight),
    )
    source = args.teacher or args.model
    log.info("training %s for %d epochs on %d scenes", source, epochs, len(train))
    metrics = train_detector(loaded, train, cfg)
    # Epochs the given artifact had already had (as this script records them in its spec).
    before = load_artifact(args.teacher).meta["spec"].get("epochs", 0) if args.teacher else 0
    return loaded, {
        "source": source,
        "trained_here": True,
        "train_seconds": metrics["seconds"],
        "final_loss": metrics["history"][-1],
        "epochs": before + epochs,
        "epochs_this_run": epochs,
    }


def export(loaded, path: Path, args, **kw) -> Any:
    """tvc's export flow with its own eval size; INT8 is measured as quantized (no fallback)."""
    loaded.model.to("cpu")
    cfg = ExportConfig(
        model=loaded.info.name,
        output=str(path),
        calib=args.data,
        calib_size=args.calib_images,
        eval_data=args.data,
        int8_budget=100.0,
        **kw,
    )
    task = DetectionTask()
    task.export_eval_limit = args.eval_images
    return export_model(task, loaded, cfg)


def parity_of(ref: tuple, got: tuple) -> dict[str, Any]:
    pair = [dict(zip(("logits", "boxes"), o, strict=True)) for o in (ref, got)]
    return outputs_parity(DetectionTask(), [pair[0]], [pair[1]], atol=1e-4, rtol=1e-3)


def onnx_rows(art, name: str) -> list[dict[str, Any]]:
    """One row per ONNX variant of an export artifact: mAP, size."""
    rows = []
    for fname, v in art.meta["variants"].items():
        det = art.meta["metrics"]["detection"] if fname == "model.onnx" else v.get("int8_eval", {})
        rows.append(
            {
                "variant": f"{name} {v['precision']}",
                "file": rel(art.path / fname),
                "precision": v["precision"],
                "map": det.get("map"),
                "ap50": det.get("ap50"),
                "size_mb": round(art.meta["files"][fname]["bytes"] / 1e6, 3),
                "params": art.meta["metrics"]["params"],
            }
        )
    return rows


def time_onnx(rows: list[dict[str, Any]], x: np.ndarray, args) -> None:
    """Interleaved ORT CPU latency: each round times every file once (start rotated)."""
    runners = [OrtRunner(r["file"], threads=args.threads) for r in rows]
    p50s: list[list[float]] = [[] for _ in rows]
    kw = (
        {"warmup_s": 0.1, "min_runs": 5, "min_time_s": 0.2}
        if args.quick
        else {"warmup_s": 1.0, "min_runs": 30, "min_time_s": 3.0}
    )
    for r in range(args.rounds):
        for k in range(len(rows)):
            i = (k + r) % len(rows)
            p50s[i].append(time_calls(lambda i=i: runners[i].infer(x), **kw).p50)
    for row, runner, samples in zip(rows, runners, p50s, strict=True):
        row["latency_ms_p50"] = round(statistics.median(samples), 3)
        row["latency_round_p50s"] = [round(s, 3) for s in samples]
        runner.close()


def deformable(args, train, test, work: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    torch.manual_seed(0)
    loaded = load_model("deformable_detr_pico", warn_random=False)
    out: dict[str, Any] = {"model": "deformable_detr_pico", "trained_epochs": args.ddetr_epochs}
    if args.ddetr_epochs:
        train_detector(
            loaded,
            train,
            DetTrainConfig(
                epochs=args.ddetr_epochs, lr=5e-4, batch_size=args.batch_size, device=args.device
            ),
        )
        out["torch"] = evaluate(loaded, test, args.device)
    loaded.model.to("cpu")
    info = loaded.info
    x = np.concatenate(
        [b[0] for b in test.batches(64, input_size=info.input_size, mean=info.mean, std=info.std)]
    )
    with torch.no_grad():
        ref = tuple(t.numpy() for t in loaded.model(torch.from_numpy(x)))
    rows, got = [], {}
    for sampling in ("gather", "grid"):
        art = export(loaded, work / f"ddetr_{sampling}", args, sampling=sampling)
        with OrtRunner(art.path / "model.onnx", threads=args.threads) as runner:
            outs = [runner.infer(x[i : i + 1]) for i in range(len(x))]
        got[sampling] = (
            np.concatenate([o["logits"] for o in outs]),
            np.concatenate([o["boxes"] for o in outs]),
        )
        par = parity_of(ref, got[sampling])
        ops = _op_counts(art.path / "model.onnx")
        out[sampling] = {
            "parity_vs_torch_test_images": par,
            "parity_vs_torch_export_check": art.meta["metrics"]["parity"],
            "ops": ops,
            "map_onnx": art.meta["metrics"]["detection"]["map"],
        }
        rows += [
            r
            for r in onnx_rows(art, f"deformable_detr_pico {sampling}")
            if r["precision"] == "fp32"
        ]
    out["gather_vs_grid"] = parity_of(got["grid"], got["gather"])
    return out, rows


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {"nodes": len(ops), "GridSample": ops.count("GridSample"), "Gather": ops.count("Gather")}


def markdown(result: dict[str, Any]) -> str:
    det, ddetr = result["detr"], result["deformable_detr"]
    t = det["teacher"]
    how = f"trained here, {t.get('epochs')} epochs" if t["trained_here"] else "given"
    if t.get("epochs_this_run", t.get("epochs")) != t.get("epochs"):
        how += f", the last {t['epochs_this_run']} in this run"
    lines = [
        "## DETR on the built-in Fashion-MNIST detection set",
        "",
        f"Teacher: {t['source']} ({how}); "
        f"{result['config']['train_images']} training scenes, {result['config']['eval_images']} "
        "test scenes. Student: heads and FFN channels pruned by "
        f"{result['config']['prune']:.0%}, distilled {result['config']['distill_epochs']} epochs.",
        "",
        f"PyTorch mAP: teacher {det['teacher']['torch']['map']:.2f} (AP50 "
        f"{det['teacher']['torch']['ap50']:.2f}); student after pruning "
        f"{det['student']['pruned_torch']['map']:.2f}, after distillation "
        f"{det['student']['torch']['map']:.2f} (AP50 {det['student']['torch']['ap50']:.2f})"
        + _control(det["student"])
        + ".",
        "",
        "Agreement of the distilled student with the teacher (COCO mAP of its detections scored "
        f"against the teacher's): {_pts(det['student']['agreement_with_teacher'])}.",
        "",
        f"ONNX Runtime CPU, batch 1, {result['config']['threads']} thread(s):",
        "",
        "| variant | params | size MB | mAP | AP50 | p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["onnx"]:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['size_mb']:.2f} | {_num(r['map'])} | "
            f"{_num(r['ap50'])} | {r['latency_ms_p50']:.2f} |"
        )
    lines += [
        "",
        "## Deformable DETR: the two bilinear samplers",
        "",
        f"{ddetr['model']}: "
        + (
            f"trained here {ddetr['trained_epochs']} epochs, PyTorch mAP "
            f"{ddetr['torch']['map']:.2f} (AP50 {ddetr['torch']['ap50']:.2f})"
            if ddetr["trained_epochs"]
            else "random weights"
        )
        + f"; parity on {result['config']['eval_images']} test scenes, ORT CPU batch 1.",
        "",
        "| sampler | max abs diff logits vs PyTorch | boxes | class agreement | GridSample "
        "nodes | p50 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lat = {r["variant"].split()[1]: r["latency_ms_p50"] for r in result["deformable_rows"]}
    for s in ("gather", "grid"):
        p = ddetr[s]["parity_vs_torch_test_images"]
        lines.append(
            f"| {s} | {p['logits_max_abs_diff']:.2e} | {p['boxes_max_abs_diff']:.2e} | "
            f"{p['class_agreement']:.1%} | {ddetr[s]['ops']['GridSample']} | "
            f"{lat[s]:.2f} |"
        )
    g = ddetr["gather_vs_grid"]
    lines += [
        "",
        f"gather vs grid: logits max abs diff {g['logits_max_abs_diff']:.2e}, boxes "
        f"{g['boxes_max_abs_diff']:.2e}, class agreement {g['class_agreement']:.1%}.",
    ]
    return "\n".join(lines)


def _pts(value: float | None) -> str:
    """mAP points, or why there are none (a teacher with no confident detection to agree with)."""
    return (
        "n/a (the teacher detects nothing with score >= 0.5)" if value is None else f"{value:.2f}"
    )


def _control(student: dict[str, Any]) -> str:
    f = student.get("finetune_only")
    if f is None:
        return ""
    return (
        f"; the same pruned student fine-tuned as long on the labels alone (no teacher): "
        f"{f['map']:.2f} (AP50 {f['ap50']:.2f})"
    )


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("tvc").setLevel(logging.INFO)
    work = Path(args.work)
    t0 = time.perf_counter()
    train = load_detection(args.data, "train", limit=args.train_images)
    test = load_detection(args.data, "test", limit=args.eval_images)

    teacher, t_meta = teacher_model(args, train, test)
    t_meta["torch"] = evaluate(teacher, test, args.device)
    log.info("teacher mAP %.2f (AP50 %.2f)", t_meta["torch"]["map"], t_meta["torch"]["ap50"])
    if t_meta["trained_here"]:
        save(
            teacher,
            work / "teacher",
            {"stage": "train-detection", "epochs": t_meta["epochs"]},
            {"map": t_meta["torch"]["map"], "ap50": t_meta["torch"]["ap50"]},
        )
        teacher = load_model(str(work / "teacher"))

    student, report = compress_detector(teacher, prune=DetPruneConfig(ratio=args.prune))
    s_meta: dict[str, Any] = {"prune": {k: report[k] for k in ("params_before", "params_after")}}
    s_meta["pruned_torch"] = evaluate(student, test, args.device)
    teacher.model.to(args.device)
    recover = {
        "epochs": args.distill_epochs,
        "lr": 5e-4,
        "grad_clip": 0.1,
        "batch_size": args.batch_size,
        "device": args.device,
        "loss": SetLossConfig(class_weight=args.class_weight),
    }
    if not args.no_baseline:  # the control: same pruned start and epochs, labels only
        control = LoadedModel(copy.deepcopy(student.model), student.info)
        f = train_detector(control, train, DetTrainConfig(**recover))
        s_meta["finetune_only"] = {"seconds": f["seconds"], **evaluate(control, test, args.device)}
        log.info(
            "pruned student fine-tuned without teacher: mAP %.2f", s_meta["finetune_only"]["map"]
        )
        del control
    dcfg = DetDistillConfig(**recover, label_weight=args.label_weight)
    d = distill_detector(student, teacher, train, dcfg)
    s_meta["distill_seconds"], s_meta["distill_final"] = d["seconds"], d["history"][-1]
    s_meta["torch"] = evaluate(student, test, args.device)
    s_meta["agreement_with_teacher"] = evaluate_model(
        student, test, device=args.device, batch_size=16, reference=teacher
    )["agreement"]
    log.info(
        "student mAP %.2f after pruning, %.2f after distillation",
        s_meta["pruned_torch"]["map"],
        s_meta["torch"]["map"],
    )
    save(
        student,
        work / "student",
        {"stage": "compress-detection", "prune": args.prune},
        {"map": s_meta["torch"]["map"], "ap50": s_meta["torch"]["ap50"]},
    )

    rows = []
    for name, loaded in (("teacher", teacher), ("student", student)):
        art = export(loaded, work / f"{name}_onnx", args, int8="static")
        update_metrics(load_artifact(art.path), bench="detection")
        rows += onnx_rows(art, f"DETR {name}")
    ddetr, ddetr_rows = deformable(args, train, test, work)
    x = next(
        test.batches(
            1, input_size=teacher.info.input_size, mean=teacher.info.mean, std=teacher.info.std
        )
    )[0]
    time_onnx(rows + ddetr_rows, x, args)

    result = {
        "config": {k: v for k, v in vars(args).items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "detr": {"teacher": t_meta, "student": s_meta},
        "onnx": rows,
        "deformable_detr": ddetr,
        "deformable_rows": ddetr_rows,
    }
    path = write_result("detection_quick" if args.quick else "detection", result, markdown(result))
    print(markdown(result))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
