"""Graph rewrites that let ONNX Runtime's CPU kernels run tvc's ViT graphs in integer.

Two patterns in tvc's exports leave time on the table on ORT CPU:

**Attention.** ORT's transformer optimizer matches BERT-style attention (separate Q, K and V
projections). timm's ViT/DeiT attention, as tvc exports it, computes Q, K and V with one `qkv`
Linear and splits it:

    x -> MatMul(W) [-> Add(b)] -> Reshape(B, N, 3, H, d) -> Transpose(2, 0, 3, 1, 4) -> Split
      q -> Squeeze [-> Mul s_q]                           \\
      k -> Squeeze -> Transpose(0, 1, 3, 2) [-> Mul s_k]  -> MatMul [-> Mul/Div s] -> Softmax
      v -> Squeeze                                          -> MatMul(., v)
      -> Transpose(0, 2, 1, 3) -> Reshape(B, N, C)

so the optimizer never fuses it, and ORT runs the Transpose/Split/Squeeze copies and two float
batched MatMuls per block. `fuse_attention` matches that pattern exactly (every permutation,
shape and scale checked; anything else is left alone) and replaces it with one
`com.microsoft.Attention` node holding the same `qkv` weight and bias, the head count and the
softmax scale (`--ort-optimize` applies it to model.ort.onnx). Dynamic INT8 built on that file
turns it into ORT's QAttention, whose QKV projection runs in integer like the other Linears;
on model.onnx the default INT8 keeps attention unfused, which measured faster at batch 8.
Attention with anything between the scores and the softmax (a mask, ToMe's size bias) does not
match and stays as it is.

**Patch embedding.** The stride-k, k x k patch Conv is a GEMM over non-overlapping patches.
Kept as a Conv it stays float (ORT's ConvInteger is slow); `patches_as_matmul` rewrites it as
Reshape -> Transpose -> MatMul (+ bias) -> back to the Conv's NCHW output, which dynamic INT8
quantizes like any Linear.

Both rewrites are exact in FP32 (the same weights, summed in another order); the INT8 export
that uses them is proven against the FP32 model like every variant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

CONTRIB = "com.microsoft"


@dataclass
class _Match:
    """One matched attention subgraph: what the fused node needs and the nodes it replaces."""

    name: str  # the qkv MatMul's: the fused node keeps it, so --int8-exclude names still work
    x: str
    weight: np.ndarray  # (C, 3 * hidden): q, k, v heads side by side, as Attention reads it
    bias: np.ndarray | None
    out: str  # what the output Reshape reads: the fused node writes it
    heads: int
    scale: float
    nodes: list[NodeProto]


class _Graph:
    """Producer/consumer lookups and constant values of one ONNX graph."""

    def __init__(self, model: ModelProto) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.outputs = {o.name for o in g.output}
        self.rank = _ranks(model)

    def op(self, name: str, op_type: str) -> NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type and n.domain in ("", "ai.onnx") else None

    def scalar(self, name: str) -> float | None:
        v = self.values.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def private(self, node: NodeProto) -> bool:
        """True when only the matched subgraph reads `node`'s outputs (it can be removed)."""
        return not any(o in self.outputs for o in node.output)


def _ranks(model: ModelProto) -> dict[str, int]:
    """Every tensor's rank that ONNX shape inference can tell (the model is not changed)."""
    import onnx

    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # an unknown op stops inference: fall back to what the file records
        g = model.graph
    infos = [*g.input, *g.value_info, *g.output]
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in infos
        if v.type.tensor_type.HasField("shape")
    }


def _perm(node: NodeProto) -> list[int]:
    from onnx import helper

    for a in node.attribute:
        if a.name == "perm":
            return list(helper.get_attribute_value(a))
    return []


def _peel_scale(g: _Graph, name: str, nodes: list[NodeProto]) -> tuple[str, float]:
    """Follow Mul/Div by scalar constants back from `name`; the tensor before them and the
    product of the factors."""
    scale = 1.0
    while True:
        n = g.producer.get(name)
        if n is None or n.op_type not in ("Mul", "Div"):
            return name, scale
        const = [i for i in n.input if g.scalar(i) is not None]
        if len(const) != 1 or (n.op_type == "Div" and n.input[1] != const[0]):
            return name, scale
        s = g.scalar(const[0])
        scale *= s if n.op_type == "Mul" else 1.0 / s
        nodes.append(n)
        name = next(i for i in n.input if i != const[0])


