"""Runners for exported CORA models: `cora.runtime.onnx` (ONNX Runtime: OnnxDetector, OnnxTextEncoder) and
`cora.runtime.tensorrt` (TensorRTDetector), sharing `cora.runtime.base` (the detect API over cora.preprocess).
The runners never import cora.modeling: a service needs only the exported files.

`load_detector` opens whatever a user names as the model (a checkpoint folder, an .onnx, an .engine, a served
model's URL), so `cora detect` and `cora eval` score the very file (or server) that is deployed.
"""

from __future__ import annotations

import os

from cora.errors import UserError

# File suffix -> runtime of an exported detector.
EXPORTED_SUFFIXES = {".onnx": "ONNX Runtime", ".engine": "TensorRT"}
# URL scheme -> protocol of a served detector (`cora serve`, cora.runtime.triton.TritonDetector).
SERVED_SCHEMES = {"grpc://": "grpc", "http://": "http"}


def is_exported(checkpoint: str | os.PathLike | None) -> bool:
    """True for an exported model (.onnx / .engine) or a served one (grpc:// or http:// URL): its weights and
    settings are fixed (config overrides cannot apply)."""
    if checkpoint is None:
        return False
    name = os.fspath(checkpoint)
    return served_scheme(name) is not None or os.path.splitext(name)[1].lower() in EXPORTED_SUFFIXES


def served_scheme(name: str) -> str | None:
    """The SERVED_SCHEMES prefix `name` starts with, else None."""
    return next((s for s in SERVED_SCHEMES if name.startswith(s)), None)


def load_detector(checkpoint: str | os.PathLike | None = None, *, device: str = "cpu", text_encoder=None,
                  **model_kwargs):
    """A detector with `detect(images, vocabulary=None, text_embeddings=None, class_prior=None)` and
    `encode_vocabulary(names)`, the API of `CORA.detect`.

    checkpoint: an exported detector (.onnx: `OnnxDetector`; .engine: `TensorRTDetector`), a served one
        (grpc://HOST:PORT or http://HOST:PORT of `cora serve`: `TritonDetector`), a cora checkpoint folder, or
        None with `random_init` (`cora.checkpoint.load_model`, which takes `model_kwargs`).
    text_encoder: for an export, its text-encoder .onnx (default: the one named in its metadata).
    Raises UserError for a missing file or model arguments an export cannot use.
    """
    if not is_exported(checkpoint):
        from cora.checkpoint import load_model

        return load_model(checkpoint, device=device, **model_kwargs)
    name = os.fspath(checkpoint)
    # preset only applies without a checkpoint (as in load_model); the others would change the model
    used = sorted(k for k, v in model_kwargs.items() if k != "preset" and v not in (None, False, 0, (), []))
    if used:
        raise UserError(f"{name} is an exported model: its weights and settings are fixed, so "
                        f"{', '.join(used)} cannot apply (re-export with them instead)")
    scheme = served_scheme(name)
    if scheme is not None:
        from cora.runtime.triton import TritonDetector

        return TritonDetector(name[len(scheme):], protocol=SERVED_SCHEMES[scheme])
    suffix = os.path.splitext(name)[1].lower()
    if not os.path.isfile(checkpoint):
        raise UserError(f"{name} does not exist (an exported {suffix} model was expected)")
    if suffix == ".onnx":
        from cora.runtime.onnx import OnnxDetector

        return OnnxDetector(checkpoint, text_encoder=text_encoder)
    from cora.runtime.tensorrt import TensorRTDetector

    return TensorRTDetector(checkpoint, device=device if device != "cpu" else "cuda", text_encoder=text_encoder)
