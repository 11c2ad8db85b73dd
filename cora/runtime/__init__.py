"""Runners for exported CORA models: `cora.runtime.onnx` (ONNX Runtime: OnnxDetector, OnnxTextEncoder) and
`cora.runtime.tensorrt` (TensorRTDetector), sharing `cora.runtime.base` (the detect API over cora.preprocess).
The runners never import cora.modeling: a service needs only the exported files.

`load_detector` opens whatever a user names as the model (a checkpoint folder, an .onnx, an .engine), so
`cora detect` and `cora eval` score the very file that is deployed.
"""

from __future__ import annotations

import os

from cora.errors import UserError

# File suffix -> runtime of an exported detector.
EXPORTED_SUFFIXES = {".onnx": "ONNX Runtime", ".engine": "TensorRT"}


def load_detector(checkpoint: str | os.PathLike | None = None, *, device: str = "cpu", text_encoder=None,
                  **model_kwargs):
    """A detector with `detect(images, vocabulary=None, text_embeddings=None, class_prior=None)` and
    `encode_vocabulary(names)`, the API of `CORA.detect`.

    checkpoint: an exported detector (.onnx: `OnnxDetector`; .engine: `TensorRTDetector`), a cora checkpoint
        folder, or None with `random_init` (`cora.checkpoint.load_model`, which takes `model_kwargs`).
    text_encoder: for an export, its text-encoder .onnx (default: the one named in its metadata).
    Raises UserError for a missing file or model arguments an export cannot use.
    """
    suffix = os.path.splitext(os.fspath(checkpoint))[1].lower() if checkpoint is not None else ""
    if suffix not in EXPORTED_SUFFIXES:
        from cora.checkpoint import load_model

        return load_model(checkpoint, device=device, **model_kwargs)
    if not os.path.isfile(checkpoint):
        raise UserError(f"{os.fspath(checkpoint)} does not exist (an exported {suffix} model was expected)")
    # preset only applies without a checkpoint (as in load_model); the others would change the model
    used = sorted(k for k, v in model_kwargs.items() if k != "preset" and v not in (None, False, 0, (), []))
    if used:
        raise UserError(f"{os.fspath(checkpoint)} is an exported model: its weights and settings are fixed, so "
                        f"{', '.join(used)} cannot apply (re-export with them instead)")
    if suffix == ".onnx":
        from cora.runtime.onnx import OnnxDetector

        return OnnxDetector(checkpoint, text_encoder=text_encoder)
    from cora.runtime.tensorrt import TensorRTDetector

    return TensorRTDetector(checkpoint, device=device if device != "cpu" else "cuda", text_encoder=text_encoder)
