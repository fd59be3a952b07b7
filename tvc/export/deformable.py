"""ONNX export of DETR and Deformable DETR, proven against PyTorch on boxes and scores.

The graph takes `input` (B, 3, H, W) at a fixed size and returns `logits` (B, Q, K[+1]) and
`boxes` (B, Q, 4, normalised cxcywh). With `pixel_mask=True` it also takes `pixel_mask`
(B, H, W, int64, 1 = real pixel, 0 = padding), so images of another aspect ratio can be padded
to the fixed size; without it every pixel counts as real and the mask folds into constants.

Deformable DETR's multi-scale deformable attention samples feature maps bilinearly at predicted
points. Transformers does that with `grid_sample` (ONNX GridSample), a form TensorRT has silently
miscompiled (10.14, 11.1), and its exported graph carries float64 tensors that ONNX Runtime's
GridSample rejects. During export tvc therefore swaps in one of two pure-PyTorch samplers of its
own (`deformable_sampling`, a reversible patch):

- `grid`: the same GridSample, computed in the model's float type;
- `gather`: the bilinear interpolation written out as four plain Gathers with weights, no
  GridSample at all (the default: it is what a TensorRT engine should be built from).

Either way the exported graph is compared with the unpatched PyTorch model, so the parity check
also proves the sampler reproduces transformers' own. On ONNX Runtime's CPU provider the gather
form costs about twice the GridSample form's time (tiny model, benchmarks/bench_detection.py);
choose `grid` for ORT-only deployments.

`int8="static"|"dynamic"` adds an INT8 variant with tvc.compress.quantize's transformer-safe
placement (calibrated on detection scenes), reported with its parity against FP32 and, given
`eval_data`, its COCO mAP next to the FP32 model's.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvc.artifact import Artifact, load_artifact, write_artifact
from tvc.errors import ConfigError, ExportError, ParityError, UnsupportedModelError, first_line
from tvc.export.onnx import check_onnx, check_opset_and_batch
from tvc.export.parity import compare

log = logging.getLogger("tvc")

MODEL_FILE = "model.onnx"
INPUT_NAME = "input"
MASK_NAME = "pixel_mask"
OUTPUT_NAMES = ("logits", "boxes")
SAMPLING_MODES = ("gather", "grid")


@dataclass
class DetExportConfig:
    opset: int = 17
    batch: int = 1
    input_size: int | None = None  # square side; None: the model's own
    pixel_mask: bool = False  # add a pixel_mask input for padded images
    sampling: str = "gather"  # Deformable DETR's bilinear sampler: gather | grid
    simplify: bool = True
    parity_samples: int = 4
    atol: float = 1e-4
    rtol: float = 1e-3
    int8: str | None = None  # also write an INT8 variant: static (Q/DQ) | dynamic
    calib: str | None = None  # detection DATA for static calibration (default: built-in set)
    calib_size: int = 64
    eval_data: str | None = None  # detection DATA: mAP of FP32 and INT8 (test split)
    eval_limit: int = 200

    def validate(self) -> None:
        check_opset_and_batch(self.opset, self.batch)
        if self.sampling not in SAMPLING_MODES:
            raise ConfigError(
                f"--sampling {self.sampling} is unknown", f"use one of: {', '.join(SAMPLING_MODES)}"
            )
        if self.int8 not in (None, "static", "dynamic"):
            raise ConfigError(f"--int8 {self.int8} is unknown", "use static or dynamic")
        if self.int8 and self.pixel_mask:
            raise ConfigError(
                "INT8 calibration takes images only, not a pixel_mask input",
                "drop --pixel-mask for an INT8 export",
            )
        if self.calib_size < 1 or self.eval_limit < 1:
            raise ConfigError("--calib-size and the eval limit must be >= 1", "e.g. 64")
        if self.input_size is not None and self.input_size < 32:
            raise ConfigError(
                f"--input-size {self.input_size} is too small for a detector "
                "(the backbone downsamples 16-32x)",
                "use 64 or more",
            )


# ----------------------------------------------------------------- deformable attention patch


def _deformable_classes():
    from transformers.models.deformable_detr import modeling_deformable_detr as mdd

    return mdd.MultiScaleDeformableAttention, mdd.DeformableDetrEncoder


def grid_sampling(
    self,
    value,
    value_spatial_shapes,
    value_spatial_shapes_list,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=None,
):
    """transformers' multi-scale deformable sampling, kept in the value's float type."""
    import torch
    from torch.nn import functional as F

    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in value_spatial_shapes_list], dim=1)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    sampled = []
    for lvl, (h, w) in enumerate(value_spatial_shapes_list):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = attention_weights.to(value.dtype).transpose(1, 2)
    weights = weights.reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


def gather_sampling(
    self,
    value,
    value_spatial_shapes,
    value_spatial_shapes_list,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=None,
):
    """The same bilinear sampling (align_corners=False, zero padding) with plain Gathers.

    All levels share one flat (pixels, dim) table, as `value` already holds them one after the
    other. Each sampling point reads its four neighbouring pixels (one Gather per neighbour);
    neighbours outside their map get weight 0, which is what GridSample's zero padding means.
    The largest intermediate, (B*heads, Q, levels*points, dim), is the size transformers' own
    implementation stacks too.
    """
    import torch

    batch, seq, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    bh = batch * heads
    dev, dt = value.device, value.dtype
    # Per-level sizes and offsets are constants of the fixed-size export: (1, 1, levels, 1).
    hw = torch.tensor(value_spatial_shapes_list, dtype=torch.int64, device=dev)
    h_int, w_int = hw[:, 0].view(1, 1, levels, 1), hw[:, 1].view(1, 1, levels, 1)
    sizes = [h * w for h, w in value_spatial_shapes_list]
    starts = torch.tensor([sum(sizes[:i]) for i in range(levels)], device=dev).view(1, 1, levels, 1)
    table = value.permute(0, 2, 1, 3).reshape(bh * seq, dim)  # row (b*heads + head)*seq + pixel
    row0 = (torch.arange(bh, device=dev) * seq).view(bh, 1, 1, 1)
    loc = (
        sampling_locations.to(dt).permute(0, 2, 1, 3, 4, 5).reshape(bh, queries, levels, points, 2)
    )
    attn = attention_weights.to(dt).permute(0, 2, 1, 3, 4).reshape(bh, queries, levels, points)
    x = loc[..., 0] * w_int.to(dt) - 0.5  # pixel coordinates, pixel centres at integers
    y = loc[..., 1] * h_int.to(dt) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    out = value.new_zeros(bh, queries, 1, dim)
    for dx, dy, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w_int) & (yi >= 0) & (yi < h_int)
        xi = torch.minimum(xi.clamp(min=0), w_int - 1)
        yi = torch.minimum(yi.clamp(min=0), h_int - 1)
        index = (row0 + starts + yi * w_int + xi).reshape(-1)
        rows = table[index].reshape(bh, queries, levels * points, dim)
        coef = (wgt * attn * inside.to(dt)).reshape(bh, queries, 1, levels * points)
        out = out + torch.matmul(coef, rows)  # the weighted sum over levels and points
    return (
        out.reshape(batch, heads, queries, dim)
        .permute(0, 2, 1, 3)
        .reshape(batch, queries, heads * dim)
    )


def float_reference_points(spatial_shapes_list, valid_ratios, device):
    """Deformable DETR's encoder reference points without torch.linspace, whose ONNX form is
    float64 (which TensorRT does not support); arange(n) + 0.5 gives the same values."""
    import torch

    dtype = valid_ratios.dtype
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes_list):
        ys = torch.arange(h, dtype=dtype, device=device) + 0.5
        xs = torch.arange(w, dtype=dtype, device=device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))
    ref = torch.cat(refs, 1)
    return ref[:, :, None] * valid_ratios[:, None]


@contextlib.contextmanager
def deformable_sampling(model, mode: str = "gather") -> Iterator[int]:
    """Swap the bilinear sampler of every deformable attention in `model`; restore on exit.

    Yields how many attention modules were patched (0 for plain DETR, which has none).
    """
    if mode not in SAMPLING_MODES:
        raise ConfigError(
            f"sampling mode '{mode}' is unknown", f"use one of: {', '.join(SAMPLING_MODES)}"
        )
    import types

    msda_cls, encoder_cls = _deformable_classes()
    fn = gather_sampling if mode == "gather" else grid_sampling
    patched = []
    for m in model.modules():
        if isinstance(m, msda_cls):
            m.forward = types.MethodType(fn, m)  # an instance attribute shadows the class's
            patched.append(m)
        elif isinstance(m, encoder_cls):
            m.get_reference_points = float_reference_points
            patched.append(m)
    try:
        yield sum(isinstance(m, msda_cls) for m in patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("get_reference_points", None)


# -------------------------------------------------------------------------------------- export


def export_detection_onnx(loaded, out: str | Path, cfg: DetExportConfig | None = None) -> Artifact:
    """Export a detector (LoadedModel) to an ONNX artifact at `out`, parity-checked."""
    import torch

    from tvc.models.detection import is_detector
    from tvc.models.load import ModelInfo

    cfg = cfg or DetExportConfig()
    cfg.validate()
    if not is_detector(loaded):
        raise UnsupportedModelError(
            f"{loaded.info.name} is not a detection model",
            "use 'tvc export' without detection options for classifiers",
        )
    model, info = loaded.model.eval(), loaded.info
    chans, height, width = info.input_size
    if cfg.input_size:  # detectors take any size; each export fixes one
        height = width = cfg.input_size
    shape = (cfg.batch, chans, height, width)
    rng = np.random.default_rng(0)
    example = _feeds(rng, shape, cfg.pixel_mask, padded=True)
    n = max(1, cfg.parity_samples // cfg.batch)
    feeds = [_feeds(rng, shape, cfg.pixel_mask, padded=i % 2 == 1) for i in range(n)]
    # The reference is the unpatched model: parity also proves tvc's sampler equals HF's.
    with torch.no_grad():
        ref = [tuple(t.numpy() for t in model(*_torch_args(f))) for f in feeds]

    names = [INPUT_NAME, MASK_NAME] if cfg.pixel_mask else [INPUT_NAME]
    spec = {"stage": "export-onnx-detection", **asdict(cfg), "source": info.name}
    with write_artifact(out, "onnx", parent=loaded.artifact, spec=spec) as w:
        path = w.path_for(MODEL_FILE)
        t0 = time.perf_counter()
        with deformable_sampling(model, cfg.sampling) as n_patched:
            # HFDetector takes (pixel_values[, pixel_mask]): the traced inputs are exactly those.
            _torch_export(model, _torch_args(example), names, path, cfg.opset)
        export_s = time.perf_counter() - t0
        check_onnx(path)
        parity = detection_parity(path, feeds, ref, cfg)
        if not parity["ok"]:
            raise ParityError(
                f"the exported detector does not match PyTorch: {parity_summary(parity)}",
                f"try --sampling {'grid' if cfg.sampling == 'gather' else 'gather'} or another "
                "--opset; if it persists, report the model",
            )
        simplified = _simplify(path, feeds, ref, cfg) if cfg.simplify else None
        exported_info = ModelInfo.from_json(
            {**info.to_json(), "input_size": [chans, height, width]}
        )
        q, k = ref[0][0].shape[1], ref[0][0].shape[2]
        w.meta["model"] = exported_info.to_json()
        w.meta["task"] = "detection"
        w.meta["precision"] = "fp32"
        w.meta["variants"] = {MODEL_FILE: {"precision": "fp32"}}
        inputs = [{"name": INPUT_NAME, "shape": list(shape), "dtype": "float32"}]
        if cfg.pixel_mask:
            inputs.append(
                {"name": MASK_NAME, "shape": [cfg.batch, height, width], "dtype": "int64"}
            )
        w.meta["io"] = {
            "inputs": inputs,
            "outputs": [
                {"name": "logits", "shape": [cfg.batch, q, k], "dtype": "float32"},
                {
                    "name": "boxes",
                    "shape": [cfg.batch, q, 4],
                    "dtype": "float32",
                    "format": "cxcywh, normalised to [0, 1]",
                },
            ],
            "dynamic_axes": {},
            "mean": list(info.mean),
            "std": list(info.std),
            "no_object_class": bool(info.extra.get("no_object_class", False)),
        }
        w.meta["metrics"] = {
            "parity": simplified or parity,
            "parity_before_simplify": parity,
            "simplified": simplified is not None,
            "sampling": cfg.sampling if n_patched else None,
            "export_seconds": round(export_s, 3),
            "params": int(sum(p.numel() for p in model.parameters())),
        }
        if cfg.eval_data:
            w.meta["metrics"]["detection"] = _evaluate_onnx(path, exported_info, cfg)
        if cfg.int8:
            w.meta["variants"][INT8_FILES[cfg.int8]] = _int8_variant(
                path, w.path_for(INT8_FILES[cfg.int8]), exported_info, cfg
            )
        if loaded.artifact is not None:
            keep = ("map", "ap50", "detection")
            src = loaded.artifact.meta.get("metrics", {})
            w.meta["metrics"].update({k: v for k, v in src.items() if k in keep})
    return load_artifact(out)


# ---------------------------------------------------------------------------------------- INT8

INT8_FILES = {"static": "model.int8.onnx", "dynamic": "model.int8dyn.onnx"}


def _images(spec: str, split: str, limit: int, info) -> tuple[Any, np.ndarray]:
    from tvc.data.detection import load_detection

    data = load_detection(spec, split, limit=limit)
    x = np.concatenate(
        [b[0] for b in data.batches(64, input_size=info.input_size, mean=info.mean, std=info.std)]
    )
    return data, x


def _evaluate_onnx(path: Path, info, cfg: DetExportConfig) -> dict[str, Any]:
    """COCO mAP of an ONNX detector on cfg.eval_data's test split."""
    from tvc.data.detection import load_detection
    from tvc.eval.detection import evaluate_detector
    from tvc.runtime.predict import onnx_predictor

    data = load_detection(cfg.eval_data, "test", limit=cfg.eval_limit)
    return evaluate_detector(
        onnx_predictor(path),
        data,
        input_size=info.input_size,
        mean=info.mean,
        std=info.std,
        batch_size=cfg.batch,
        no_object_class=bool(info.extra.get("no_object_class")),
    )


