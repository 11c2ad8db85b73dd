"""`cora detect`: detect objects named by a vocabulary in images; an annotated PNG and a JSON per image.

    cora detect photo.jpg --vocab "cat,dog,traffic light" --checkpoint ckpt/ --out detections/
    cora detect *.jpg --vocab-file classes.txt --preset tiny --random-init      # no weights: try the pipeline
    cora detect photo.jpg --vocab cat --checkpoint cora.onnx                     # an exported model
    cora detect photo.jpg --vocab cat --checkpoint grpc://127.0.0.1:8001         # a served one (cora serve)
"""

from __future__ import annotations

import argparse

from cora.cli import common


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect", help="detect objects named by a vocabulary in images",
        description="Runs CORA (a checkpoint, a preset with --random-init, or an exported .onnx / .engine) on "
                    "images; writes an annotated PNG and a JSON of detections per image.",
    )
    p.add_argument("images", nargs="+", help="image files (any format PIL reads; gray, RGBA and 16-bit are converted)")
    common.add_vocabulary_arguments(p)
    common.add_model_arguments(p, checkpoint_help="a cora checkpoint folder (model.safetensors + config.json) or an "
                               "exported .onnx / .engine, or a served model grpc://HOST:PORT / http://HOST:PORT (`cora serve`); import "
                               "the official release with `cora convert` "
                               "(default: none)")
    p.add_argument("--out", default="detections", help="output folder: <stem>.json and <stem>.png per image; images "
                   "from several folders keep their folder relative to the images' common folder (a/x.png, b/x.png "
                   "-> OUT/a/x.*, OUT/b/x.*), images of one folder sharing a stem keep their suffix (x_png.*, "
                   "x_jpg.*); an output that would replace an input is refused (default: ./detections)")
    p.add_argument("--score-threshold", type=common.PROBABILITY, default=0.3,
                   help="draw and save detections above this score (default: 0.3)")
    common.add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cora.io import detection_outputs, draw_detections, image_tensor, read_image, write_detections_json
    from cora.runtime import load_detector
    from cora.vocabulary import load_vocabulary

    with common.user_errors():
        common.check_output_dir(args.out, "--out")
        outputs = detection_outputs(args.out, args.images, [args.vocab_file] if args.vocab_file else [])
        names = load_vocabulary(common.vocabulary_source(args))
        images = [read_image(path) for path in args.images]  # before the model: a bad file fails fast
        model = load_detector(**common.model_source(args), device=common.resolve_device(args.device))
        text = model.encode_vocabulary(names)

    rows = list(zip(args.images, images, outputs))
    for path, image, (json_path, png_path) in tqdm(rows, desc="detect", unit="image", disable=len(images) < 2):
        (det,) = model.detect([image_tensor(image)], text_embeddings=text)
        det = {k: _cpu(v) for k, v in det.items()}
        keep = det["scores"] > args.score_threshold
        det = {k: v[keep] for k, v in det.items()}
        write_detections_json(json_path, path, det, names)
        draw_detections(png_path, image, det, names)
    print(f"wrote {len(images)} result(s) to {args.out}")
    return 0


def _cpu(value):
    """A detection field as a CPU tensor (the PyTorch model gives tensors, exported runners numpy arrays)."""
    import torch

    return torch.as_tensor(value).cpu()
