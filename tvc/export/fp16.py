"""FP16 ONNX with the numerically fragile parts kept in FP32 by explicit Cast nodes.

For strongly typed TensorRT builds (TensorRT 11 dropped the --fp16 builder flag) and GPUs, the
precision of every tensor must be written into the graph. Most of a ViT runs well in FP16, but:

- normalisation (LayerNorm, and its decomposed pieces ReduceMean/Pow/Sqrt) and Softmax lose
  accuracy or overflow in FP16 (a variance of activations above 256 overflows 65504 when squared);
- any tensor whose values come near FP16's limit overflows to inf.

So those ops (`keep_fp32_ops`) stay FP32, and so does every node whose output comes within
`overflow_margin` of 65504 on sample inputs (measured by running the FP32 model), together with
the nodes that read such a tensor. Model inputs and outputs stay float32, with casts at the
boundary, so callers feed the same arrays as for the FP32 model.

Written here rather than with onnxruntime.transformers.float16, whose graphs are not
topologically sorted (onnx.checker rejects them) and whose import edits sys.path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import ConfigError, ExportError, ParityError, UnsupportedModelError, first_line

if TYPE_CHECKING:
    from onnx import ModelProto

log = logging.getLogger("tvc")

FP16_MAX = 65504.0
FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto element types

DEFAULT_KEEP_FP32 = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "BatchNormalization",
    "RMSNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSumSquare",
    "Pow",
    "Sqrt",
)
# Ops whose float outputs do not follow their inputs' precision (their type is an attribute or
# fixed): left as they are; consumers get a Cast when needed.
_PASSTHROUGH = frozenset(
    {
        "Cast",
        "CastLike",
        "Constant",
        "ConstantOfShape",
        "EyeLike",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
# Inputs that the ONNX spec types as float32 whatever the data's precision.
_ALWAYS_FP32_INPUTS = {"Resize": (2,), "Upsample": (1,)}


def convert_fp16(
    fp32: str | os.PathLike,
    out: str | os.PathLike,
    *,
    keep_fp32_ops: tuple[str, ...] = DEFAULT_KEEP_FP32,
    keep_fp32_nodes: tuple[str, ...] = (),
    sample: np.ndarray | None = None,
    overflow_margin: float = 4.0,
    atol: float = 1e-2,
    rtol: float = 2e-2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write an FP16 version of `fp32` to `out`; returns a report with its parity against FP32.

    `sample` (float32 NCHW) drives the overflow scan and the parity check; seeded random normal
    inputs (what normalised images look like) are used when it is None. A parity miss (max abs
    diff > atol + rtol * max|fp32 logits|) raises ParityError.
    """
    import onnx

    from tvc.export.onnx import check_onnx
    from tvc.export.parity import compare

    if not overflow_margin > 0:
        raise ConfigError(f"overflow_margin must be > 0, got {overflow_margin}", "e.g. 4")
    fp32, out = Path(fp32), Path(out)
    model = onnx.load(str(fp32))
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in model.graph.node
        for a in n.attribute
    ):
        raise UnsupportedModelError(
            "the model has control flow (If/Loop/Scan subgraphs), which the FP16 converter "
            "does not handle",
            "export the model without data-dependent control flow",
        )
    feeds = _sample_feeds(model, sample, seed)
    overflow = _overflowing_nodes(model, feeds, FP16_MAX / overflow_margin)
    keep = set(keep_fp32_nodes) | overflow
    converted, stats = _to_fp16(model, set(keep_fp32_ops), keep)
    onnx.save(converted, str(out))
    check_onnx(out)

    # ONNX Runtime's CPU kernels compute some FP16 ops in FP32 internally, so this check proves
    # the graph (types, casts, overflow) rather than GPU arithmetic; engines get their own check.
    ref = _run(model, feeds)
    got = _run(converted, feeds)
    parity = compare(ref, got, atol=atol, rtol=rtol)
    if not parity.ok:
        raise ParityError(
            f"the FP16 model does not match FP32: max abs diff {parity.max_abs_diff:.3g} > "
            f"tolerance {parity.tolerance:.3g} (top-1 agreement {parity.top1_agreement:.1%})",
            "keep more ops in FP32 (keep_fp32_ops), or scan for overflow on real images (sample)",
        )
    return {
        "keep_fp32_ops": sorted(keep_fp32_ops),
        "overflow_nodes": sorted(overflow),
        "fp32_nodes": stats["fp32_nodes"],
        "fp16_nodes": stats["fp16_nodes"],
        "casts": stats["casts"],
        "clamped_weights": stats["clamped"],
        "parity": {**parity.as_dict(), "inputs": "sample" if sample is not None else "random"},
        "size_bytes": out.stat().st_size,
        "fp32_size_bytes": fp32.stat().st_size,
    }


# ------------------------------------------------------------------------------ conversion


