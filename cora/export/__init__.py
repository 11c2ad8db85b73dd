"""Exporters and checks: to_onnx.py (ONNX), to_trt.py (TensorRT engine), check.py (the checks' command line),
parity.py (ONNX Runtime against PyTorch), lint.py (TensorRT readiness)."""
