"""Dynamic INT8: weights int8 per channel, activations quantized at run time (ONNX Runtime only)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvc.errors import UnsupportedModelError, first_line
from tvc.export.ort_rewrites import patches_as_matmul
from tvc.export.quantize.calibration import check_inputs, quiet_ort
from tvc.export.quantize.config import (
    PARITY_IMAGES,
    QuantConfig,
    weight_bits,
    weight_range_used,
)
from tvc.export.quantize.graph import (
    all_names,
    check_model,
    check_names,
    dynamic_nodes,
    input_spec,
    load_onnx,
    no_layers,
    prepare,
    save_onnx,
    sizes,
)
from tvc.export.quantize.scoring import Scorer

if TYPE_CHECKING:
    from tvc.data.base import ImageSet


def quantize_dynamic(
    fp32: str | Path,
    out: str | Path,
    cfg: QuantConfig,
    *,
    exclude: list[str] | tuple[str, ...] = (),
    check_data: ImageSet | None = None,
) -> dict[str, Any]:
    """Dynamic INT8 (weights int8 per channel, activations quantized at run time) at `out`.

    Parity with FP32 is measured on `check_data` when given, else on seeded random inputs.
    """
    cfg.validate()
    fp32, out = Path(fp32), Path(out)
    t0 = time.perf_counter()
    model = prepare(load_onnx(fp32), gemm="matmul")
    exclude = check_names(exclude, all_names(model))
    # the patch Conv as an integer MatMul (ORT's ConvInteger is slow; see ort_rewrites)
    patch_matmuls = patches_as_matmul(model, keep=exclude)
    nodes = dynamic_nodes(model, cfg.ops)
    if cfg.ops == "safe":  # Attention fused by --ort-optimize becomes QAttention
        nodes += [n.name for n in model.graph.node if n.op_type == "Attention"]
    nodes = [n for n in nodes if n not in exclude]
    if not nodes:
        raise no_layers(fp32, cfg.ops)
    with tempfile.TemporaryDirectory(prefix="tvc-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        save_onnx(model, prepared)
        run_dynamic(prepared, out, nodes, cfg)
    check_model(out)
    inputs = input_spec(model)
    x = check_inputs(check_data, inputs, PARITY_IMAGES, cfg.seed)
    parity = Scorer(fp32, x).score(load_onnx(out))
    report = {
        "mode": "dynamic",
        "format": "ONNX Runtime integer ops (DynamicQuantizeLinear + MatMulInteger)",
        "ops": cfg.ops,
        "weights": f"{weight_bits(cfg)}{'' if cfg.unsigned_weights() else ' symmetric'}, "
        "per output channel",
        "weight_range": weight_range_used(cfg),
        "activations": "uint8, range computed at run time per tensor",
        "quantized_nodes": nodes,
        "patch_conv_as_matmul": patch_matmuls,
        "float_nodes": sorted(exclude),
        "parity": {**parity, "inputs": "check data" if check_data is not None else "random"},
        "note": "dynamic INT8 runs on ONNX Runtime (CPU); TensorRT needs the static Q/DQ model",
        **sizes(fp32, out),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return report


def run_dynamic(prepared: Path, out: Path, nodes: list[str], cfg: QuantConfig) -> None:
    from onnxruntime import quantization as oq

    try:
        with quiet_ort():
            oq.quantize_dynamic(
                str(prepared),
                str(out),
                weight_type=oq.QuantType.QUInt8 if cfg.unsigned_weights() else oq.QuantType.QInt8,
                per_channel=True,
                reduce_range=cfg.reduce_range(),
                op_types_to_quantize=["MatMul", "Gemm", "Attention"] if cfg.ops == "safe" else None,
                nodes_to_quantize=nodes,
                extra_options={"MatMulConstBOnly": True},
            )
    except Exception as exc:
        first = first_line(exc)
        raise UnsupportedModelError(
            f"ONNX Runtime could not quantize {prepared.name} dynamically: {first}",
            "try --int8 static",
        ) from exc
