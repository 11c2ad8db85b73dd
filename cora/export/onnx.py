"""Export CORA to one ONNX file (backbone, pre-matching, localizer, region classifier, scoring, NMS).

    model = load_model(preset="tiny", random_init=True)                 # cora.checkpoint
    export_detector(model, "tiny.onnx", source={"preset": "tiny", "random_init": True})
    export_detector(model, "coco.onnx", source=..., vocabulary=names)  # baked vocabulary
    export_text_encoder(model, "text.onnx", source=...)                # CLIP text tower (tokens -> embedding)

The command line is `cora export` (cora.cli.export; export/to_onnx.py is its script face).
Graph inputs and outputs (declared once: cora.export.graph.IO_SPECS):
    images           float32 [B, 3, H, W]  RGB in [0, 1], H and W multiples of 32 (normalised in the graph),
                                           zero-padded at the bottom / right
    image_sizes      int64   [B, 2]        (h, w) of each image's valid (un-padded) region, input pixels: the
                                           padding mask, positional encoding and box scale, as CORA.forward
    text_embeddings  float32 [K, D]        dynamic K (absent with --vocab: the embeddings are constants)
    class_prior      float32 [K]           multiplies the pre-matching probabilities (ones = none)
    boxes            float32 [B, M, 4]     xyxy, input pixels, clipped to the valid region
    scores           float32 [B, M]
    labels           int64   [B, M]        -1 in empty slots
Dynamo exporter, opset 18, the cora ops through cora.ops.onnx_export.ONNX_TRANSLATIONS. The file is
written atomically after its parity check; `<out>.json` holds the resolved config, how the weights were
obtained (`source`: enough for `cora check parity` to rebuild the same PyTorch model) and the pre/post-processing
settings. The same JSON is stored in the ONNX metadata under the key "cora".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

from cora.errors import UserError
from cora.fileio import atomic_write, write_json
from cora.preprocess import SIZE_DIVISIBILITY
# Distinct from every static size (3 channels, 2 = (h, w) of image_sizes, 4 box coordinates), so no dim gets
# specialised or unified with a static one.
EXAMPLE_BATCH, EXAMPLE_K = 5, 7
# Version of the export's metadata ("cora" in the file, `<out>.json` beside it); runtimes refuse others.
FORMAT_VERSION = 2


def sidecar_path(path: str | os.PathLike) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    return Path(f"{os.fspath(path)}.json")


def read_sidecar(path: str | os.PathLike) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side} (the export's JSON sidecar) does not exist")
    return json.loads(side.read_text())


def _dynamic_shapes(specs, static: set[str]) -> tuple[dict, ...]:
    """Per graph input, {axis: dim name} for its dynamic axes (the IO table's names, less `static`)."""
    skip = {"D"} | static
    return tuple({i: d for i, d in enumerate(s.shape) if isinstance(d, str) and d not in skip}
                 for s in specs if s.kind == "input")


def _export(module, args: tuple, specs, static: set[str], out: Path, metadata: dict, check=None) -> None:
    """Exports `module` on `args`, stores `metadata` in the file (key "cora") and beside it (`<out>.json`).

    check: optional callable(path of the new file): runs before the file takes the place of `out`, so a
    failed check leaves an existing export untouched."""
    import torch

    from cora.ops.onnx_export import ONNX_OPSET, ONNX_TRANSLATIONS

    inputs = [s.name for s in specs if s.kind == "input"]
    outputs = [s.name for s in specs if s.kind == "output"]
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            module.eval(), args, dynamo=True, opset_version=ONNX_OPSET, custom_translation_table=ONNX_TRANSLATIONS,
            input_names=inputs, output_names=outputs, dynamic_shapes=_dynamic_shapes(specs, static),
            verbose=False,
        )
    program.model.metadata_props["cora"] = json.dumps(metadata)

    def save_and_check(tmp: str) -> None:
        program.save(tmp)
        if check is not None:
            check(tmp)

    atomic_write(out, save_and_check)
    write_json(sidecar_path(out), metadata, indent=2)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's known, harmless notices (torchvision's deprecated fake-kernel API, the shared
    num_classes axis, onnxscript's constant-folding skips); real errors still raise."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape", category=UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _spec_table(specs, sizes: dict) -> list[dict]:
    return [{"name": s.name, "kind": s.kind, "dtype": s.dtype, "shape": [sizes.get(d, d) for d in s.shape],
             "doc": s.doc} for s in specs]