def _int8_variant(fp32: Path, out: Path, info, cfg: DetExportConfig) -> dict[str, Any]:
    """INT8 with tvc's transformer-safe placement (Linear/Conv inputs only), then its parity
    with FP32 on detection images (logits, boxes, classes) and, with eval data, its mAP."""
    from tvc.compress.quantize import QuantConfig, quantize_dynamic, quantize_static
    from tvc.data.base import ImageSet
    from tvc.runtime.predict import onnx_predictor

    spec = cfg.calib or "fashion-mnist-det"
    _, x = _images(spec, "train", cfg.calib_size, info)
    calib = ImageSet.from_arrays(x, np.zeros(len(x), np.int64), name=spec, split="train")
    qcfg = QuantConfig(mode=cfg.int8, calib_size=len(x), ops="safe")
    if cfg.int8 == "static":
        report = quantize_static(fp32, out, calib, qcfg)
    else:
        report = quantize_dynamic(fp32, out, qcfg, check_data=calib)
    ref, got = onnx_predictor(fp32)(x), onnx_predictor(out)(x)
    parity = parity_of([ref], [got], atol=cfg.atol, rtol=cfg.rtol)
    variant = {
        "precision": "int8-qdq" if cfg.int8 == "static" else "int8-dynamic",
        "mode": cfg.int8,
        "calibration": {"data": spec, "images": len(x)} if cfg.int8 == "static" else None,
        "quantized_nodes": len(report.get("quantized_nodes", [])),
        "parity_vs_fp32": {k: v for k, v in parity.items() if k != "ok"},
        "trt_ready": report.get("trt_ready"),
    }
    if cfg.eval_data:
        det = _evaluate_onnx(out, info, cfg)
        variant["detection"] = det
    return variant


