"""Export CORA to one ONNX file (backbone, pre-matching, localizer, region classifier, scoring, NMS).

    python export/to_onnx.py --preset tiny --random-init --out model.onnx
    python export/to_onnx.py --checkpoint ckpt/ --clip-weights RN50.pt --out cora.onnx --image-size 800 1344
    python export/to_onnx.py --preset tiny --random-init --out coco.onnx --vocab coco_names.txt   # baked vocabulary
    python export/to_onnx.py ... --text-encoder text.onnx      # also the CLIP text encoder (tokens -> embedding)

Graph inputs and outputs (declared once: cora.modeling.exportable.IO_SPECS):
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
written atomically; `<out>.json` holds the resolved config, how the weights were obtained (enough for
export/check.py to rebuild the same PyTorch model) and the pre/post-processing settings. The same JSON is
stored in the ONNX metadata under the key "cora". Every export ends in a parity check (--no-check skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZE_DIVISIBILITY = 32
# Distinct from every static size (3 channels, 2 = (h, w) of image_sizes, 4 box coordinates), so no dim gets
# specialised or unified with a static one.
EXAMPLE_BATCH, EXAMPLE_K = 5, 7


class ExportError(Exception):
    """A failure worth one line to the user (bad flag value, missing weights)."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    return Path(f"{os.fspath(path)}.json")


