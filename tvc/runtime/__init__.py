"""The board layer: runners (ONNX Runtime, TensorRT), the backend registry, timing, device facts
and power. It imports numpy, onnxruntime and tvc's floor (artifact, errors, records,
environment) only, never torch or the packages above it, so it installs on a board
(tests/test_layering.py holds this)."""
