"""A Triton Inference Server model repository for the exported detector and text encoder.

    write_repository("repo/", "cora.onnx", "text.onnx")                # from exported files
    export_repository(model, "repo/", source={...})                    # export both first (cora.export.onnx)

The command line is `cora export --format triton --out repo/`; `cora serve repo/` runs it. Layout:

    repo/README.md
    repo/cora/config.pbtxt            the detector (Python backend, dynamic batching over images;
    repo/cora/1/model.py                 cora.serve.detector_model), inputs and outputs in its docstring
    repo/cora/1/detector.onnx(.json)     the export (or detector.engine for a TensorRT engine)
    repo/cora_text/config.pbtxt       class names -> embeddings with a bounded cache (cora.serve.text_model)
    repo/cora_text/1/model.py
    repo/cora_text/1/text.onnx(.json)

The detector's inputs are ragged (`allow_ragged_batch`): requests with different image sizes and different
vocabularies share one server batch, and the model groups the images by vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

from cora.errors import UserError
from cora.fileio import write_json

DETECTOR_MODEL, TEXT_MODEL = "cora", "cora_text"
# Microseconds the dynamic batcher waits for more requests once one is queued.
DEFAULT_QUEUE_DELAY_US = 2000
DEFAULT_MAX_BATCH = 16
DEFAULT_CACHE_NAMES = 16384
# Relative to the detector's version folder: the text encoder its metadata names (cora.runtime.onnx).
TEXT_ENCODER_FROM_DETECTOR = f"../../{TEXT_MODEL}/1/text.onnx"


@dataclass(frozen=True)
class Limits:
    """What one request to the served detector may send (config.pbtxt parameters; cora.serve.requests)."""

    max_image_bytes: int = 32 << 20
    max_image_side: int = 4096
    # TensorRT's TopK bound (3840 pairs) is per image after scoring; 4096 classes is the engine's vocabulary
    # profile maximum (`cora export --format engine --vocab-profile`).
    max_classes: int = 4096

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> "Limits":
        """From config.pbtxt `parameters` (string values); keys not given keep their defaults."""
        return cls(**{f.name: int(parameters[f.name]) for f in fields(cls) if f.name in parameters})


MODEL_PY = '''"""Triton Python-backend model: the code is {module} (installed with cora)."""
from {module} import TritonPythonModel  # noqa: F401
'''

DETECTOR_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "image" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "image_float" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] optional: true allow_ragged_batch: true }},
  {{ name: "class_names" data_type: TYPE_STRING dims: [ -1 ] optional: true allow_ragged_batch: true }},
  {{ name: "text_embeddings" data_type: TYPE_FP32 dims: [ -1, {embed_dim} ] optional: true allow_ragged_batch: true }},
  {{ name: "class_prior" data_type: TYPE_FP32 dims: [ -1 ] optional: true allow_ragged_batch: true }}
]
output [
  {{ name: "boxes" data_type: TYPE_FP32 dims: [ -1, 4 ] }},
  {{ name: "scores" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "labels" data_type: TYPE_INT64 dims: [ -1 ] }},
  {{ name: "label_names" data_type: TYPE_STRING dims: [ -1 ] }}
]
{batching}instance_group [ {{ kind: {kind} count: 1 }} ]
parameters [
  {{ key: "detector_file" value: {{ string_value: "{detector_file}" }} }},
  {{ key: "text_model" value: {{ string_value: "{text_model}" }} }},
  {{ key: "cache_names" value: {{ string_value: "{cache_names}" }} }},
  {{ key: "max_image_bytes" value: {{ string_value: "{max_image_bytes}" }} }},
  {{ key: "max_image_side" value: {{ string_value: "{max_image_side}" }} }},
  {{ key: "max_classes" value: {{ string_value: "{max_classes}" }} }}
]
"""