def _match(g: _Graph, softmax: NodeProto) -> _Match | None:
    """The attention subgraph around `softmax`, or None when it is not exactly the pattern."""
    from onnx import helper

    if any(
        a.name == "axis" and helper.get_attribute_value(a) not in (-1, 3) for a in softmax.attribute
    ):
        return None
    nodes: list[NodeProto] = [softmax]
    scores, s_after = _peel_scale(g, softmax.input[0], nodes)
    qk = g.op(scores, "MatMul")
    readers = g.consumers.get(softmax.output[0], [])
    if qk is None or len(readers) != 1 or readers[0].op_type != "MatMul":
        return None
    av = readers[0]
    nodes += [qk, av]
    q_name, s_q = _peel_scale(g, qk.input[0], nodes)
    kt_name, s_k = _peel_scale(g, qk.input[1], nodes)
    kt = g.op(kt_name, "Transpose")
    if kt is None or _perm(kt) != [0, 1, 3, 2]:
        return None
    nodes.append(kt)
    sq = [g.op(q_name, "Squeeze"), g.op(kt.input[0], "Squeeze"), g.op(av.input[1], "Squeeze")]
    if any(s is None for s in sq):
        return None
    split = g.op(sq[0].input[0], "Split")
    if split is None or [s.input[0] for s in sq] != list(split.output):
        return None
    nodes += [*sq, split]
    tr = g.op(split.input[0], "Transpose")
    if tr is None or _perm(tr) != [2, 0, 3, 1, 4]:
        return None
    rs = g.op(tr.input[0], "Reshape")
    shape = g.values.get(rs.input[1]) if rs is not None else None
    if shape is None or shape.size != 5 or int(shape[2]) != 3:
        return None
    heads, head_dim = int(shape[3]), int(shape[4])
    nodes += [tr, rs]
    # the output side: (B, H, N, d) -> (B, N, H, d) -> Reshape to (B, N, C) or (B * N, C).
    # The Reshape stays, reading the fused node's (B, N, C): the same elements in the same order.
    out_readers = g.consumers.get(av.output[0], [])
    if len(out_readers) != 1 or out_readers[0].op_type != "Transpose":
        return None
    back = out_readers[0]
    if _perm(back) != [0, 2, 1, 3]:
        return None
    merge = g.consumers.get(back.output[0], [])
    if len(merge) != 1 or merge[0].op_type != "Reshape":
        return None
    target = g.values.get(merge[0].input[1])
    if target is None or target.size not in (2, 3) or int(target[-1]) not in (heads * head_dim, -1):
        return None
    nodes.append(back)
    proj = _projection(g, rs.input[0], 3 * heads * head_dim, nodes)
    if proj is None:
        return None
    x, weight, bias, name = proj
    # every intermediate must feed only this subgraph (`back` feeds the kept Reshape alone)
    for n in nodes:
        if n is back and g.private(n):
            continue
        if not g.private(n) or any(
            c not in nodes for o in n.output for c in g.consumers.get(o, [])
        ):
            return None
    return _Match(name, x, weight, bias, back.output[0], heads, s_q * s_k * s_after, nodes)


def _projection(
    g: _Graph, name: str, width: int, nodes: list[NodeProto]
) -> tuple[str, np.ndarray, np.ndarray | None, str] | None:
    """The qkv projection producing `name`: x (B, N, C), its (C, width) weight, bias and the
    node's name, from MatMul(x, W) [+ b], or from a batch-1 export's Reshape(x, 2-D) ->
    Gemm(W, b) (onnxslim's form); None for anything else."""
    from onnx import helper

    add, bias = g.op(name, "Add"), None
    if add is not None:
        b = [i for i in add.input if i in g.values and g.values[i].ndim == 1]
        if len(b) != 1:
            return None
        bias = g.values[b[0]]
        name = next(i for i in add.input if i != b[0])
        nodes.append(add)
    mm = g.op(name, "MatMul") or g.op(name, "Gemm")
    w = g.values.get(mm.input[1]) if mm is not None else None
    if w is None or w.ndim != 2:
        return None
    if mm.op_type == "Gemm":
        a = {x.name: helper.get_attribute_value(x) for x in mm.attribute}
        if bias is not None or a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
            return None
        w = w.T if a.get("transB", 0) else w
        c = g.values.get(mm.input[2]) if len(mm.input) > 2 and mm.input[2] else None
        if c is not None and (c.ndim != 1 or a.get("beta", 1.0) != 1.0):
            return None
        bias = c
    if w.shape[1] != width or (bias is not None and bias.shape != (width,)):
        return None
    nodes.append(mm)
    x = mm.input[0]
    if mm.op_type == "Gemm":  # it reads (B * N, C): the 3-D x is behind that Reshape
        flat = g.op(x, "Reshape")
        target = g.values.get(flat.input[1]) if flat is not None else None
        if target is None or target.size != 2 or int(target[1]) not in (w.shape[0], -1):
            return None
        x = flat.input[0]
        nodes.append(flat)
    if g.rank.get(x) != 3:
        return None
    return x, w, bias, mm.name


