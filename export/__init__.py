"""Exporters and checks: to_onnx.py (ONNX), to_trt.py (TensorRT engine), check.py (parity, TensorRT lint)."""
