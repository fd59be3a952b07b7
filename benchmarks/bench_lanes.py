"""Issue 14 measurements: LSTR lane-shape transformers on tvc's built-in lane set (lanes-synth).

    .venv/bin/python benchmarks/bench_lanes.py teacher --minutes 50     # train the kept teacher
    .venv/bin/python benchmarks/bench_lanes.py students                 # compress, export, bench
    .venv/bin/python benchmarks/bench_lanes.py students --quick         # smoke run

`teacher`: `lstr_micro` trained from scratch on the built-in train split (LSTR's set loss with
Hungarian matching and auxiliary decoder losses, AdamW, cosine schedule over a time budget),
evaluated with the TuSimple metric on the 500 test images, written to
benchmarks/artifacts/lstr_teacher (the recipe's teacher) with its training history.

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
from common import write_result

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "benchmarks" / "artifacts" / "lstr_teacher"
log = logging.getLogger("tvc")


def rel(p: Path | str) -> str:
    p = Path(p).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def torch_predict(model):
    def predict(x):
        with torch.inference_mode():
            logits, curves = model(torch.from_numpy(x))
        return {"logits": logits.numpy(), "curves": curves.numpy()}

    return predict


def evaluate(loaded, data, reference=None):
    from tvc.eval.lanes import evaluate_lanes

    i = loaded.info
    return evaluate_lanes(torch_predict(loaded.model.eval()), data, input_size=i.input_size,
                          mean=i.mean, std=i.std, reference=reference)  # fmt: skip


def cmd_teacher(args) -> None:
    from tvc.data.lanes import load_lanes
    from tvc.models import load_model
    from tvc.models.load import write_model_artifact
    from tvc.train.lanes import LaneTrainConfig, train_lanes

    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    train = load_lanes("lanes-synth", "train", limit=args.train_images)
    val = load_lanes("lanes-synth", "val", limit=args.val_images)
    test = load_lanes("lanes-synth", "test")
    log.info("rendered %d/%d/%d images in %.0f s", len(train), len(val), len(test),
             time.perf_counter() - t0)  # fmt: skip
    loaded = load_model(args.model, warn_random=False)
    work = Path(args.work)
    cfg = LaneTrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          minutes=args.minutes, seed=args.seed, warmup_steps=100)  # fmt: skip

    def on_epoch(epoch):
        m = evaluate(loaded, val)
        write_model_artifact(loaded, work / "teacher_last", spec={"step": "train", "epoch": epoch},
                             metrics={"val": m})  # fmt: skip
        return {"val_accuracy": round(m["accuracy"], 3), "val_f1": round(m["f1"], 3)}

    result = train_lanes(loaded, train, cfg, on_epoch=on_epoch)
    metrics = evaluate(loaded, test)
    loaded.info.weights = "tvc train on lanes-synth (benchmarks/bench_lanes.py teacher)"
    params = sum(p.numel() for p in loaded.model.parameters())
    full = {"accuracy": metrics["accuracy"], "f1": metrics["f1"], "lanes": metrics,
            "params": params, "training": {**result, "data": "lanes-synth",
                                           "train_images": len(train)}}  # fmt: skip
    spec = {"step": "train", "task": "lanes", "data": "lanes-synth", "model": args.model,
            "config": result["config"]}  # fmt: skip
    write_model_artifact(loaded, args.out, spec=spec, metrics=full)
    md = [
        f"LSTR teacher `{args.model}` ({params / 1e6:.3f} M params) trained from scratch on "
        f"{len(train)} lanes-synth train images for {result['epochs']} epochs "
        f"({result['seconds'] / 60:.1f} min on the CPU), evaluated on the {metrics['n']} test "
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
    write_result("lanes_teacher", {"model": args.model, "artifact": rel(args.out),
                                   "test": metrics, "training": result}, "\n".join(md))  # fmt: skip
    print(json.dumps({k: metrics[k] for k in ("accuracy", "fp", "fn", "f1")}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("teacher")
    t.add_argument("--model", default="lstr_micro")
    t.add_argument("--minutes", type=float, default=50.0)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--train-images", type=int, default=6000)
    t.add_argument("--val-images", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--work", default="runs/bench_lanes")
    t.add_argument("--out", default=str(TEACHER))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from tvc.artifact import allow_overwrite

    with allow_overwrite():
        {"teacher": cmd_teacher}[args.cmd](args)


if __name__ == "__main__":
    main()