def fuse_attention(model: ModelProto, keep: Iterable[str] = ()) -> list[str]:
    """Replace every matching timm attention subgraph of `model` in place by one
    com.microsoft.Attention node, named after its `qkv` MatMul; the fused nodes' names. A
    subgraph holding a node named in `keep` (kept in float by the user) is left unchanged."""
    from onnx import helper

    keep = set(keep)
    g = _Graph(model)
    matches = [m for s in model.graph.node if s.op_type == "Softmax" if (m := _match(g, s))]
    matches = [m for m in matches if not any(n.name in keep for n in m.nodes)]
    if not matches:
        return []
    drop = {id(n) for m in matches for n in m.nodes}
    at_softmax = {id(m.nodes[0]): m for m in matches}
    new_nodes = []
    for n in model.graph.node:
        m = at_softmax.get(id(n))
        if m is not None:
            w = m.weight
            b = m.bias if m.bias is not None else np.zeros(w.shape[1], w.dtype)
            weight = _add_initializer(model, np.ascontiguousarray(w), f"{m.name}_qkv_weight")
            bias = _add_initializer(model, b, f"{m.name}_qkv_bias")
            node = helper.make_node(
                "Attention", [m.x, weight, bias], [m.out], name=m.name, domain=CONTRIB
            )
            node.attribute.extend(
                [
                    helper.make_attribute("num_heads", m.heads),
                    helper.make_attribute("scale", m.scale),
                ]
            )
            # the fused node sits where its softmax was: x is produced before it and its output
            # is read by the Reshape after the softmax, so the order stays topological
            new_nodes.append(node)
        if id(n) not in drop:
            new_nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    # shapes recorded for the removed tensors, and the 4-D one the fused node now writes 3-D
    stale = {o for m in matches for n in m.nodes for o in n.output} | {m.out for m in matches}
    kept_info = [v for v in model.graph.value_info if v.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    _use_contrib(model)
    _drop_unused_initializers(model)
    return [m.name for m in matches]


def patches_as_matmul(model: ModelProto, keep: Iterable[str] = ()) -> list[str]:
    """Rewrite each patch-embedding Conv of `model` (kernel == stride, no padding, dilation or
    groups, reading a graph input of fixed height and width) in place as a MatMul over the
    flattened patches, named as the Conv was; the rewritten nodes' names."""
    from onnx import helper

    keep = set(keep)
    g = _Graph(model)
    dims = {
        i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    done: list[str] = []
    new_nodes = []
    for n in model.graph.node:
        w = g.values.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        shape = dims.get(n.input[0]) if w is not None else None
        if n.name in keep or not _is_patch_conv(n, w, shape):
            new_nodes.append(n)
            continue
        out_ch, ch, k, _ = w.shape
        hp, wp = shape[2] // k, shape[3] // k
        p = f"{n.name}_patches"

        def const(array: np.ndarray, suffix: str, p: str = p) -> str:
            return _add_initializer(model, array, f"{p}_{suffix}_const")

        flat = helper.make_node(
            "Reshape", [n.input[0], const(np.array([0, ch, hp, k, wp, k], np.int64), "grid")],
            [f"{p}_grid"], name=f"{p}_grid",
        )  # fmt: skip
        order = helper.make_node(
            "Transpose", [f"{p}_grid"], [f"{p}_order"], name=f"{p}_order", perm=[0, 2, 4, 1, 3, 5]
        )
        rows = helper.make_node(
            "Reshape", [f"{p}_order", const(np.array([0, hp * wp, ch * k * k], np.int64), "rows")],
            [f"{p}_rows"], name=f"{p}_rows",
        )  # fmt: skip
        weight = const(w.reshape(out_ch, -1).T.copy(), "weight")
        mm_out = f"{p}_mm" if len(n.input) > 2 and n.input[2] else f"{p}_biased"
        new_nodes += [
            flat,
            order,
            rows,
            helper.make_node("MatMul", [f"{p}_rows", weight], [mm_out], name=n.name),
        ]
        if mm_out != f"{p}_biased":
            new_nodes.append(
                helper.make_node("Add", [mm_out, n.input[2]], [f"{p}_biased"], name=f"{p}_bias")
            )
        new_nodes += [
            helper.make_node(
                "Transpose", [f"{p}_biased"], [f"{p}_nc"], name=f"{p}_nc", perm=[0, 2, 1]
            ),
            helper.make_node(
                "Reshape", [f"{p}_nc", const(np.array([0, out_ch, hp, wp], np.int64), "nchw")],
                [n.output[0]], name=f"{p}_nchw",
            ),
        ]  # fmt: skip
        done.append(n.name)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        _drop_unused_initializers(model)
    return done


def _is_patch_conv(node: NodeProto, w: np.ndarray | None, shape: list | None) -> bool:
    from onnx import helper

    if w is None or w.ndim != 4 or shape is None or len(shape) != 4 or None in shape[1:]:
        return False
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    k = w.shape[2]
    return (
        w.shape[3] == k
        and shape[1] == w.shape[1]
        and list(a.get("strides", [1, 1])) == [k, k]
        and not any(a.get("pads", [0]))
        and list(a.get("dilations", [1, 1])) == [1, 1]
        and a.get("group", 1) == 1
        and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID")
        and shape[2] % k == 0
        and shape[3] % k == 0
    )


def _add_initializer(model: ModelProto, array: np.ndarray, name: str) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _use_contrib(model: ModelProto) -> None:
    from onnx import helper

    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))


def _drop_unused_initializers(model: ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
