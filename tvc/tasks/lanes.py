"""The lanes task: LSTR lane-shape transformers on TuSimple-format lane data.

Models are tvc's LSTR configs (`lstr_pico`, `lstr_micro`, `lstr_paper`) and artifacts of family
"lstr"; data is `lanes-synth` (tvc's rendered road scenes), `lanes-synth:/dir`, or a TuSimple
directory / JSON-lines file (tvc.data.lanes). The metric is TuSimple accuracy in percent, with
FP, FN, F1 and lane-shape errors beside it (tvc.eval.lanes). ONNX graphs take `input`
(N x 3 x H x W) and give `logits` (N x Q x 2) and `curves` (N x Q x 8).

Besides the Task methods (pruning and low-rank are tvc.compress.lstr's), this module holds:
`export_lanes_onnx` (ONNX with parity in curve pixels) and `quantize_lanes` (static
INT8 Q/DQ held to a TuSimple-accuracy budget).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tvc.errors import ParityError
from tvc.tasks.base import (
    IGPT_TRAINING_ONLY,
    Column,
    OnnxIO,
    Outputs,
    Predict,
    Task,
    artifact_family,
    first_set,
)

if TYPE_CHECKING:
    from tvc.data.lanes import LaneSet
    from tvc.models.load import LoadedModel, ModelInfo

log = logging.getLogger("tvc")

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "curves")
REFERENCE_WIDTH = 1280  # curve differences are also given in pixels of a 1280-wide image
_ROWS = np.linspace(0.0, 1.0, 72)
_MAGNITUDE = "lane models prune heads and FFN channels of every layer by weight magnitude"
_SET_LOSS = "lane models distil with LSTR's set loss and curve imitation on matched queries"


@dataclass
class LaneData:
    """A LaneSet and the preprocessing of the model it is fed to."""

    lanes: LaneSet
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.lanes)

    def arrays(self, batch_size: int = 64) -> np.ndarray:
        return np.concatenate([b[0] for b in self.lanes.batches(
            batch_size, input_size=self.input_size, mean=self.mean, std=self.std)])  # fmt: skip


class LanesTask(Task):
    name = "lanes"
    # not "accuracy": classifier artifacts keep their whole quality dict under that key
    metric = "tusimple_accuracy"
    metric_label = "TuSimple accuracy %"
    noun = "lane model"
    quality_key = "lanes"
    data_example = "lanes-synth"
    columns = (
        Column("tusimple_accuracy", "TuSimple acc %"),
        Column("f1", "F1 %"),
        Column("fp", "FP %", higher_is_better=False),
        Column("fn", "FN %", higher_is_better=False),
    )
    refuses: ClassVar[dict[str, dict[str, str]]] = {
        "compress": {
            "importance": _MAGNITUDE,
            "global_": _MAGNITUDE,
            "prune_heads": _MAGNITUDE,
            "keep": _MAGNITUDE,
            "steps": _MAGNITUDE,
            "kd": _SET_LOSS,
            "temperature": _SET_LOSS,
            "alpha": _SET_LOSS,
        },
        "train": {
            "label_smoothing": "lane models train with LSTR's set loss",
            "resume": "lane model training keeps no checkpoint",
            "num_queries": "lane models keep their config's lane queries",
            "finetune": IGPT_TRAINING_ONLY,
            "ema": IGPT_TRAINING_ONLY,
        },
    }

    # ------------------------------------------------------------------ what belongs to the task
    def owns_model(self, spec: str) -> bool:
        from tvc.models.lstr import LSTR_CONFIGS

        if spec in LSTR_CONFIGS:
            return True
        return artifact_family(Path(spec)) == "lstr"

    def owns_info(self, info: ModelInfo) -> bool:
        return info.family == "lstr" or info.extra.get("task") == "lanes"

    def owns_data(self, spec: str) -> bool:
        from tvc.data.lanes import is_lanes_spec

        return is_lanes_spec(spec)

    def misfit_data(self, spec: str) -> str | None:
        from tvc.data.lanes import misnamed_label_files

        found = misnamed_label_files(spec)
        if not found:
            return None
        return (
            f"its TuSimple label files ({', '.join(found[:3])}) need the names train.json, "
            "val.json and test.json (or TuSimple's label_data_*.json and test_label.json): "
            f"rename them, or pass one file, e.g. --data {Path(spec) / found[0]}"
        )

    # --------------------------------------------------------------------------------- data
    def load_data(self, spec: str, split: str, info: ModelInfo, *, limit: int | None = None,
                  seed: int = 0) -> LaneData:  # fmt: skip
        from tvc.data.lanes import load_lanes

        data = load_lanes(spec, split, limit=limit, seed=seed)
        return LaneData(data, tuple(info.input_size), tuple(info.mean), tuple(info.std))

    def sample_inputs(self, info: ModelInfo, data_spec: str | None, n: int) -> tuple[Any, str]:
        import torch

        if data_spec is None:
            gen = torch.Generator().manual_seed(0)
            return torch.randn(n, *info.input_size, generator=gen), "random inputs"
        data = self.load_data(data_spec, "test", info, limit=n)
        return torch.from_numpy(data.arrays()), f"{data.lanes.name} test images"

    # ----------------------------------------------------------------------------- running
    def outputs(self, model: Any, x: Any) -> Outputs:
        import torch

        model.eval()
        t = torch.as_tensor(np.asarray(x, np.float32)) if not torch.is_tensor(x) else x
        device = next(model.parameters()).device
        with torch.inference_mode():
            logits, curves = model(t.to(device))
        return {"logits": logits.float().cpu().numpy(), "curves": curves.float().cpu().numpy()}

    def agreement(
        self, reference: Outputs, candidate: Outputs, *, info: ModelInfo | None = None
    ) -> dict[str, Any]:
        return curve_agreement(reference, candidate)

    def evaluate(self, predict: Predict, data: LaneData, *, batch_size: int = 64,
                 reference: Predict | None = None) -> dict[str, Any]:  # fmt: skip
        from tvc.eval.lanes import evaluate_lanes

        metrics = evaluate_lanes(predict, data.lanes, input_size=data.input_size,
                                 mean=data.mean, std=data.std, batch_size=batch_size,
                                 reference=reference)  # fmt: skip
        metrics.update(dataset=data.lanes.name, split=data.lanes.split)
        metrics[self.metric] = metrics["accuracy"]
        return metrics

    def headline(self, quality: dict[str, Any]) -> dict[str, Any]:
        return {self.metric: quality[self.metric], "f1": quality["f1"],
                self.quality_key: quality}  # fmt: skip

    def describe(self, quality: dict[str, Any]) -> str:
        q = quality
        return (f"TuSimple accuracy {q['accuracy']:.2f}% (F1 {q['f1']:.2f}, FP {q['fp']:.2f}%, "
                f"FN {q['fn']:.2f}%) on {q['n']} images")  # fmt: skip

    def eval_line(self, result: dict[str, Any]) -> str:
        r = result
        agree = f", lane agreement {r['agreement']:.3f}" if r.get("agreement") is not None else ""
        return (
            f"{r['variant']} [{r['backend']}]: TuSimple accuracy {r['accuracy']:.2f}%, "
            f"F1 {r['f1']:.2f}{agree} on {r['n']} {r['dataset']} {r['split']} images"
        )

    # --------------------------------------------------------------------- train, compress
    def train(self, loaded: LoadedModel, data_spec: str, settings: dict[str, Any]) -> dict:
        from tvc.data.lanes import load_lanes
        from tvc.train.lanes import lane_train_config, train_lanes

        settings = dict(settings)
        if settings.get("warmup_epochs") is not None:
            settings["warmup_steps"] = None  # set below, once the data size is known
        cfg = lane_train_config(loaded, settings)
        train = load_lanes(data_spec, "train", limit=first_set(settings, "limit"))
        # read before training: a missing test split must not cost a finished run
        test = self.load_data(data_spec, "test", loaded.info,
                              limit=first_set(settings, "eval_limit"))  # fmt: skip
        if settings.get("warmup_epochs") is not None:
            per_epoch = -(-len(train) // cfg.batch_size)
            cfg.warmup_steps = max(1, round(settings["warmup_epochs"] * per_epoch))
        report = train_lanes(loaded, train, cfg)
        quality = self.quality(loaded, test, device=cfg.device)
        return {
            **self.headline(quality),
            "training": {**report, "data": data_spec, "limit": settings.get("limit")},
        }

    def prune(self, model: Any, settings: dict[str, Any], *, example: Any,
              batches: list | None = None) -> dict[str, Any]:  # fmt: skip
        ratio = first_set(settings, "prune", "ratio", default=0.3)
        from tvc.compress.lstr import prune_lstr

        return prune_lstr(model, float(ratio), heads=settings.get("heads", True),
                          ffn=settings.get("ffn", True),
                          round_to=int(settings.get("round_to", 8)))  # fmt: skip

    def distill(self, student: LoadedModel, teacher: LoadedModel, data_spec: str,
                settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        from tvc.data.lanes import load_lanes
        from tvc.train.lanes import LaneDistillConfig, distill_lanes, lane_train_config

        given = {k: settings[k] for k in ("epochs", "lr", "batch_size", "device", "seed",
                                          "label_weight", "minutes") if k in settings}  # fmt: skip
        # distilling starts from trained weights: lr 5e-4 (FINE_TUNE's 2e-4 is for labels)
        cfg = lane_train_config(student, {"epochs": 1, "lr": 5e-4, **given}, LaneDistillConfig)
        train = load_lanes(data_spec, "train", limit=first_set(settings, "limit"))
        return distill_lanes(student, teacher, train, cfg)

    def factorize(self, model: Any, lowrank: Any, *, samples: Any) -> dict[str, Any]:
        from tvc.compress.lstr import factorize_lstr

        return factorize_lstr(model, lowrank)

    # ------------------------------------------------------------------------------ export
    def onnx_io(self, info: ModelInfo) -> OnnxIO:
        return OnnxIO(
            inputs=(INPUT_NAME,),
            outputs=OUTPUT_NAMES,
            dynamic={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        )

    export_eval_limit = 500  # the built-in test split; each INT8 gate step decodes them all
    default_calib = "lanes-synth"
    parity_hint = "export with another --opset; if it persists, report the model"

    def images(self, data: LaneData) -> Any:
        from tvc.data.base import ImageSet

        x = data.arrays()
        return ImageSet.from_arrays(x, np.zeros(len(x), np.int64), name=data.lanes.name,
                                    split=data.lanes.split)  # fmt: skip


def onnx_predictor(path: str | Path, threads: int | None = None) -> Predict:
    """predict(batch) -> {"logits", "curves"} of an ONNX lane model under ONNX Runtime."""
    from tvc.runtime.ort import OrtRunner

    runner = OrtRunner(path, threads=threads)
    fixed = runner.session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else None  # a fixed-batch export runs in chunks

    def predict(x: np.ndarray) -> Outputs:
        x = np.ascontiguousarray(x, np.float32)
        if step is None or len(x) == step:
            out = runner.infer(x)
            return {k: out[k] for k in OUTPUT_NAMES}
        parts = [predict(x[i : i + step]) for i in range(0, len(x), step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_NAMES}

    return predict


# ---------------------------------------------------------------------------- agreement


def curve_agreement(reference: Outputs, candidate: Outputs, threshold: float = 0.5
                    ) -> dict[str, Any]:  # fmt: skip
    """How closely `candidate` follows `reference`: max |difference| of raw outputs, the share of
    queries whose lane / no-lane decision agrees (`agreement`, also `class_agreement`), and on
    queries both call lanes the largest curve difference in normalised x over the reference's
    rows (`curve_max_diff`), also in pixels of a 1280-wide image (`curve_max_px_1280`;
    TuSimple's threshold is 20)."""
    from tvc.data.lanes import curve_x
    from tvc.eval.lanes import lane_scores

    max_abs = max(float(np.max(np.abs(np.asarray(reference[k], np.float64)
                                      - np.asarray(candidate[k], np.float64))))
                  for k in OUTPUT_NAMES)  # fmt: skip
    a = lane_scores(reference["logits"]) >= threshold
    b = lane_scores(candidate["logits"]) >= threshold
    both = a & b
    worst = 0.0
    if both.any():
        rc = np.asarray(reference["curves"], np.float64)[both]
        cc = np.asarray(candidate["curves"], np.float64)[both]
        with np.errstate(all="ignore"):
            xr = curve_x(rc, _ROWS[None])
            xc = curve_x(cc, _ROWS[None])
        inside = (_ROWS[None] >= rc[:, :1]) & (_ROWS[None] <= rc[:, 1:2]) & (xr >= 0) & (xr <= 1)
        diff = np.abs(xr - xc)[inside]
        if diff.size:
            worst = float(np.nanmax(diff))
    return {
        "max_abs_diff": max_abs,
        "agreement": float((a == b).mean()),
        "class_agreement": float((a == b).mean()),  # per query, lane / no lane (as detectors)
        "curve_max_diff": worst,
        "curve_max_px_1280": worst * REFERENCE_WIDTH,
        "n": int(a.size),
    }


# ------------------------------------------------------------------------------- pruning


def export_lanes_onnx(loaded: LoadedModel, path: str | Path, *, opset: int = 17,
                      dynamic_batch: bool = True, check: np.ndarray | None = None,
                      max_px: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """Export an LSTR to ONNX at `path` (inputs/outputs as onnx_io) and prove it: on `check`
    (or seeded random images) ONNX Runtime must give the same lane decisions and curves within
    `max_px` pixels of a 1280-wide image. Returns the parity facts; ParityError otherwise."""
    import torch

    from tvc.export.onnx import check_onnx

    model, info = loaded.model.eval().cpu(), loaded.info
    path = Path(path)
    example = torch.zeros(1, *info.input_size)
    io = LanesTask().onnx_io(info)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(model, (example,), str(path), input_names=list(io.inputs),
                          output_names=list(io.outputs), opset_version=opset,
                          dynamic_axes=io.dynamic if dynamic_batch else None,
                          do_constant_folding=True, dynamo=False)  # fmt: skip
    check_onnx(path)
    if check is None:
        check = np.random.default_rng(0).standard_normal((4, *info.input_size)).astype(np.float32)
    task = LanesTask()
    ref = task.outputs(model, check)
    got = onnx_predictor(path, threads=1)(check)
    parity = curve_agreement(ref, got)
    parity["ok"] = parity["agreement"] == 1.0 and parity["curve_max_px_1280"] <= max_px
    if not parity["ok"]:
        raise ParityError(
            f"the exported ONNX lane model differs from PyTorch (lane agreement "
            f"{parity['agreement']:.3f}, curves up to {parity['curve_max_px_1280']:.3g} px "
            f"at 1280 wide)",
            "export with another --opset; report the model if it persists",
        )
    return parity


def quantize_lanes(fp32: str | Path, out: str | Path, calib: LaneData, *,
                   eval_data: LaneData | None = None, budget: float = 1.0,
                   calib_size: int = 256) -> dict[str, Any]:  # fmt: skip
    """Static INT8 Q/DQ of an ONNX lane model (tvc's transformer-safe placement), calibrated on
    `calib` images, held to an accuracy gate measured in TuSimple accuracy: when the INT8 model
    loses more than `budget` points on `eval_data`, the output heads, then the decoder, then the
    encoder Linears are kept in float until it holds. Returns the quantization report with
    `accuracy_fp32`, `accuracy`, `drop`, `float_layers` and `budget_met`."""
    from tvc.data.base import ImageSet
    from tvc.export.quantize import QuantConfig, quantize_static

    x = calib.arrays()[:calib_size]
    images = ImageSet.from_arrays(x, np.zeros(len(x), np.int64), name=calib.lanes.name,
                                  split=calib.lanes.split)  # fmt: skip
    qcfg = QuantConfig(mode="static", calib_size=len(x), ops="safe")
    report = quantize_static(fp32, out, images, qcfg)
    if eval_data is None:
        return report
    task = LanesTask()
    base = task.evaluate(onnx_predictor(fp32), eval_data)["accuracy"]
    quantized = list(report["quantized_nodes"])
    groups = [
        [n for n in quantized if any(h in n for h in ("class_embed", "specific", "shared"))],
        [n for n in quantized if "decoder" in n],
        [n for n in quantized if "encoder" in n],
    ]
    kept_float: list[str] = []
    acc = task.evaluate(onnx_predictor(out), eval_data)["accuracy"]
    for group in groups:
        if base - acc <= budget or not group:
            continue
        kept_float += group
        report = quantize_static(fp32, out, images, qcfg, exclude=kept_float)
        acc = task.evaluate(onnx_predictor(out), eval_data)["accuracy"]
    report.update(accuracy_fp32=base, accuracy=acc, drop=base - acc, budget=budget,
                  float_layers=kept_float, budget_met=base - acc <= budget)  # fmt: skip
    return report


# --------------------------------------------------------------------------------- picture

_COLOURS = {"ground truth": (40, 220, 60), 0: (60, 140, 255), 1: (255, 60, 40), 2: (255, 200, 0)}


def lanes_picture(data: LaneData, predictors: dict[str, Predict], out: str | Path, *,
                  n: int = 6, scale: int = 4) -> Path:  # fmt: skip
    """A PNG of the first `n` frames of `data`, one row per frame: the ground truth (green) and
    each predictor's lanes (blue, red, ...) drawn as points at the label rows, one panel per
    predictor, `scale` times the image size. Returns the path."""
    from tvc.data.lanes import _pil
    from tvc.eval.lanes import decode

    image_mod = _pil()
    from PIL import ImageDraw

    frames = data.lanes.subset(min(n, len(data.lanes)))
    sub = LaneData(frames, data.input_size, data.mean, data.std)
    x = sub.arrays()
    outs = {name: p(x) for name, p in predictors.items()}
    rows = []
    for i, img in enumerate(frames.images):
        h, w = img.shape[:2]
        ys = np.asarray(frames.h_samples[i], np.float64)
        panels = []
        for k, (name, out_k) in enumerate(outs.items()):
            im = image_mod.fromarray(img).resize((w * scale, h * scale), image_mod.NEAREST)
            draw = ImageDraw.Draw(im)
            lanes, _ = decode(out_k["logits"][i], out_k["curves"][i], ys, w, h)
            for colour, group, r in ((_COLOURS["ground truth"], frames.lanes[i], 3),
                                     (_COLOURS.get(k, (255, 0, 255)), lanes, 2)):  # fmt: skip
                for lane in group:
                    for xv, yv in zip(lane, ys, strict=True):
                        if xv >= 0:
                            cx, cy = (xv + 0.5) * scale, (yv + 0.5) * scale
                            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour)
            draw.text((4, 2), name, fill=(255, 255, 0))
            panels.append(np.asarray(im))
        rows.append(np.concatenate(panels, axis=1))
    import io

    from tvc.safe_io import write_bytes_atomic

    png = io.BytesIO()
    image_mod.fromarray(np.concatenate(rows, axis=0)).save(png, format="PNG")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, png.getvalue())
    return out