TEXT_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "class_names" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "text_embeddings" data_type: TYPE_FP32 dims: [ -1, {embed_dim} ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters [
  {{ key: "text_encoder_file" value: {{ string_value: "text.onnx" }} }},
  {{ key: "cache_names" value: {{ string_value: "{cache_names}" }} }},
  {{ key: "max_classes" value: {{ string_value: "{max_classes}" }} }}
]
"""

README = """# CORA model repository (Triton Inference Server)

Written by `cora export --format triton`; run it with `cora serve {{this folder}}`.

- `{detector}`: send one image per row (`image`: encoded JPEG / PNG bytes [n, 1], or `image_float`: FP32
  [n, 3, H, W] RGB in [0, 1]) and its vocabulary (`class_names` BYTES [n, K], or `text_embeddings` FP32
  [n, K, {embed_dim}]), optionally `class_prior` FP32 [n, K]. Get `boxes` [n, m, 4] (xyxy, original pixels),
  `scores`, `labels` (-1 = padding) and `label_names`. Limits: {max_image_bytes} bytes per encoded image,
  {max_image_side} pixels a side, {max_classes} classes.
- `{text}`: `class_names` BYTES [K] -> `text_embeddings` FP32 [K, {embed_dim}], cached ({cache_names} names).

Both models run on Triton's Python backend with ONNX Runtime inside (`cora` must be installed in the
Python environment of the backend, e.g. `pip install` in the NGC container nvcr.io/nvidia/tritonserver:
<yy.mm>-py3; the folder itself runs unchanged). The container's native backends can run the graph itself as
a model of its own: `backend: "onnxruntime"` with `1/model.onnx` (this folder's `{detector}/1/detector.onnx`),
or `platform: "tensorrt_plan"` with `1/model.plan` from `cora export --format engine`; `max_batch_size: 0`
(K is shared by a batch), inputs `images` FP32 [-1, 3, -1, -1], `image_sizes` INT64 [-1, 2],
`text_embeddings` FP32 [-1, {embed_dim}], `class_prior` FP32 [-1], outputs `boxes` FP32 [-1, -1, 4], `scores`
FP32 [-1, -1], `labels` INT64 [-1, -1]. Its clients then letterbox themselves (cora.preprocess.letterbox)
and map boxes back (cora.preprocess.to_original). That configuration has not been run: no Triton with those
backends was available where this was written.
"""


def _copy_export(src: Path, dst: Path, meta_update: dict | None = None) -> dict:
    """Copies an export and its sidecar `<src>.json` (updated with `meta_update`); returns the sidecar."""
    side = Path(f"{src}.json")
    if not src.is_file() or not side.is_file():
        raise UserError(f"{src} (with {side.name} beside it) does not exist: export it with `cora export`")
    try:
        meta = json.loads(side.read_text())
    except ValueError:
        raise UserError(f"{side} is not JSON (an export's sidecar): export {src.name} again") from None
    shutil.copyfile(src, dst)
    meta.update(meta_update or {})
    write_json(f"{dst}.json", meta, indent=1)
    return meta


def check_repository_target(out: str | os.PathLike) -> None:
    """Refuses an `out` that exists and is not a repository written by `write_repository` (which replaces
    only its own kind): called before any export work."""
    out = Path(out)
    if out.exists() and not (out / DETECTOR_MODEL / "config.pbtxt").is_file():
        raise UserError(f"{out} exists and is not a cora model repository: choose a new folder")


def write_repository(out: str | os.PathLike, detector: str | os.PathLike, text_encoder: str | os.PathLike, *,
                     dynamic_batching: bool = True, max_batch_size: int = DEFAULT_MAX_BATCH,
                     queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, cache_names: int = DEFAULT_CACHE_NAMES,
                     limits: Limits = Limits(), text_templates: list[str] | None = None) -> Path:
    """Writes the model repository at `out` from an exported detector (.onnx, or .engine) and its text
    encoder (.onnx). The folder is built beside `out` and replaces it only when complete; an existing
    `out` must be a repository written by this function. limits: what one request may send.
    text_templates: the prompt templates of the text model (default: the text encoder export's)."""
    out, detector, text_encoder = Path(out), Path(detector), Path(text_encoder)
    check_repository_target(out)
    if detector.suffix not in (".onnx", ".engine"):
        raise UserError(f"the detector must be an exported .onnx or .engine, got {detector}")
    if max_batch_size < 1 or queue_delay_us < 0 or cache_names < 1:
        raise UserError(f"max_batch_size and cache_names must be >= 1, queue_delay_us >= 0, got {max_batch_size}, "
                        f"{cache_names}, {queue_delay_us}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for model in (DETECTOR_MODEL, TEXT_MODEL):
            (tmp / model / "1").mkdir(parents=True)
        detector_file = f"detector{detector.suffix}"
        meta = _copy_export(detector, tmp / DETECTOR_MODEL / "1" / detector_file,
                            {"text_encoder": TEXT_ENCODER_FROM_DETECTOR})
        if meta.get("vocabulary") is not None:
            raise UserError(f"{detector} has a baked vocabulary; serving takes the vocabulary per request: "
                            "export without --vocab")
        if text_templates is not None and (not text_templates or any(t.count("{}") != 1 for t in text_templates)):
            raise UserError(f"text_templates must be a non-empty list of strings with one '{{}}' each, "
                            f"got {text_templates!r}")
        text_meta = _copy_export(text_encoder, tmp / TEXT_MODEL / "1" / "text.onnx",
                                 {"templates": list(text_templates)} if text_templates is not None else None)
        embed_dim = int(meta["embed_dim"])
        if int(text_meta.get("embed_dim", -1)) != embed_dim:
            raise UserError(f"{text_encoder} gives {text_meta.get('embed_dim')}-dim embeddings, the detector "
                            f"{detector} takes {embed_dim}: export both from the same model")
        values = dict(embed_dim=embed_dim, cache_names=cache_names, detector=DETECTOR_MODEL, text=TEXT_MODEL,
                      **{f.name: getattr(limits, f.name) for f in fields(Limits)})
        batching = (f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
                    if dynamic_batching else "")
        (tmp / DETECTOR_MODEL / "config.pbtxt").write_text(DETECTOR_CONFIG.format(
            name=DETECTOR_MODEL, max_batch=max_batch_size, batching=batching, detector_file=detector_file,
            kind="KIND_GPU" if detector.suffix == ".engine" else "KIND_CPU", text_model=TEXT_MODEL, **values))
        (tmp / TEXT_MODEL / "config.pbtxt").write_text(TEXT_CONFIG.format(name=TEXT_MODEL, **values))
        (tmp / DETECTOR_MODEL / "1" / "model.py").write_text(MODEL_PY.format(module="cora.serve.detector_model"))
        (tmp / TEXT_MODEL / "1" / "model.py").write_text(MODEL_PY.format(module="cora.serve.text_model"))
        (tmp / "README.md").write_text(README.format(**values))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "repo")
            try:
                tmp.rename(out)
            except OSError:
                (old / "repo").rename(out)  # the previous repository back in place
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def export_repository(model, out: str | os.PathLike, *, source: dict, check: bool = True,
                      image_size: tuple[int, int] | None = None, **options) -> Path:
    """Exports `model` (a CORA) to ONNX (detector + text encoder, cora.export.onnx, parity-checked unless
    `check` is False; image_size: a static (H, W), default dynamic) and writes the model repository at `out`
    (`write_repository` options)."""
    from cora.export.onnx import export_detector, export_text_encoder

    with tempfile.TemporaryDirectory() as tmp:
        detector, text = Path(tmp) / "detector.onnx", Path(tmp) / "text.onnx"
        export_text_encoder(model, text, source=source, check=check)
        export_detector(model, detector, source=source, check=check, text_encoder=text, image_size=image_size)
        return write_repository(out, detector, text, **options)
