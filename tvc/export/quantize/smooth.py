"""SmoothQuant-style scale migration for static INT8, done on the ONNX graph before Q/DQ.

Pretrained transformers carry activation outliers: a few LayerNorm output channels tens of times
larger than the rest. A per-tensor INT8 scale sized for them leaves the other channels a handful
of levels. Per input channel j of the Linear layers reading a LayerNorm, SmoothQuant divides the
activation by s_j and multiplies the weight row by s_j (the product is unchanged):

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

The division is folded into the LayerNorm's scale and bias, the multiplication into the weights,
so the graph keeps its ops and only constants change; weights stay quantized per output channel,
which absorbs the larger rows. It applies where it is exact: a LayerNormalization over the last
axis with constant scale (and bias) whose output is read only by MatMul/Gemm nodes with constant
weights, directly or through Reshapes that keep the channel axis last (the pre-norm ViT's
norm1 -> qkv and norm2 -> fc1). Others are left as they are and named
in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.export.quantize.graph import InputSpec, attr

if TYPE_CHECKING:
    from onnx import ModelProto

CHUNK = 16  # images per ORT run while collecting activation ranges


def smooth_layernorms(
    model: ModelProto, x: np.ndarray, inputs: InputSpec, alpha: float
) -> tuple[ModelProto, dict[str, Any]]:
    """A copy of `model` with every eligible LayerNorm -> Linear pair smoothed (see above), and a
    report: alpha, the smoothed norms, the largest activation/weight ratio moved, the skipped."""
    from onnx import ModelProto as _MP
    from onnx import numpy_helper

    out = _MP()
    out.CopyFrom(model)
    pairs, skipped = _pairs(out)
    report: dict[str, Any] = {"alpha": alpha, "smoothed": [], "skipped": skipped}
    if not pairs:
        return out, report
    amax = _activation_ranges(out, [ln.output[0] for ln, _ in pairs], x, inputs)
    inits = {t.name: t for t in out.graph.initializer}
    biggest = 1.0
    for ln, readers in pairs:
        act = amax[ln.output[0]]
        weights = [_rows(numpy_helper.to_array(inits[n.input[1]]), n) for n in readers]
        wmax = np.max(np.stack([np.abs(w).max(1) for w in weights]), axis=0)
        ok = (act > 0) & (wmax > 0)
        s = np.ones_like(act, dtype=np.float64)
        s[ok] = act[ok] ** alpha / wmax[ok] ** (1.0 - alpha)
        s = np.clip(s, 1e-5, 1e5)
        _replace(out, ln, 1, numpy_helper.to_array(inits[ln.input[1]]) / s)
        if len(ln.input) > 2 and ln.input[2]:
            _replace(out, ln, 2, numpy_helper.to_array(inits[ln.input[2]]) / s)
        for node, w in zip(readers, weights, strict=True):
            _replace(out, node, 1, _rows(w * s[:, None], node))
        spread = float(act.max() / max(np.median(act), 1e-12))
        biggest = max(biggest, spread)
        report["smoothed"].append({"norm": ln.name, "readers": [n.name for n in readers],
                                   "outlier_ratio": round(spread, 2)})  # fmt: skip
    report["max_outlier_ratio"] = round(biggest, 2)
    _drop_unused(out)
    return out, report


def _pairs(model: ModelProto) -> tuple[list[tuple[Any, list[Any]]], list[str]]:
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    pairs, skipped = [], []
    for ln in graph.node:
        if ln.op_type != "LayerNormalization":
            continue
        y = ln.output[0]
        usable = (
            attr(ln, "axis", -1) == -1  # the last axis: one scale per channel
            and ln.input[1] in inits
            and (len(ln.input) < 3 or not ln.input[2] or ln.input[2] in inits)
            and y not in outputs
        )
        width = _width(inits[ln.input[1]]) if usable else 0
        linears = _linear_readers(y, readers, inits, outputs, width) if usable else None
        (pairs.append((ln, linears)) if linears else skipped.append(ln.name))
    return pairs, skipped


def _width(tensor) -> int:
    return int(np.prod(tensor.dims)) if tensor.dims else 1


def _linear_readers(y: str, readers, inits, outputs, width: int) -> list[Any] | None:
    """The Linear nodes reading `y`, directly or through Reshapes that keep the channel axis
    last (onnxslim turns a batch-1 MatMul into Reshape -> Gemm -> Reshape); None if anything
    else reads it."""
    from onnx import numpy_helper

    found = []
    for node in readers.get(y, []):
        if node.op_type == "Reshape" and node.input[0] == y and node.input[1] in inits:
            shape = numpy_helper.to_array(inits[node.input[1]])
            if shape.size == 0 or int(shape[-1]) != width or node.output[0] in outputs:
                return None
            more = _linear_readers(node.output[0], readers, inits, outputs, width)
            if not more:
                return None
            found.extend(more)
        elif _linear_reader(node, y, inits):
            found.append(node)
        else:
            return None
    return found or None


def _linear_reader(node, y: str, inits) -> bool:
    if len(node.input) < 2 or node.input[0] != y or node.input[1] not in inits:
        return False
    if len(inits[node.input[1]].dims) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    return node.op_type == "Gemm" and not attr(node, "transA", 0)


def _rows(w: np.ndarray, node) -> np.ndarray:
    """The weight as [in, out] (row j multiplies input channel j), and back: its own inverse."""
    return w.T if node.op_type == "Gemm" and attr(node, "transB", 0) else w


def _replace(model: ModelProto, node, index: int, value: np.ndarray) -> None:
    """Point input `index` of `node` at a new constant (shared constants stay as they were)."""
    from onnx import numpy_helper

    name = f"{node.input[index]}__smooth_{node.name}"
    model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    node.input[index] = name


def _drop_unused(model: ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _activation_ranges(
    model: ModelProto, names: list[str], x: np.ndarray, inputs: InputSpec
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |value| of the tensors `names` over the images `x`."""
    from onnx import ModelProto as _MP
    from onnx import TensorProto, helper

    from tvc.export.quantize.scoring import session

    probe = _MP()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names)  # fmt: skip
    sess, spec = session(probe)
    b = spec.fixed_batch or CHUNK
    ranges: dict[str, np.ndarray] = {}
    for start in range(0, len(x), b):
        chunk = x[start : start + b]
        if spec.fixed_batch and len(chunk) < b:
            chunk = np.concatenate([chunk, chunk[-1:].repeat(b - len(chunk), axis=0)])
        for name, y in zip(names, sess.run(names, {inputs.name: chunk}), strict=True):
            m = np.abs(y.reshape(-1, y.shape[-1])).max(0).astype(np.float64)
            ranges[name] = m if name not in ranges else np.maximum(ranges[name], m)
    return ranges
