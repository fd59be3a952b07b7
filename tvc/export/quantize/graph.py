"""Graph side of INT8: which nodes to quantize (placement), the rewrites that make ONNX Runtime
and TensorRT read the result well (Gemm bias split, float readers of quantized activations),
keeping chosen nodes in float, and the file helpers the other modules share."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tvc.errors import ConfigError, UnsupportedModelError, first_line
from tvc.export.quantize.config import LINEAR_OPS, OPS, QDQ_OPS

if TYPE_CHECKING:
    from onnx import ModelProto

log = logging.getLogger("tvc")


def quantizable_nodes(model_path: str | Path, ops: str = "safe") -> list[str]:
    """Names of the nodes `ops` would quantize: the Linear layers ("safe") or every op ORT can
    quantize ("all"). Unnamed nodes get the names tvc gives them (`<OpType>_<index>`)."""
    if ops not in OPS:
        raise ConfigError(f"unknown --int8-ops '{ops}'", "use safe (default) or all")
    model = prepare(load_onnx(model_path))
    return quantize_candidates(model, ops)


def load_onnx(path: str | Path, *, weights: bool = True) -> ModelProto:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX model {path} does not exist", "check the path")
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as exc:
        raise ConfigError(
            f"{path} is not a readable ONNX model ({exc})",
            "pass the model.onnx written by 'tvc export'",
        ) from exc


def save_onnx(model: ModelProto, path: Path) -> Path:
    import onnx

    onnx.save(model, str(path))
    return path


def check_model(path: Path) -> None:
    import onnx

    from tvc.errors import ExportError

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(
            f"the INT8 model fails onnx.checker: {first}", "report this model; try --int8-ops safe"
        ) from exc


def constants(model: ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return names


def attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def is_linear(node, consts: set[str]) -> bool:
    """A Linear-like layer: MatMul/Gemm/Conv whose weight (input 1) is a constant."""
    if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
        return False
    if len(node.input) < 2 or node.input[1] not in consts:
        return False
    return not (node.op_type == "Gemm" and attr(node, "transA", 0))


def quantize_candidates(model: ModelProto, ops: str) -> list[str]:
    if ops == "safe":
        consts = constants(model)
        return [n.name for n in model.graph.node if is_linear(n, consts)]
    from onnxruntime.quantization.registry import QDQRegistry

    return [
        n.name
        for n in model.graph.node
        if n.op_type in QDQRegistry
        or n.op_type in ("Add", "Mul", "Softmax", "Concat", "Sigmoid", "LeakyRelu")
    ]


def dynamic_nodes(model: ModelProto, ops: str) -> list[str]:
    consts = constants(model)
    if ops == "safe":  # Conv would become ConvInteger, slow on ORT CPU: Linear layers only
        return [n.name for n in model.graph.node if is_linear(n, consts) and n.op_type != "Conv"]
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [n.name for n in model.graph.node if n.op_type in IntegerOpsRegistry]


def all_names(model: ModelProto) -> list[str]:
    return [n.name for n in model.graph.node]


def check_names(names, known: list[str]) -> list[str]:
    known_set = set(known)
    for name in names:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean: {', '.join(close)}?" if close else "list them with Netron"
            raise ConfigError(f"the model has no node named '{name}' to keep in float", hint)
    return list(dict.fromkeys(names))


def prepare(model: ModelProto, *, gemm: str = "keep") -> ModelProto:
    """A copy with unique node names, and the Linear Gemms rewritten for the quantizer:

    - "split_bias" (static): the bias moves into a separate Add. ORT's CPU kernels fuse
      DQ -> Gemm into the integer QGemm only when the Gemm has no float bias, and TensorRT cannot
      parse an int32 (quantized) bias; a float Add serves both.
    - "matmul" (dynamic): Gemm -> MatMul (+ Add). ORT's dynamic quantizer only handles MatMul and
      would otherwise do this rewrite itself under new node names.
    - "keep": unchanged.
    """
    from onnx import ModelProto as _MP
    from onnx import helper, numpy_helper

    copy = _MP()
    copy.CopyFrom(model)
    graph = copy.graph
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    if gemm == "keep":
        return copy
    consts = constants(copy)
    inits = {t.name: t for t in graph.initializer}

    def add_const(array: np.ndarray, name: str) -> str:
        graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    new_nodes = []
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        bias = node.input[2] if len(node.input) > 2 else ""
        if not (node.op_type == "Gemm" and is_linear(node, consts) and weight in inits):
            new_nodes.append(node)
            continue
        if (bias and bias not in inits) or (gemm == "split_bias" and not bias):
            new_nodes.append(node)
            continue
        alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
        out = node.output[0]
        core_out = f"{out}_nobias" if bias else out
        if gemm == "matmul":
            w = numpy_helper.to_array(inits[weight])
            w = (w.T if attr(node, "transB", 0) else w) * np.float32(alpha)
            w_name = add_const(w, f"{weight}_kn_{node.name}")
            new_nodes.append(
                helper.make_node("MatMul", [node.input[0], w_name], [core_out], name=node.name)
            )
        else:
            attrs = {
                a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "beta"
            }
            new_nodes.append(
                helper.make_node(
                    "Gemm", [node.input[0], weight], [core_out], name=node.name, **attrs
                )
            )
        if bias:
            if beta != 1.0:
                b = numpy_helper.to_array(inits[bias]) * np.float32(beta)
                bias = add_const(b, f"{bias}_times_beta_{node.name}")
            new_nodes.append(
                helper.make_node("Add", [core_out, bias], [out], name=f"{node.name}_bias")
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    prune_graph(copy)  # drops weights only the rewritten Gemms used
    return copy


def float_for_bystanders(
    qdq: ModelProto, fp32: ModelProto, linears: set[str], path: Path
) -> ModelProto:
    """Point every other reader of a quantized activation back at the float tensor.

    ONNX Runtime inserts one Q/DQ pair per activation and hands the dequantized copy to all its
    readers, not only the Linear it quantized for. In a post-norm transformer (DETR) a
    LayerNorm's output feeds both the q/k/v Linears and the residual Add, so the residual
    stream would carry INT8 rounding error through every layer. Only the Linears should read
    the Q/DQ copy; this rewires the rest (Adds, Shapes, ...) and saves the result to `path`.
    """
    producers = {o: n for n in qdq.graph.node for o in n.output}
    activation_dq = {
        n.output[0]
        for n in qdq.graph.node
        if n.op_type == "DequantizeLinear"
        and getattr(producers.get(n.input[0]), "op_type", None) == "QuantizeLinear"
    }
    bystanders = {
        n.name
        for n in qdq.graph.node
        if n.op_type not in QDQ_OPS
        and n.name not in linears
        and any(i in activation_dq for i in n.input)
    }
    if not bystanders:
        return qdq
    log.debug("%d non-Linear readers of quantized activations kept in float", len(bystanders))
    fixed = keep_in_float(qdq, fp32, bystanders)
    save_onnx(fixed, path)
    return fixed


def quantized_nodes(model: ModelProto) -> list[str]:
    """Compute nodes that read at least one DequantizeLinear output."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)
    ]