def export_detector(detector, out: str | os.PathLike, *, source: dict, vocabulary: list[str] | None = None,
                    image_size: tuple[int, int] | None = None, check: bool = True,
                    text_encoder: str | os.PathLike | None = None) -> dict:
    """Export `detector` (a CORA; its forward is the graph) to `out`; returns the sidecar dict (also written
    to `<out>.json` and stored in the file's metadata under "cora").

    source: how the model was obtained (`cora.checkpoint.load_model` keywords), so checks can rebuild it.
    vocabulary: class names to bake in (their text embeddings become constants; no text_embeddings input).
    image_size: (H, W) for a static-size graph (multiples of 32); None = dynamic height and width.
    check: run the parity check against PyTorch (cora.export.parity, the two-size letterboxed cases at K = 1
        and 7) before the file replaces `out`; a failure raises ParityError and leaves `out` as it was.
    text_encoder: the text-encoder export that goes with it (`export_text_encoder`), recorded relative to
        `out`'s folder so that runtimes turn class names into embeddings without being told where it is.
    """
    import torch

    from cora.config import config_to_dict
    from cora.export.graph import default_image_size, export_module, io_specs
    from cora.modeling.scoring import MAX_TOPK
    from cora.ops.onnx_export import ONNX_OPSET

    out = Path(out)
    cfg = detector.cfg
    ic = cfg.inference
    if image_size is not None:
        h, w = image_size
        if h <= 0 or w <= 0 or h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise UserError(f"--image-size must be two positive multiples of {SIZE_DIVISIBILITY} (H W), got {h} {w}")
    for key in ("max_detections", "pre_nms_topk"):
        value = getattr(ic, key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < MAX_TOPK:
            raise UserError(f"inference.{key} must be an int in [1, {MAX_TOPK}) for export (TensorRT's TopK limit), "
                            f"got {value!r}; set it with --set inference.{key}=N")
    baked = detector.encode_vocabulary(vocabulary) if vocabulary is not None else None
    module = export_module(detector, baked).eval()
    embed_dim = int(detector.backbone.embed_dim)
    specs = io_specs(baked is not None)
    h, w = image_size or default_image_size(cfg)
    k = EXAMPLE_K if baked is None else baked.shape[0]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(EXAMPLE_BATCH, 3, h, w, generator=g)
    # Valid sizes from the whole input down to about half of it (only their dtype and shape are traced).
    image_sizes = torch.tensor([[h - (h // 2 * i) // EXAMPLE_BATCH, w - (w // 2 * i) // EXAMPLE_BATCH]
                                for i in range(EXAMPLE_BATCH)], dtype=torch.int64)
    text = torch.nn.functional.normalize(torch.randn(k, embed_dim, generator=g), dim=-1)
    args = (images, image_sizes, torch.ones(k)) if baked is not None else (images, image_sizes, text, torch.ones(k))
    sizes = {"D": embed_dim, "max_detections": ic.max_detections}
    if image_size is not None:
        sizes.update(height=h, width=w)
    if baked is not None:
        sizes["num_classes"] = baked.shape[0]
    metadata = {
        "format": "onnx",
        "format_version": FORMAT_VERSION,
        "graph": "detector",
        "opset": ONNX_OPSET,
        "source": source,
        "config": config_to_dict(cfg),
        "io": _spec_table(specs, sizes),
        "embed_dim": embed_dim,
        "image_size": list(image_size) if image_size is not None else None,
        "vocabulary": list(vocabulary) if vocabulary is not None else None,
        "text_encoder": os.path.relpath(text_encoder, out.parent) if text_encoder is not None else None,
        "preprocess": {"min_size": ic.min_size, "max_size": ic.max_size,
                       "size_divisibility": SIZE_DIVISIBILITY, "pad_value": 0.0,
                       "resize": "cora.preprocess.letterbox (bilinear, antialias, align_corners=False)"},
        "postprocess": {"score_threshold": ic.score_threshold, "nms_iou": ic.nms_iou,
                        "max_detections": ic.max_detections, "pre_nms_topk": ic.pre_nms_topk},
        "torch_version": torch.__version__,
    }
    static = ({"height", "width"} if image_size is not None else set()) | ({"num_classes"} if baked is not None else set())

    def parity(path: str) -> None:
        from cora.export.parity import default_cases, parity_check

        parity_check(path, module, default_cases(metadata, ks=(1, EXAMPLE_K), batch=2))

    _export(module, args, specs, static, out, metadata, parity if check else None)
    return metadata


def export_text_encoder(detector, out: str | os.PathLike, *, source: dict, check: bool = True) -> dict:
    """Export the detector's CLIP text tower: tokens [N, 77] int64 -> unit-norm embeddings [N, D]
    (TEXT_IO_SPECS); with `check`, ONNX Runtime must match PyTorch (1e-5) before the file replaces `out`."""
    import torch

    from cora.export.graph import TEXT_IO_SPECS, TextEncoderGraph
    from cora.ops.onnx_export import ONNX_OPSET
    from cora.vocabulary import IMAGENET_TEMPLATES, TOKENIZER

    clip_model = detector.text_embedder.clip_model
    module = TextEncoderGraph(clip_model).eval()
    prompts = ["a photo of a cat.", "a dog", "traffic light"]
    tokens = detector.text_embedder.tokenizer(prompts)  # [3, 77]
    dim = int(clip_model.text_projection.shape[-1])
    metadata = {
        "format": "onnx",
        "format_version": FORMAT_VERSION,
        "graph": "text_encoder",
        "opset": ONNX_OPSET,
        "source": source,
        "io": _spec_table(TEXT_IO_SPECS, {"D": dim}),
        "embed_dim": dim,
        "context_length": int(tokens.shape[1]),
        "text_context_length": detector.cfg.text_context_length,
        "tokenizer": f"cora.vocabulary.tokenizer({detector.cfg.text_context_length}): open_clip.get_tokenizer("
                     f"{TOKENIZER!r}) (OpenAI CLIP BPE, pure Python)",
        "templates": list(IMAGENET_TEMPLATES),
        "torch_version": torch.__version__,
    }

    def parity(path: str) -> None:
        from cora.export.parity import text_encoder_parity

        text_encoder_parity(path, module, tokens)

    _export(module, (tokens,), TEXT_IO_SPECS, set(), Path(out), metadata, parity if check else None)
    return metadata
