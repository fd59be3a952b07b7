"""Transformer-safe INT8 post-training quantization of ONNX models, with an accuracy gate.

Built on ONNX Runtime's quantization tooling (`onnxruntime.quantization`). What tvc adds:

- **Safe placement.** By default (`ops="safe"`) only the inputs of the Linear layers are quantized:
  MatMul/Gemm/Conv nodes whose weight is a constant (qkv, proj, fc1, fc2, the head and the patch
  embedding). LayerNorm, Softmax, GELU (Erf), the residual Adds and the attention matmuls between
  two activations stay in float. Quantizing those is what collapses ViT accuracy; `ops="all"` does
  it anyway (ONNX Runtime's default, kept to show what it costs).
- **One Q/DQ model for every runtime.** Weights int8 symmetric per output channel, activations
  int8 symmetric per tensor, zero points 0, biases in float: the explicit-quantization form that
  TensorRT 10 and 11 build from (checked once per written variant by
  tvc.export.trt_rules in the export flow) and that ONNX Runtime's CPU
  kernels fuse. One detail makes the CPU path fast: ORT only fuses DQ -> Gemm -> (float) into
  its integer QGemm when the Gemm has no float bias, so each quantized Gemm's bias is moved into
  a separate Add (TensorRT fuses it back). Without that, ORT dequantizes the weights and runs
  the float Gemm: no speed-up.
- **Accuracy gate.** `quantize_with_gate` measures the INT8 model against the FP32 one; when the
  loss exceeds the budget it ranks layers by how much quantizing each one alone hurts, keeps the
  most sensitive ones in float until the budget holds, and fails loudly when it cannot.

Dynamic INT8 (`quantize_dynamic`) quantizes activations at run time (uint8); it needs no
calibration and is often the fastest on ORT CPU, but TensorRT cannot run it.

Modules by concern: `config` (QuantConfig), `graph` (placement and graph surgery), `calibration`
(calibration images and ONNX Runtime's static quantizer), `scoring` (output errors against FP32),
`static`, `dynamic`, `gate` (the accuracy budget and the float fallback).
"""

from tvc.export.quantize.config import QuantConfig
from tvc.export.quantize.dynamic import quantize_dynamic
from tvc.export.quantize.gate import LogitJudge, TaskJudge, quantize_with_gate
from tvc.export.quantize.graph import keep_in_float, quantizable_nodes
from tvc.export.quantize.static import quantize_static

__all__ = [
    "LogitJudge",
    "QuantConfig",
    "TaskJudge",
    "keep_in_float",
    "quantizable_nodes",
    "quantize_dynamic",
    "quantize_static",
    "quantize_with_gate",
]