def read_sidecar(path: str | os.PathLike) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side} (the export's JSON sidecar) does not exist")
    return json.loads(side.read_text())


def load_detector(source: dict):
    """Rebuild the PyTorch detector an export was made from.

    source: {"preset": str, "overrides": [str], "checkpoint": dir | None, "clip_weights": file | None,
             "random_init": bool, "seed": int}. With random_init the weights are drawn after
             `torch.manual_seed(seed)`, so the same source gives the same weights.
    Returns (CORA in eval mode, resolved CORAConfig).
    """
    import torch

    from cora.config import apply_overrides, get_preset
    from cora.engine.checkpoint import load_checkpoint, load_into
    from cora.modeling.detector import CORA

    if source.get("checkpoint") is None and not source.get("random_init"):
        raise ExportError("no CORA weights: pass --checkpoint DIR, or --random-init for random weights")
    try:
        if source.get("checkpoint") is not None:
            state, cfg = load_checkpoint(source["checkpoint"])
        else:
            state, cfg = None, get_preset(source.get("preset") or "rn50_coco")
        cfg = apply_overrides(cfg, list(source.get("overrides") or []))
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ExportError(str(e)) from e
    torch.manual_seed(int(source.get("seed", 0)))
    try:
        model = CORA.from_config(cfg, clip_weights=source.get("clip_weights"), random_init=bool(source.get("random_init")))
    except (RuntimeError, OSError) as e:
        raise ExportError(f"could not load the CLIP weights of {cfg.backbone.clip_model} ({e}); without the model "
                          "hub, pass --clip-weights PATH to a local open_clip checkpoint") from e
    if state is not None:
        load_into(model, state)
    return model.eval(), cfg


def default_image_size(cfg) -> tuple[int, int]:
    """The example size when none is given: the resize target rounded up to 32, wider than high."""
    side = -(-cfg.inference.min_size // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    return side, side + SIZE_DIVISIBILITY


def _dynamic_shapes(specs, static: set[str]) -> tuple[dict, ...]:
    """Per graph input, {axis: dim name} for its dynamic axes (the IO table's names, less `static`)."""
    skip = {"D"} | static
    return tuple({i: d for i, d in enumerate(s.shape) if isinstance(d, str) and d not in skip}
                 for s in specs if s.kind == "input")


def save_atomic(program, out: Path) -> None:
    """ONNXProgram.save to a temporary file beside `out`, then os.replace: never a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        program.save(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _export(module, args: tuple, specs, static: set[str], out: Path, metadata: dict):
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
    save_atomic(program, out)
    write_json_atomic(sidecar_path(out), metadata)


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


def export_detector(detector, cfg, out: str | os.PathLike, *, source: dict, vocabulary: list[str] | None = None,
                    image_size: tuple[int, int] | None = None, max_detections: int | None = None,
                    score_threshold: float | None = None) -> dict:
    """Export `detector` (a CORA) to `out`; returns the sidecar dict (also written to `<out>.json`).

    vocabulary: class names to bake in (their text embeddings become constants; no text_embeddings input).
    image_size: (H, W) for a static-size graph (multiples of 32); None = dynamic height and width.
    """
    import torch

    from cora.config import config_to_dict
    from cora.modeling.exportable import ExportableCORA, io_specs
    from cora.ops.onnx_export import ONNX_OPSET

    out = Path(out)
    if image_size is not None:
        h, w = image_size
        if h <= 0 or w <= 0 or h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ExportError(f"--image-size must be two positive multiples of {SIZE_DIVISIBILITY} (H W), "
                              f"got {h} {w}")
    baked = detector.encode_vocabulary(vocabulary) if vocabulary is not None else None
    try:
        module = ExportableCORA.from_detector(detector, baked, max_detections=max_detections,
                                              score_threshold=score_threshold).eval()
    except ValueError as e:
        raise ExportError(str(e)) from e
    specs = io_specs(baked is not None)
    h, w = image_size or default_image_size(cfg)
    k = EXAMPLE_K if baked is None else baked.shape[0]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(EXAMPLE_BATCH, 3, h, w, generator=g)
    # Valid sizes from the whole input down to about half of it (only their dtype and shape are traced).
    image_sizes = torch.tensor([[h - (h // 2 * i) // EXAMPLE_BATCH, w - (w // 2 * i) // EXAMPLE_BATCH]
                                for i in range(EXAMPLE_BATCH)], dtype=torch.int64)
    text = torch.nn.functional.normalize(torch.randn(k, module.embed_dim, generator=g), dim=-1)
    args = (images, image_sizes, torch.ones(k)) if baked is not None else (images, image_sizes, text, torch.ones(k))
    sizes = {"D": module.embed_dim, "max_detections": module.max_detections}
    if image_size is not None:
        sizes.update(height=h, width=w)
    if baked is not None:
        sizes["num_classes"] = baked.shape[0]
    metadata = {
        "format": "onnx",
        "graph": "detector",
        "opset": ONNX_OPSET,
        "source": source,
        "config": config_to_dict(cfg),
        "io": _spec_table(specs, sizes),
        "embed_dim": module.embed_dim,
        "image_size": list(image_size) if image_size is not None else None,
        "vocabulary": list(vocabulary) if vocabulary is not None else None,
        "preprocess": {"min_size": cfg.inference.min_size, "max_size": cfg.inference.max_size,
                       "size_divisibility": SIZE_DIVISIBILITY, "pad_value": 0.0,
                       "resize": "bilinear, antialias, align_corners=False (torch.nn.functional.interpolate)"},
        "postprocess": {"score_threshold": module.score_threshold, "nms_iou": module.nms_iou,
                        "max_detections": module.max_detections, "pre_nms_topk": module.pre_nms_topk},
        "torch_version": torch.__version__,
    }
    static = ({"height", "width"} if image_size is not None else set()) | ({"num_classes"} if baked is not None else set())
    _export(module, args, specs, static, out, metadata)
    return metadata


def export_text_encoder(clip_model, out: str | os.PathLike, *, source: dict) -> dict:
    """Export the CLIP text tower: tokens [N, 77] int64 -> unit-norm embeddings [N, D] (TEXT_IO_SPECS)."""
    import open_clip
    import torch

    from cora.modeling.exportable import TEXT_IO_SPECS, ExportableTextEncoder
    from cora.modeling.text import IMAGENET_TEMPLATES
    from cora.ops.onnx_export import ONNX_OPSET

    out = Path(out)
    module = ExportableTextEncoder(clip_model).eval()
    tokens = open_clip.get_tokenizer("RN50")(["a photo of a cat.", "a dog", "traffic light"])  # [3, 77]
    dim = int(clip_model.text_projection.shape[-1])
    metadata = {
        "format": "onnx",
        "graph": "text_encoder",
        "opset": ONNX_OPSET,
        "source": source,
        "io": _spec_table(TEXT_IO_SPECS, {"D": dim}),
        "embed_dim": dim,
        "context_length": int(tokens.shape[1]),
        "tokenizer": "open_clip.get_tokenizer('RN50') (OpenAI CLIP BPE, pure Python)",
        "templates": list(IMAGENET_TEMPLATES),
        "torch_version": torch.__version__,
    }
    _export(module, (tokens,), TEXT_IO_SPECS, set(), out, metadata)
    return metadata


# ---- command line -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output file: .onnx (or .engine for cora export --format engine); written atomically, sidecar <out>.json")
    p.add_argument("--preset", default="rn50_coco", help="model preset (default: rn50_coco; see cora.config.PRESETS)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", default=None, help="a cora checkpoint folder (model.safetensors + config.json)")
    weights.add_argument("--random-init", action="store_true", help="random weights (drawn after --seed): try the pipeline")
    p.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint for the CLIP backbone "
                   "(default: the preset's open_clip tag, which needs the model hub)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. inference.nms_iou=0.6 (repeatable; default: none)")
    p.add_argument("--vocab", default=None, help="bake this vocabulary in: comma-separated names or a .txt / COCO-LVIS "
                   ".json file (default: none, text_embeddings is a graph input)")
    p.add_argument("--max-detections", type=int, default=None, help="M, detections per image (default: the config's)")
    p.add_argument("--score-threshold", type=float, default=None, help="keep scores above this (default: the config's)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                      help="static input size (multiples of 32; default: dynamic)")
    size.add_argument("--dynamic-size", action="store_true", help="dynamic height and width (the default)")
    p.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="also export the CLIP text encoder (tokens [N, 77] -> embeddings [N, D]) to PATH (default: no)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch (default: check)")


def run(args: argparse.Namespace) -> int:
    import time

    from cora.modeling.text import load_vocabulary

    source = {"preset": args.preset if args.checkpoint is None else None, "overrides": list(args.overrides),
              "checkpoint": args.checkpoint, "clip_weights": args.clip_weights,
              "random_init": bool(args.random_init), "seed": int(args.seed)}
    try:
        vocabulary = load_vocabulary(args.vocab) if args.vocab is not None else None
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise ExportError(str(e)) from e
    detector, cfg = load_detector(source)
    start = time.perf_counter()
    meta = export_detector(detector, cfg, args.out, source=source, vocabulary=vocabulary,
                           image_size=tuple(args.image_size) if args.image_size else None,
                           max_detections=args.max_detections, score_threshold=args.score_threshold)
    print(f"wrote {args.out} and {sidecar_path(args.out)} ({time.perf_counter() - start:.1f} s)")
    if args.text_encoder is not None:
        export_text_encoder(detector._clip_model[0], args.text_encoder, source=source)
        print(f"wrote {args.text_encoder} and {sidecar_path(args.text_encoder)}")
    if not args.no_check:
        from export.parity import DetectorReference, ParityError, default_cases, format_table, parity_check

        reference = DetectorReference(detector, detector.encode_vocabulary(vocabulary) if vocabulary else None,
                                      **meta["postprocess"])
        cases = default_cases(meta, ks=(1, EXAMPLE_K), batch=2)
        try:
            rows = parity_check(args.out, reference, cases)
        except ParityError as e:
            print(format_table(e.rows))
            raise ExportError(str(e)) from e
        print(format_table(rows))
    from export.lint import lint_tensorrt

    findings = lint_tensorrt(args.out)
    for f in findings:
        if f.severity != "info":
            print(f)
    print(f"TensorRT lint: {sum(f.severity == 'error' for f in findings)} error(s), "
          f"{sum(f.severity == 'warning' for f in findings)} warning(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export/to_onnx.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ExportError as e:
        print(f"to_onnx: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
