"""Runners for exported CORA models: `cora.runtime.onnx` (ONNX Runtime: OnnxDetector, OnnxTextEncoder) and
`cora.runtime.tensorrt` (TensorRTDetector), sharing `cora.runtime.base` (the detect API over cora.preprocess). Nothing here imports
cora.modeling: a service needs only the exported files."""