def _to_fp16(model: ModelProto, keep_ops: set[str], keep_nodes: set[str]):
    """The converted model and counts. See the module docstring for the rules."""
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        if vi.type.HasField("tensor_type")
    }
    inits = {t.name: t for t in model.graph.initializer}
    for name, t in inits.items():
        elem[name] = t.data_type

    graph = model.graph
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.node[:]
    del g.value_info[:]  # re-inferred; the old entries carry float32 types
    precision: dict[str, int] = {}  # float tensor -> FLOAT or FLOAT16 as produced
    for name in (*[i.name for i in graph.input], *inits):
        if elem.get(name) == FLOAT:
            precision[name] = FLOAT
    casts: dict[tuple[str, int], str] = {}
    fp16_inits: dict[str, str] = {}
    stats = {"fp32_nodes": 0, "fp16_nodes": 0, "casts": 0, "clamped": 0}

    def as_type(name: str, want: int, nodes: list) -> str:
        """`name` in precision `want`: itself, an fp16 copy of a weight, or a new Cast."""
        have = precision.get(name)
        if have is None or have == want:
            return name
        if want == FLOAT16 and name in inits:
            if name not in fp16_inits:
                arr = numpy_helper.to_array(inits[name])
                stats["clamped"] += int(np.sum(np.abs(arr) > FP16_MAX))
                half = np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16)
                fp16_inits[name] = f"{name}__fp16"
                g.initializer.append(numpy_helper.from_array(half, fp16_inits[name]))
            return fp16_inits[name]
        key = (name, want)
        if key not in casts:
            casts[key] = f"{name}__to_{'fp16' if want == FLOAT16 else 'fp32'}"
            nodes.append(
                helper.make_node("Cast", [name], [casts[key]], to=want, name=f"{casts[key]}_cast")
            )
            stats["casts"] += 1
        return casts[key]

    graph_outputs = {o.name for o in graph.output}
    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)  # edited below; the input model stays as it was
        new = []
        if node.op_type in _PASSTHROUGH:
            for o in node.output:
                if elem.get(o) == FLOAT:
                    precision[o] = FLOAT
            g.node.append(node)
            continue
        if (
            node.op_type in keep_ops
            or node.name in keep_nodes
            or node.domain not in ("", "ai.onnx")
        ):
            want = FLOAT
            stats["fp32_nodes"] += 1
        else:
            want = FLOAT16
            stats["fp16_nodes"] += 1
        fixed = _ALWAYS_FP32_INPUTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            if name and precision.get(name) is not None:
                node.input[i] = as_type(name, FLOAT if i in fixed else want, new)
        renamed = []
        for i, o in enumerate(node.output):
            if elem.get(o) != FLOAT:
                continue
            if want == FLOAT16 and o in graph_outputs:  # outputs stay float32: cast back
                node.output[i] = f"{o}__fp16"
                renamed.append((node.output[i], o))
                precision[node.output[i]] = FLOAT16
            else:
                precision[o] = want
        g.node.extend([*new, node])
        for half, name in renamed:
            g.node.append(helper.make_node("Cast", [half], [name], to=FLOAT, name=f"{name}_cast"))
            precision[name] = FLOAT
            stats["casts"] += 1

    # Weights read only in fp16 no longer need their float32 copy.
    used = {i for n in g.node for i in n.input}
    keep_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    return out, stats


# ------------------------------------------------------------------------------ overflow scan


def _overflowing_nodes(model: ModelProto, feeds: dict[str, np.ndarray], limit: float) -> set[str]:
    """Nodes producing or reading a float tensor whose |values| exceed `limit` on `feeds`."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    float_vis = [vi for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == FLOAT]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(vi for vi in float_vis if vi.name not in known)
    opts = ort.SessionOptions()
    # Unoptimised, so every intermediate tensor exists under its own name.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    big = set()
    for name, value in zip(names, sess.run(None, feeds), strict=True):
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and arr.size and float(np.nanmax(np.abs(arr))) > limit:
            big.add(name)
    for t in model.graph.initializer:
        if t.data_type == FLOAT:
            arr = numpy_helper.to_array(t)
            if arr.size and float(np.abs(arr).max()) > limit:
                big.add(t.name)
    nodes = {n.name for n in model.graph.node if big & (set(n.output) | set(n.input))}
    if nodes:
        log.info("FP16: %d node(s) see values near the FP16 limit and stay FP32", len(nodes))
    return nodes


# ------------------------------------------------------------------------------ running


def _sample_feeds(model: ModelProto, sample: np.ndarray | None, seed: int) -> dict[str, np.ndarray]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"the FP16 converter checks models with one input; this one has {len(inputs)}",
            "export a single-input model",
        )
    inp = inputs[0]
    if sample is not None:
        return {inp.name: np.ascontiguousarray(sample, dtype=np.float32)}
    dims = []
    for i, d in enumerate(inp.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        elif i == 0:
            dims.append(1)
        else:
            raise ExportError(
                f"input {inp.name} has a dynamic dimension {i}",
                "pass sample= images to convert_fp16, or export with a fixed input size",
            )
    rng = np.random.default_rng(seed)
    return {inp.name: rng.standard_normal(dims).astype(np.float32)}


def _run(model: ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        return np.asarray(sess.run(None, feeds)[0], dtype=np.float32)
    except Exception as exc:  # ORT raises its own types
        first = first_line(exc)
        raise ExportError(
            f"ONNX Runtime cannot run the model: {first}", "report this model"
        ) from exc