def _feeds(rng, shape, with_mask: bool, *, padded: bool) -> dict[str, np.ndarray]:
    """Random images, and (with a mask) a mask whose bottom/right part is padding when asked."""
    feeds = {INPUT_NAME: rng.standard_normal(shape).astype(np.float32)}
    if with_mask:
        b, _, h, w = shape
        mask = np.ones((b, h, w), np.int64)
        if padded:
            for i in range(b):
                mask[i, int(rng.integers(h // 2, h + 1)) :, :] = 0
                mask[i, :, int(rng.integers(w // 2, w)) :] = 0
        feeds[MASK_NAME] = mask
    return feeds


def _torch_args(feeds: dict[str, np.ndarray]) -> tuple:
    import torch

    args = [torch.from_numpy(feeds[INPUT_NAME])]
    if MASK_NAME in feeds:
        args.append(torch.from_numpy(feeds[MASK_NAME]))
    return tuple(args)


def _torch_export(module, args: tuple, names: list[str], path: Path, opset: int) -> None:
    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"torch.onnx.export failed for the detector: {first}",
            "try another --opset or --sampling",
        ) from exc


def detection_parity(
    path: Path, feeds: list[dict], ref: list[tuple], cfg: DetExportConfig, threads: int = 1
) -> dict[str, Any]:
    """Compare ONNX Runtime's logits, scores and boxes with the reference outputs."""
    from tvc.runtime.ort import OrtRunner

    with OrtRunner(path, threads=threads) as runner:
        got = [runner.infer(f) for f in feeds]
    return parity_of(ref, [(g["logits"], g["boxes"]) for g in got], cfg.atol, cfg.rtol)


def parity_of(ref: list[tuple], got: list[tuple], atol: float, rtol: float) -> dict[str, Any]:
    """Worst-case differences of logits and boxes, and how often each query's class agrees."""
    ref_l = np.concatenate([r[0] for r in ref])
    got_l = np.concatenate([g[0] for g in got])
    ref_b = np.concatenate([r[1] for r in ref])
    got_b = np.concatenate([g[1] for g in got])
    logits = compare(ref_l, got_l, atol=atol, rtol=rtol)
    boxes = compare(ref_b, got_b, atol=atol, rtol=rtol)
    scores = compare(_scores(ref_l), _scores(got_l), atol=atol, rtol=rtol)
    agree = float(np.mean(ref_l.argmax(-1) == got_l.argmax(-1)))
    return {
        "logits_max_abs_diff": logits.max_abs_diff,
        "scores_max_abs_diff": scores.max_abs_diff,
        "boxes_max_abs_diff": boxes.max_abs_diff,
        "max_abs_diff": max(logits.max_abs_diff, boxes.max_abs_diff),
        "class_agreement": agree,
        "top1_agreement": agree,  # the name tvc's other parity records use
        "n": int(ref_l.shape[0]),
        "tolerance": {"logits": logits.tolerance, "boxes": boxes.tolerance},
        "ok": logits.ok and boxes.ok,
    }


def _scores(logits: np.ndarray) -> np.ndarray:
    """Softmax probabilities (any trailing "no object" column included)."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def parity_summary(p: dict[str, Any]) -> str:
    return (
        f"logits max abs diff {p['logits_max_abs_diff']:.2e}, boxes "
        f"{p['boxes_max_abs_diff']:.2e}, class agreement {p['class_agreement']:.1%}"
    )


def _simplify(path: Path, feeds, ref, cfg: DetExportConfig) -> dict[str, Any] | None:
    """onnxslim in place, kept only if it still matches PyTorch."""
    import onnx

    try:
        import onnxslim
    except ImportError:
        return None
    original = path.read_bytes()
    try:
        onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
        check_onnx(path)
        parity = detection_parity(path, feeds, ref, cfg)
    except Exception as exc:  # onnxslim raises many types; any failure means "keep original"
        log.warning("simplification failed (%s); keeping the unsimplified graph", exc)
        path.write_bytes(original)
        return None
    if not parity["ok"]:
        log.warning(
            "the simplified detector differs from PyTorch (%s); keeping the original",
            parity_summary(parity),
        )
        path.write_bytes(original)
        return None
    return parity


def export_detection_model(
    model: str,
    out: str | Path,
    cfg: DetExportConfig,
    model_kwargs: dict[str, Any],
    *,
    unsupported: dict[str, bool] | None = None,
) -> Artifact:
    """`tvc export` for a detector: load MODEL, export it; options detectors lack are errors."""
    from tvc.models import load_model

    asked = [name for name, on in (unsupported or {}).items() if on]
    if asked:
        raise ConfigError(
            f"{', '.join(asked)} is not supported for detection models yet",
            "export the FP32/INT8 ONNX here and build the engine with trtexec from model.onnx",
        )
    cfg.validate()
    return export_detection_onnx(load_model(model, **model_kwargs), out, cfg)
