"""Transformer fusions for ONNX Runtime targets: model.onnx -> model.ort.onnx.

ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`) rewrites a
transformer graph into its contrib kernels: SkipLayerNormalization (residual Add + LayerNorm),
Gelu / BiasGelu / FastGelu, and Attention / MultiHeadAttention where the attention subgraph
matches one of its patterns. timm's attention (one qkv projection) matches none of them, so
tvc fuses it into the same Attention kernel itself (tvc.export.ort_rewrites). Those kernels
exist only in ONNX Runtime, so the fused graph is a separate file: model.onnx stays
target-neutral for TensorRT, which does its own fusion.

The fused graph is proven against model.onnx on the same inputs (a miss is a ParityError, as
for every export) and what was fused is recorded, so a user can see whether Attention matched.
Only the optimizer's Python fusions run (opt_level 0): the file stays free of the session's
hardware-specific layouts and loads on any ONNX Runtime build with the contrib ops.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import ExportError, MissingDependencyError, ParityError, first_line
from tvc.export.ort_rewrites import fuse_attention

if TYPE_CHECKING:
    from tvc.tasks import Task

log = logging.getLogger("tvc")

ORT_FILE = "model.ort.onnx"
MODEL_TYPE = "vit"  # the optimizer's fusions for an encoder with Conv patch embedding
_ATOL, _RTOL = 1e-4, 1e-3  # FP32 to FP32: only the fused kernels' rounding differs


def require_optimizer() -> Any:
    """onnxruntime.transformers.optimizer, or a MissingDependencyError saying what to install."""
    try:
        from onnxruntime.transformers import optimizer
    except Exception as exc:  # ImportError, or a broken install failing on import
        raise MissingDependencyError(
            f"--ort-optimize needs onnxruntime's transformer optimizer "
            f"(onnxruntime.transformers), which does not import here: {first_line(exc)}",
            "install onnxruntime 1.16 or newer (pip install 'tvc'), or drop --ort-optimize",
        ) from exc
    return optimizer


def fuse_for_ort(
    src: str | Path,
    out: str | Path,
    *,
    model_type: str = MODEL_TYPE,
    num_heads: int = 0,
    hidden_size: int = 0,
) -> dict[str, Any]:
    """Write ONNX Runtime's transformer fusion of `src` to `out`; return what was fused.

    `num_heads`/`hidden_size` 0 let the optimizer read them from the graph. The record holds
    the optimizer's fused-op counts (only those that matched), the op types before and after,
    and the node counts. Raises ExportError when the optimizer fails on the graph.
    """
    optimizer = require_optimizer()
    src, out = Path(src), Path(out)
    t0 = time.perf_counter()
    quiet = logging.getLogger("onnxruntime.transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "specify num_heads": it reads them from the graph
    try:
        opt = optimizer.optimize_model(
            str(src),
            model_type=model_type,
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            use_gpu=False,
            only_onnxruntime=False,
        )
        stats = opt.get_fused_operator_statistics()
        # timm's one-qkv attention is not a pattern the optimizer knows: tvc fuses it itself
        stats["Attention"] = stats.get("Attention", 0) + len(fuse_attention(opt.model))
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime's transformer optimizer failed on {src.name}: {first_line(exc)}",
            "drop --ort-optimize (model.onnx runs on ONNX Runtime as is)",
        ) from exc
    finally:
        quiet.setLevel(level)
    before = _op_counts(src)
    opt.save_model_to_file(str(out))
    after = _op_counts(out)
    fused = {k: int(v) for k, v in sorted(stats.items()) if v and after.get(k)}
    return {
        "precision": "fp32-ort",  # FP32 in ONNX Runtime's fused kernels
        "target": "onnxruntime (contrib ops); TensorRT builds from model.onnx",
        "optimizer": f"onnxruntime.transformers.optimizer, model_type {model_type}, opt_level 0",
        "fused_ops": fused,
        "attention_fused": bool(fused.get("Attention") or fused.get("MultiHeadAttention")),
        "nodes": {"before": sum(before.values()), "after": sum(after.values())},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def fused_parity(
    reference: Path, fused: Path, x: np.ndarray, task: Task | None = None, info: Any = None
) -> dict[str, Any]:
    """The fused graph's outputs against `reference`'s on images `x`: the task's agreement
    record (tvc.export.parity.outputs_parity; without a task, each output's worst difference),
    every output held to FP32 tolerance. A miss or a non-finite output raises ParityError."""
    from tvc.export.parity import compare, outputs_parity
    from tvc.export.quantize.graph import load_onnx
    from tvc.export.quantize.scoring import predict_outputs

    ref = predict_outputs(load_onnx(reference))(x)
    got = predict_outputs(load_onnx(fused))(x)
    fix = "drop --ort-optimize and report the model"
    for name, value in got.items():
        if not np.isfinite(value).all():
            raise ParityError(f"{fused.name} gives non-finite values in output {name}", fix)
    if task is not None:
        record = outputs_parity(task, [ref], [got], atol=_ATOL, rtol=_RTOL, info=info)
    else:
        per = {k: compare(ref[k], got[k], atol=_ATOL, rtol=_RTOL) for k in ref}
        record = {
            "n": len(x),
            "agreement": min(p.top1_agreement for p in per.values()),
            "max_abs_diff": max(p.max_abs_diff for p in per.values()),
            "tolerance": {k: p.tolerance for k, p in per.items()},
            "ok": all(p.ok for p in per.values()),
        }
    if not record.pop("ok"):
        raise ParityError(
            f"{fused.name} does not match {reference.name}: max abs diff "
            f"{record['max_abs_diff']:.3g} above FP32 tolerance {record['tolerance']}",
            fix,
        )
    return record


def fuse_checked(
    src: Path, out: Path, x: np.ndarray, task: Task | None = None, info: Any = None
) -> dict[str, Any]:
    """fuse_for_ort then fused_parity on `x`; the file is written to `out` only when proven."""
    with tempfile.TemporaryDirectory(prefix="tvc-ortfuse-") as tmp:
        staged = Path(tmp) / out.name
        record = fuse_for_ort(src, staged)
        record["parity_vs_fp32"] = fused_parity(src, staged, x, task, info)
        shutil.move(staged, out)
    return record
