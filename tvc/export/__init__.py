"""Export: ONNX (with parity), FP16 / INT8 ONNX variants, TensorRT engines."""
