"""TensorRT readiness check for explicit-quantization (Q/DQ) ONNX models, without TensorRT.

TensorRT 10 and 11 build INT8 engines only from explicit QuantizeLinear/DequantizeLinear pairs in
the graph, and reject or silently mis-handle graphs that break their rules. `check_trt_qdq` reads
the ONNX file and lists every rule a model breaks, so an INT8 export can be judged on a machine
without a GPU. The rules follow TensorRT's developer guide (explicit quantization) and the
onnx-tensorrt operator matrix:

- opset >= 13 (per-channel Q/DQ needs the `axis` attribute);
- Q/DQ in the standard ONNX domain, quantizing to int8 (fp8 and weight-only int4 also accepted),
  never uint8 / int16 / int32 (an int32-quantized bias cannot be parsed);
- symmetric: every zero point is 0;
- constant, positive, finite scales;
- activations per-tensor; weights per-tensor or per-channel along the output-channel axis
  (Conv: 0, ConvTranspose: 1, Gemm: 0 with transB=1 else 1, MatMul: the last axis), judged at
  the layer that uses the weight, through any Identity nodes in between;
- well-formed pairs: a QuantizeLinear feeds only DequantizeLinear nodes with the same scale and
  zero point, and a DequantizeLinear reads a QuantizeLinear or a constant;
- no operators TensorRT cannot import (integer-arithmetic ONNX ops, ONNX Runtime contrib ops, ...).

Torch-free and TensorRT-free: only `onnx` and numpy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

MIN_OPSET = 13
Q_OPS = ("QuantizeLinear", "DequantizeLinear")

# ONNX element types (onnx.TensorProto values) a TensorRT Q/DQ may carry.
_INT8, _UINT8, _INT32, _INT16, _UINT16 = 3, 2, 6, 5, 4
_FLOAT8E4M3FN, _INT4, _UINT4 = 17, 22, 21
_ALLOWED_QTYPES = {_INT8: "int8", _FLOAT8E4M3FN: "float8e4m3fn", _INT4: "int4"}
_TYPE_NAMES = {
    _INT8: "int8",
    _UINT8: "uint8",
    _INT32: "int32",
    _INT16: "int16",
    _UINT16: "uint16",
    _FLOAT8E4M3FN: "float8e4m3fn",
    _INT4: "int4",
    _UINT4: "uint4",
}

# Standard ONNX ops with no TensorRT importer (onnx-tensorrt operator matrix), plus the integer
# ops that ONNX Runtime's QOperator format and dynamic quantization produce.
UNSUPPORTED_OPS = frozenset(
    {
        "Bernoulli",
        "BitShift",
        "BlackmanWindow",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "HammingWindow",
        "HannWindow",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "STFT",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringNormalizer",
        "TfIdfVectorizer",
        "Unique",
    }
)


def trt_readiness(variant: dict) -> dict | None:
    """A variant's TensorRT readiness as artifact.json records it: `trt_readiness`
    ({ok, violations}, written once per INT8 variant). Artifacts from before kept it as
    `trt_ready` (and `trt_violations`); None when the variant was never judged."""
    if "trt_readiness" in variant:
        return variant["trt_readiness"]
    if "trt_ready" in variant:
        return {"ok": bool(variant["trt_ready"]), "violations": variant.get("trt_violations", [])}
    return None


def check_trt_qdq(model_path: str | os.PathLike) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules in `model_path`; [] when it is fine."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return _Checker(model, Path(model_path).parent).run()


class _Checker:
    def __init__(self, model, base_dir: Path) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self._to_array = numpy_helper.to_array
        self.base_dir = base_dir
        self.consts = {t.name: t for t in self.graph.initializer}
        for node in self.graph.node:  # Constant nodes are constants too
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value":
                        self.consts[node.output[0]] = attr.t
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.problems: list[str] = []

    def run(self) -> list[str]:
        self._check_opset()
        for node in self.graph.node:
            self._check_op_supported(node)
            if node.op_type in Q_OPS:
                self._check_qdq_node(node)
        for node in self.graph.node:
            if node.op_type == "QuantizeLinear":
                self._check_q_pairs(node)
            elif node.op_type == "DequantizeLinear":
                self._check_dq_source(node)
        return self.problems

    # -- helpers ------------------------------------------------------------------------------

    def _flag(self, node, text: str) -> None:
        self.problems.append(f"{node.op_type} '{node.name or node.output[0]}': {text}")

    def _const(self, name: str) -> np.ndarray | None:
        tensor = self.consts.get(name)
        if tensor is None:
            return None
        if tensor.data_location == 1:  # external data: shape is enough for most checks
            return None
        return self._to_array(tensor)

    def _elem_type(self, name: str) -> int | None:
        if name in self.consts:
            return self.consts[name].data_type
        for vi in (*self.graph.value_info, *self.graph.input, *self.graph.output):
            if vi.name == name and vi.type.HasField("tensor_type"):
                return vi.type.tensor_type.elem_type
        return None

    @staticmethod
    def _axis(node) -> int:
        for attr in node.attribute:
            if attr.name == "axis":
                return attr.i
        return 1  # the ONNX default

    # -- rules --------------------------------------------------------------------------------

    def _check_opset(self) -> None:
        has_qdq = any(n.op_type in Q_OPS for n in self.graph.node)
        opset = max(
            (o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=0
        )
        if has_qdq and opset < MIN_OPSET:
            self.problems.append(
                f"model: opset {opset} is too old for Q/DQ with per-channel scales; "
                f"TensorRT needs opset >= {MIN_OPSET}"
            )

    def _check_op_supported(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            self._flag(
                node,
                f"operator from domain '{node.domain}' has no TensorRT importer "
                "(ONNX Runtime contrib ops need a TensorRT plugin)",
            )
        elif node.op_type in UNSUPPORTED_OPS:
            self._flag(node, "TensorRT cannot import this operator")

    def _check_qdq_node(self, node) -> None:
        scale_name = node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 else ""

        # Quantized type: from the zero point, else the DQ input, else uint8 (the ONNX default).
        if zp_name:
            qtype = self._elem_type(zp_name)
        elif node.op_type == "DequantizeLinear":
            qtype = self._elem_type(node.input[0])
        else:
            qtype = _UINT8
        if qtype is not None and qtype not in _ALLOWED_QTYPES:
            name = _TYPE_NAMES.get(qtype, f"type {qtype}")
            why = " (a quantized bias; keep biases in float)" if qtype == _INT32 else ""
            if not zp_name and node.op_type == "QuantizeLinear":
                why = " (no zero point is given, so ONNX makes the output uint8)"
            self._flag(node, f"quantizes to {name}{why}; TensorRT needs int8 (symmetric)")

        if zp_name:
            zp = self._const(zp_name)
            if zp is not None and np.any(zp.astype(np.float64) != 0):
                nonzero = zp.reshape(-1)[np.flatnonzero(zp.reshape(-1))[0]]
                self._flag(
                    node,
                    f"zero point {nonzero} is not 0; TensorRT needs symmetric "
                    "quantization (zero point 0)",
                )

        if scale_name not in self.consts:
            self._flag(node, "scale is not a constant; TensorRT needs build-time scales")
            return
        scale = self._const(scale_name)
        if scale is not None and (not np.all(np.isfinite(scale)) or np.any(scale <= 0)):
            self._flag(node, "scale has values that are zero, negative or not finite")
        dims = list(self.consts[scale_name].dims)
        if int(np.prod(dims)) > 1 or len(dims) > 1:
            self._check_per_channel(node, dims)

    def _check_per_channel(self, node, scale_dims: list[int]) -> None:
        data = node.input[0]
        if data not in self.consts:
            self._flag(
                node,
                "activation is quantized per channel; TensorRT quantizes activations per tensor",
            )
            return
        if len(scale_dims) != 1:
            self._flag(node, "block-wise scales are only supported for int4 weights")
            return
        weight_dims = list(self.consts[data].dims)
        axis = self._axis(node)
        rank = len(weight_dims)
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank or weight_dims[axis] != scale_dims[0]:
            self._flag(
                node, f"{scale_dims[0]} scales do not match axis {axis} of the weight {weight_dims}"
            )
            return
        # The weight is consumed through the DQ (and, with weight Q/DQ pairs, through a Q first).
        dq_outputs = [node.output[0]]
        if node.op_type == "QuantizeLinear":
            dq_outputs = [
                c.output[0]
                for c in self.consumers.get(node.output[0], [])
                if c.op_type == "DequantizeLinear"
            ]
        for out in dq_outputs:
            for user, read in self._users_through_identity(out):
                want = _output_channel_axis(user, read, rank)
                if want is None:
                    self._flag(
                        node,
                        f"per-channel weights feed {user.op_type} '{user.name}', which "
                        "TensorRT only accepts with per-tensor weights",
                    )
                elif want != axis:
                    self._flag(
                        node,
                        f"per-channel axis {axis} is not the output-channel axis "
                        f"{want} of {user.op_type} '{user.name}'",
                    )

    def _users_through_identity(self, name: str) -> list[tuple[object, str]]:
        """The nodes that consume `name`, each with the tensor it reads, looking through Identity.

        An Identity passes its input on unchanged, and TensorRT removes it. torch.onnx.export
        inserts them when it deduplicates identical initializers (one weight, Identity copies
        for the other layers), and a quantizer that rewrites the shared weight leaves
        DequantizeLinear -> Identity -> MatMul. The weight's real consumer is the MatMul.
        """
        users, todo, seen = [], [name], {name}
        while todo:
            tensor = todo.pop()
            for user in self.consumers.get(tensor, []):
                if user.op_type == "Identity" and user.domain in ("", "ai.onnx"):
                    if user.output[0] not in seen:
                        seen.add(user.output[0])
                        todo.append(user.output[0])
                else:
                    users.append((user, tensor))
        return users

    def _check_q_pairs(self, q) -> None:
        users = self.consumers.get(q.output[0], [])
        graph_outputs = {o.name for o in self.graph.output}
        if q.output[0] in graph_outputs:
            self._flag(q, "quantized tensor is a graph output; end every Q with a DQ")
        for user in users:
            if user.op_type != "DequantizeLinear":
                self._flag(
                    q,
                    f"feeds {user.op_type} '{user.name}' directly; TensorRT needs a "
                    "DequantizeLinear after every QuantizeLinear",
                )
            elif not self._same_params(q, user):
                self._flag(
                    q, f"and its DequantizeLinear '{user.name}' use different scales or zero points"
                )

    def _check_dq_source(self, dq) -> None:
        src = dq.input[0]
        if src in self.consts:
            return  # a quantized constant weight
        producer = self.producer.get(src)
        if producer is None or producer.op_type != "QuantizeLinear":
            what = f"{producer.op_type} '{producer.name}'" if producer else "a graph input"
            self._flag(
                dq,
                f"reads {what}, not a QuantizeLinear or a constant; TensorRT accepts "
                "only float activations and Q/DQ pairs",
            )

    def _same_params(self, a, b) -> bool:
        def params(node):
            scale = self._const(node.input[1]) if len(node.input) > 1 else None
            zp = self._const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            return scale, zp, self._axis(node)

        (sa, za, xa), (sb, zb, xb) = params(a), params(b)
        if sa is None or sb is None:
            return a.input[1] == b.input[1]
        if sa.shape != sb.shape or not np.allclose(sa, sb, rtol=1e-6, atol=0):
            return False
        if sa.size > 1 and xa != xb:
            return False
        za = np.zeros_like(sa) if za is None else za.astype(np.float64)
        zb = np.zeros_like(sb) if zb is None else zb.astype(np.float64)
        return bool(np.array_equal(za, zb))


def _output_channel_axis(user, weight_name: str, rank: int) -> int | None:
    """The axis of a weight tensor TensorRT quantizes per channel for this consumer, or None."""
    inputs = list(user.input)
    if user.op_type == "Conv" and inputs[1:2] == [weight_name]:
        return 0
    if user.op_type == "ConvTranspose" and inputs[1:2] == [weight_name]:
        return 1
    if user.op_type == "Gemm" and inputs[1:2] == [weight_name]:
        trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if user.op_type == "MatMul" and inputs[1:2] == [weight_name]:
        return rank - 1
    return None