def op_types(model: ModelProto, names: list[str]) -> list[str]:
    by_name = {n.name: n.op_type for n in model.graph.node}
    return [by_name[n] for n in names]


def float_op_types(model: ModelProto, quantized: set[str]) -> list[str]:
    skip = {
        *QDQ_OPS,
        "Shape",
        "Gather",
        "Unsqueeze",
        "Concat",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Split",
        "Constant",
        "ConstantOfShape",
        "Equal",
        "Where",
        "Expand",
        "Slice",
        "Cast",
        "Flatten",
        "Identity",
    }
    return sorted(
        {n.op_type for n in model.graph.node if n.name not in quantized and n.op_type not in skip}
    )


def keep_in_float(qdq: ModelProto, fp32: ModelProto, names: set[str]) -> ModelProto:
    """`qdq` with the nodes in `names` reading float inputs again (from the FP32 graph `fp32`,
    which must be the graph `qdq` was quantized from). Q/DQ nodes left unused are removed."""
    from onnx import ModelProto as _MP

    model = _MP()
    model.CopyFrom(qdq)
    graph = model.graph
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = {t.name: t for t in fp32.graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    available = (
        producers.keys() | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    )
    added: set[str] = set()
    for node in graph.node:
        if node.name not in names:
            continue
        original = fp_nodes[node.name]
        for i, (now, before) in enumerate(zip(node.input, original.input, strict=False)):
            if now == before:
                continue
            if before in available:
                node.input[i] = before
            elif before in fp_inits:  # a weight ORT replaced by its int8 copy
                if before not in added:
                    graph.initializer.append(fp_inits[before])
                    added.add(before)
                node.input[i] = before
            else:  # follow DQ <- Q back to the float tensor
                dq = producers.get(now)
                q = producers.get(dq.input[0]) if dq is not None else None
                if dq is None or dq.op_type != "DequantizeLinear" or q is None:
                    raise UnsupportedModelError(
                        f"cannot restore the float input '{before}' of node '{node.name}'",
                        "exclude the node before quantizing instead",
                    )
                node.input[i] = q.input[0]
    prune_graph(model)
    return model


def prune_graph(model: ModelProto) -> None:
    """Drop nodes whose outputs nobody reads and initializers no node uses."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name not in dropped]  # old IRs list weights as inputs
    del graph.input[:]
    graph.input.extend(inputs)


@dataclass
class InputSpec:
    name: str
    fixed_batch: int | None  # None: dynamic batch
    chw: tuple[int | None, ...]  # (C, H, W) of images, (L,) of a token sequence; None: dynamic
    dtype: str = "float32"  # the numpy dtype the input takes ("int64" for tokens)


def input_spec(model: ModelProto, *, images: bool = True) -> InputSpec:
    """The model's one input. `images` (what INT8 calibration needs) insists on (N, C, H, W);
    without it any rank is taken (iGPT's (N, L) tokens), for running the model."""
    from onnx.helper import tensor_dtype_to_np_dtype

    inits = {t.name for t in model.graph.initializer}
    real = [i for i in model.graph.input if i.name not in inits]
    if len(real) != 1:
        raise UnsupportedModelError(
            f"INT8 calibration needs a model with one image input, this one has {len(real)}",
            "export a classifier with a single input",
        )
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in real[0].type.tensor_type.shape.dim
    ]
    if images and len(dims) != 4:
        raise UnsupportedModelError(
            f"the model input has rank {len(dims)}; INT8 calibration expects images (N, C, H, W)",
            "export a vision model taking NCHW images",
        )
    dtype = tensor_dtype_to_np_dtype(real[0].type.tensor_type.elem_type).name
    return InputSpec(real[0].name, dims[0] if dims else None, tuple(dims[1:]), dtype)


def sizes(fp32: Path, out: Path) -> dict[str, Any]:
    a, b = fp32.stat().st_size, out.stat().st_size
    return {"size_bytes": b, "fp32_size_bytes": a, "size_ratio": round(a / b, 2) if b else None}


def no_layers(path: Path, ops: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{path.name} has no layers to quantize with --int8-ops {ops} (no MatMul/Gemm/Conv with "
        "constant weights)",
        "quantize a transformer or CNN exported by 'tvc export'",
    )
