"""Export: ONNX (with parity), FP16 / INT8 ONNX variants, TensorRT engines, for every task.

flow (the one export of every task, through its adapter), onnx (torch -> ONNX, simplify,
parity), parity (output comparison), quantize/ (INT8), fp16, deformable (Deformable DETR's
sampler patch), tensorrt (engine build), trt_rules (TensorRT's Q/DQ rules, without TensorRT).
"""