def demo_picture(results: list, reports: list[Path], n: int = 6) -> list[str]:
    """After the lanes-synth recipe: draw the teacher's FP32 and the student's INT8 lanes (ONNX
    Runtime) over the first `n` test frames into lanes.png beside the report, add it to the
    Markdown and HTML reports, and return the lines to print."""
    from tvc.models.info import ModelInfo
    from tvc.safe_io import write_text_atomic

    by_id = {r.step.id: Path(r.output) for r in results}
    teacher, student = by_id.get("teacher-onnx"), by_id.get("student-onnx")
    if teacher is None or student is None or not reports:
        return []
    meta = json.loads((student / "artifact.json").read_text())
    info = ModelInfo.from_json(meta["model"])
    data = LanesTask().load_data("lanes-synth", "test", info, limit=n)
    out = reports[0].parent / "lanes.png"
    lanes_picture(data, {"teacher FP32": onnx_predictor(teacher / "model.onnx", threads=1),
                         "student INT8": onnx_predictor(student / "model.int8.onnx",
                                                        threads=1)}, out, n=n)  # fmt: skip
    caption = (
        f"Lanes on {len(data)} test frames: ground truth green; left the teacher (FP32, "
        "blue), right the pruned + distilled INT8 student (red), both on ONNX Runtime"
    )
    for report in reports:
        text = report.read_text()
        if "lanes.png" in text:
            continue
        # the picture joins the report in one atomic write: a killed run leaves either page
        if report.suffix == ".md":
            write_text_atomic(
                report, f"{text}\n## Predicted lanes\n\n![{caption}](lanes.png)\n\n{caption}.\n"
            )
        elif report.suffix == ".html" and "</body>" in text:
            fig = (f'<h2>Predicted lanes</h2><figure><img src="lanes.png" alt="predicted lanes">'
                   f"<figcaption>{caption}.</figcaption></figure>")  # fmt: skip
            write_text_atomic(report, text.replace("</body>", fig + "</body>", 1))
    return [f"lanes: {out}"]
