"""Issue 14 measurements: LSTR lane-shape transformers on tvc's built-in lane set (lanes-synth).

    .venv/bin/python benchmarks/bench_lanes.py teacher --minutes 50     # train the kept teacher
    .venv/bin/python benchmarks/bench_lanes.py teacher --resume --minutes 75 --seed 1
    .venv/bin/python benchmarks/bench_lanes.py students                 # compress, export, bench
    .venv/bin/python benchmarks/bench_lanes.py students --quick         # smoke run

`teacher`: `lstr_micro` trained from scratch on the built-in train split (LSTR's set loss with
Hungarian matching and auxiliary decoder losses, AdamW, cosine schedule over a time budget),
evaluated with the TuSimple metric on the 500 test images, written to
benchmarks/artifacts/lstr_teacher (the recipe's teacher) with its training history. `--resume`
continues that teacher (a fresh schedule; --seed sets a new data order), adding its epochs,
minutes and history to the ones recorded.

`students`: from that teacher, a student pruned (attention heads + FFN channels, --prune) and
distilled (teacher curves and scores on matched queries, plus the teacher's lanes as set-loss
targets), and the labels-only control (the same pruned student fine-tuned as long on the labels
alone). Each is exported to ONNX (parity with PyTorch in curve pixels) and INT8 (static Q/DQ,
calibrated on train images, parity and TuSimple accuracy); recorded per variant: accuracy, FP,
FN, F1, lane-shape errors, ORT CPU latency at batch 1 (1 thread, interleaved rounds), FPS, size.

Results: benchmarks/results/lanes_teacher.{json,md} and lanes.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import rel, write_result

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "benchmarks" / "artifacts" / "lstr_teacher"
log = logging.getLogger("tvc")


def torch_predict(model):
    def predict(x):
        with torch.inference_mode():
            logits, curves = model(torch.from_numpy(x))
        return {"logits": logits.numpy(), "curves": curves.numpy()}

    return predict


def evaluate(loaded, data, reference=None):
    from tvc.eval.lanes import evaluate_lanes

    i = loaded.info
    return evaluate_lanes(
        torch_predict(loaded.model.eval()),
        data,
        input_size=i.input_size,
        mean=i.mean,
        std=i.std,
        reference=reference,
    )


def cmd_teacher(args) -> None:
    from tvc.data.lanes import load_lanes
    from tvc.models import load_model
    from tvc.models.load import write_model_artifact
    from tvc.train.lanes import LaneTrainConfig, train_lanes

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    train = load_lanes("lanes-synth", "train", limit=args.train_images)
    val = load_lanes("lanes-synth", "val", limit=args.val_images)
    test = load_lanes("lanes-synth", "test")
    log.info(
        "rendered %d/%d/%d images in %.0f s",
        len(train),
        len(val),
        len(test),
        time.perf_counter() - t0,
    )
    before: dict = {}  # the training already recorded in the teacher a --resume run continues
    if args.resume:
        from tvc.artifact import load_artifact

        before = load_artifact(args.out).meta["metrics"]["training"]
    loaded = load_model(args.out if args.resume else args.model, warn_random=False)
    work = Path(args.work)
    cfg = LaneTrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        minutes=args.minutes,
        seed=args.seed,
        warmup_steps=100,
    )

    def on_epoch(epoch):
        m = evaluate(loaded, val)
        write_model_artifact(
            loaded,
            work / "teacher_last",
            spec={"step": "train", "epoch": epoch},
            metrics={"val": m},
        )
        return {"val_accuracy": round(m["accuracy"], 3), "val_f1": round(m["f1"], 3)}

    result = train_lanes(loaded, train, cfg, on_epoch=on_epoch)
    if before:  # one record of all the training this teacher had
        result = {
            **result,
            "epochs": before["epochs"] + result["epochs"],
            "steps": before["steps"] + result["steps"],
            "seconds": round(before["seconds"] + result["seconds"], 1),
            "history": before["history"] + result["history"],
            "runs": [*before.get("runs", [before["config"]]), result["config"]],
        }
        loaded.artifact = None  # it replaces the artifact it continued: no parent of its own
    metrics = evaluate(loaded, test)
    loaded.info.weights = "tvc train on lanes-synth (benchmarks/bench_lanes.py teacher)"
    params = sum(p.numel() for p in loaded.model.parameters())
    full = {
        "tusimple_accuracy": metrics["accuracy"],  # the lanes task's headline key
        "f1": metrics["f1"],
        "lanes": metrics,
        "params": params,
        "training": {**result, "data": "lanes-synth", "train_images": len(train)},
    }
    spec = {
        "step": "train",
        "task": "lanes",
        "data": "lanes-synth",
        "model": args.model,
        "config": result["config"],
    }
    write_model_artifact(loaded, args.out, spec=spec, metrics=full)
    md = [
        f"LSTR teacher `{args.model}` ({params / 1e6:.3f} M params) trained from scratch on "
        f"{len(train)} lanes-synth train images for {result['epochs']} epochs "
        f"({result['seconds'] / 60:.1f} min on the CPU"
        + (f", in {len(result['runs'])} runs" if "runs" in result else "")
        + f"), evaluated on the {metrics['n']} test "
        "images with the TuSimple metric (20 px at 1280 wide, scaled to 128 px: 2 px).",
        "",
        "| accuracy % | FP % | FN % | F1 % | start err px | end err px | x err px |",
        "|---|---|---|---|---|---|---|",
        f"| {metrics['accuracy']:.2f} | {metrics['fp']:.2f} | {metrics['fn']:.2f} | "
        f"{metrics['f1']:.2f} | {metrics.get('start_error_px', 0):.2f} | "
        f"{metrics.get('end_error_px', 0):.2f} | {metrics.get('x_error_px', 0):.2f} |",
        "",
        "Per-epoch validation (200 val images): "
        + ", ".join(f"{h.get('val_accuracy', 0):.1f}" for h in result["history"]),
        "",
        f"Artifact: `{rel(args.out)}`",
    ]
    write_result(
        "lanes_teacher",
        {"model": args.model, "artifact": rel(args.out), "test": metrics, "training": result},
        "\n".join(md),
    )
    print(json.dumps({k: metrics[k] for k in ("accuracy", "fp", "fn", "f1")}))


def onnx_variants(name: str, loaded, work: Path, calib, test_data, rows: list, budget: float):
    """FP32 ONNX (parity in curve pixels) and static INT8 (TuSimple gate) of `loaded`, each
    evaluated with ONNX Runtime on the test images against PyTorch."""
    from tvc.tasks.lanes import LanesTask, export_lanes_onnx, onnx_predictor, quantize_lanes

    task = LanesTask()
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    fp32, int8 = d / "model.onnx", d / "model.int8.onnx"
    check = test_data.arrays()[:16]
    parity = export_lanes_onnx(loaded, fp32, check=check)
    gate = quantize_lanes(fp32, int8, calib, eval_data=calib, budget=budget)
    params = sum(p.numel() for p in loaded.model.parameters())
    ref = task.predictor(loaded)
    for precision, path, extra in (
        ("fp32", fp32, {"export_parity": parity}),
        ("int8", int8, {"int8_gate": _gate_summary(gate)}),
    ):
        m = task.evaluate(onnx_predictor(path, threads=1), test_data, reference=ref)
        rows.append(
            {
                "variant": name,
                "precision": precision,
                "file": rel(path),
                "size_mb": round(path.stat().st_size / 1e6, 4),
                "params": params,
                "lanes": m,
                **extra,
            }
        )
        log.info(
            "%s %s: acc %.2f F1 %.2f, vs PyTorch: agreement %.4f, curves %.3f px",
            name,
            precision,
            m["accuracy"],
            m["f1"],
            m["agreement"],
            m["curve_max_px_vs_reference"],
        )


def _gate_summary(g: dict) -> dict:
    keep = (
        "accuracy_fp32",
        "accuracy",
        "drop",
        "budget",
        "budget_met",
        "float_layers",
        "trt_ready",
    )
    out = {k: g.get(k) for k in keep}
    out["quantized_nodes"] = len(g.get("quantized_nodes", []))
    out["gate_data"] = "calibration (train) images"
    return out


def time_onnx(rows: list, x, rounds: int, quick: bool) -> None:
    """Interleaved ORT CPU latency at batch 1, 1 thread: each round times every file once."""
    import statistics

    from tvc.runtime.bench import time_calls
    from tvc.runtime.ort import OrtRunner

    runners = [OrtRunner(ROOT / r["file"], threads=1) for r in rows]
    kw = (
        {"warmup_s": 0.1, "min_runs": 5, "min_time_s": 0.2}
        if quick
        else {"warmup_s": 0.5, "min_runs": 30, "min_time_s": 2.0}
    )
    p50s: list[list[float]] = [[] for _ in rows]
    for r in range(rounds):
        for k in range(len(rows)):
            i = (k + r) % len(rows)
            p50s[i].append(time_calls(lambda i=i: runners[i].infer(x), **kw).p50)
    for row, runner, samples in zip(rows, runners, p50s, strict=True):
        row["latency_ms_p50"] = round(statistics.median(samples), 3)
        row["fps"] = round(1000 / row["latency_ms_p50"], 1)
        row["latency_round_p50s"] = [round(v, 3) for v in samples]
        runner.close()


def cmd_students(args) -> None:
    import copy

    from tvc.compress.lstr import record_structure
    from tvc.models import load_model
    from tvc.models.load import write_model_artifact
    from tvc.tasks.lanes import LanesTask
    from tvc.train.lanes import LaneDistillConfig, LaneTrainConfig, distill_lanes, train_lanes

    task = LanesTask()
    work = Path(args.work)
    teacher = load_model(args.teacher)
    info = teacher.info
    n_train = 64 if args.quick else args.train_images
    train = task.load_data("lanes-synth", "train", info, limit=n_train)
    test = task.load_data("lanes-synth", "test", info, limit=32 if args.quick else None)
    calib = task.load_data("lanes-synth", "train", info, limit=8 if args.quick else 256)
    t_quality = task.quality(teacher, test)
    log.info("teacher: %s", task.describe(t_quality))
    pruned = copy.deepcopy(teacher)
    prune_report = task.prune(pruned.model, {"prune": args.prune}, example=None)
    record_structure(pruned)
    p_quality = task.quality(pruned, test, reference=teacher)
    log.info("pruned %.0f%%, before training: %s", 100 * args.prune, task.describe(p_quality))
    epochs = 1 if args.quick else args.epochs
    common = {
        "epochs": epochs,
        "batch_size": 32,
        "lr": args.lr,
        "warmup_steps": 20,
        "seed": args.seed,
    }
    students: dict[str, dict] = {}
    for name in ("distilled", "labels_only"):
        student = copy.deepcopy(pruned)
        if name == "distilled":
            rep = distill_lanes(
                student,
                teacher,
                train.lanes,
                LaneDistillConfig(**common, label_weight=args.label_weight),
            )
        else:
            rep = train_lanes(student, train.lanes, LaneTrainConfig(**common))
        q = task.quality(student, test, reference=teacher)
        log.info("%s: %s (%.0f s)", name, task.describe(q), rep["seconds"])
        student.info.weights = f"pruned {args.prune} from {rel(args.teacher)}, {name}"
        write_model_artifact(
            student,
            work / f"student_{name}",
            spec={"step": name},
            metrics={**task.headline(q), "training": rep},
        )
        students[name] = {
            "model": student,
            "quality": q,
            "training": {k: rep[k] for k in ("epochs", "steps", "seconds", "history")},
        }
    rows: list[dict] = []
    onnx_variants("teacher", teacher, work, calib, test, rows, args.int8_budget)
    onnx_variants(
        "pruned_distilled",
        students["distilled"]["model"],
        work,
        calib,
        test,
        rows,
        args.int8_budget,
    )
    onnx_variants(
        "pruned_labels_only",
        students["labels_only"]["model"],
        work,
        calib,
        test,
        rows,
        args.int8_budget,
    )
    x = test.arrays()[:1]
    time_onnx(rows, x, 2 if args.quick else args.rounds, args.quick)
    base = next(r for r in rows if r["variant"] == "teacher" and r["precision"] == "fp32")
    for r in rows:
        r["speedup_vs_teacher_fp32"] = round(base["latency_ms_p50"] / r["latency_ms_p50"], 3)
        r["size_reduction_vs_teacher_fp32"] = round(base["size_mb"] / r["size_mb"], 3)
    data = {
        "teacher": rel(args.teacher),
        "settings": {
            "prune": args.prune,
            "epochs": epochs,
            "train_images": len(train),
            "lr": args.lr,
            "label_weight": args.label_weight,
            "int8_budget_points": args.int8_budget,
            "test_images": len(test),
            "threads": 1,
            "batch": 1,
            "rounds": args.rounds,
        },
        "pytorch": {
            "teacher": t_quality,
            "pruned_untrained": p_quality,
            **{k: v["quality"] for k, v in students.items()},
        },
        "prune": {k: prune_report[k] for k in ("ratio", "params_before", "params_after")},
        "training": {k: v["training"] for k, v in students.items()},
        "onnx": rows,
    }
    md = [
        f"LSTR on tvc's built-in lane set (lanes-synth, {len(test)} test images, 128x72; "
        "TuSimple metric with the 20-px threshold scaled to 2 px). Teacher "
        f"`{rel(args.teacher)}`; students pruned {args.prune:.0%} (attention heads + FFN "
        f"channels, {prune_report['params_before']:,} -> {prune_report['params_after']:,} "
        f"params), then {epochs} epoch(s) on {len(train)} train images: distilled from the "
        "teacher, or fine-tuned on the labels alone (the control). ONNX Runtime CPU, batch 1, "
        f"1 thread, median of {args.rounds} interleaved rounds.",
        "",
        "| variant | precision | TuSimple acc % | F1 % | FP % | FN % | x err px | vs PyTorch: "
        "lane agreement / max curve diff px | p50 ms | FPS | size MB | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["lanes"]
        md.append(
            f"| {r['variant']} | {r['precision']} | {m['accuracy']:.2f} | {m['f1']:.2f} | "
            f"{m['fp']:.2f} | {m['fn']:.2f} | {m.get('x_error_px', float('nan')):.2f} | "
            f"{m['agreement']:.4f} / {m['curve_max_px_vs_reference']:.3f} | "
            f"{r['latency_ms_p50']:.2f} | {r['fps']:.0f} | {r['size_mb']:.3f} | "
            f"{r['speedup_vs_teacher_fp32']:.2f}x |"
        )
    md += [
        "",
        f"PyTorch: teacher {t_quality['accuracy']:.2f}%, pruned before training "
        f"{p_quality['accuracy']:.2f}%, distilled "
        f"{students['distilled']['quality']['accuracy']:.2f}%, labels only "
        f"{students['labels_only']['quality']['accuracy']:.2f}%.",
        "Curve differences are in pixels of the 128-px-wide test images, over rows both models "
        "call lanes; INT8 layers kept in float by the TuSimple gate: "
        + "; ".join(
            f"{r['variant']}: {len(r['int8_gate']['float_layers'] or [])}"
            for r in rows
            if r["precision"] == "int8"
        ),
    ]
    md += outcome(t_quality, students, rows, epochs)
    write_result("lanes_quick" if args.quick else "lanes", data, "\n".join(md))


def outcome(t_quality: dict, students: dict, rows: list, epochs: int) -> list[str]:
    """The issue's targets against these numbers, in words (derived, never hand-written)."""
    t = t_quality["accuracy"]
    d, c = (students[k]["quality"] for k in ("distilled", "labels_only"))
    by = {(r["variant"], r["precision"]): r for r in rows}
    out = [
        "",
        "## Outcome against the issue's targets",
        "",
        f"- Teacher: TuSimple accuracy {t:.2f}%, F1 {t_quality['f1']:.2f} (goal >= 95%: "
        f"**{'met' if t >= 95 else 'not met'}**).",
        f"- Distilled vs the labels-only control, same pruned start and {epochs} epoch(s): "
        f"{d['accuracy']:.2f}% vs {c['accuracy']:.2f}% ({d['accuracy'] - c['accuracy']:+.2f} "
        f"points), F1 {d['f1']:.2f} vs {c['f1']:.2f}.",
    ]
    for name in ("teacher", "pruned_distilled", "pruned_labels_only"):
        f32, i8 = by.get((name, "fp32")), by.get((name, "int8"))
        if f32 and i8:
            out.append(
                f"- {name} INT8: {i8['lanes']['accuracy'] - f32['lanes']['accuracy']:+.2f} points, "
                f"{f32['size_mb'] / i8['size_mb']:.1f}x smaller, "
                f"{f32['latency_ms_p50'] / i8['latency_ms_p50']:.2f}x the FP32 speed on this CPU; "
                f"curves within {i8['lanes']['curve_max_px_vs_reference']:.2f} px of PyTorch."
            )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher")
    t.add_argument("--model", default="lstr_micro")
    t.add_argument("--minutes", type=float, default=50.0)
    t.add_argument("--resume", action="store_true", help="continue the teacher at --out")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--train-images", type=int, default=6000)
    t.add_argument("--val-images", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--work", default="runs/bench_lanes")
    t.add_argument("--out", default=str(TEACHER))
    st = sub.add_parser("students")
    st.add_argument("--teacher", default=str(TEACHER))
    st.add_argument("--prune", type=float, default=0.5)
    st.add_argument("--epochs", type=int, default=2)
    st.add_argument("--lr", type=float, default=5e-4)
    st.add_argument("--label-weight", type=float, default=0.0)
    st.add_argument("--train-images", type=int, default=2000)
    st.add_argument("--int8-budget", type=float, default=1.0)
    st.add_argument("--rounds", type=int, default=5)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--quick", action="store_true")
    st.add_argument("--work", default="runs/bench_lanes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from tvc.artifact import allow_overwrite

    with allow_overwrite():
        {"teacher": cmd_teacher, "students": cmd_students}[args.cmd](args)


if __name__ == "__main__":
    main()
