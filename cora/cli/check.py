"""`cora check`: checks of an exported CORA: parity with PyTorch, and a static TensorRT-readiness lint.

    cora check parity model.onnx                    # K in 1 80 1203 4096, whole + letterboxed batches
    cora check parity model.onnx --ks 1 7 --batch 2 --sizes 128 160 96 128
    cora check parity repo/cora/1/detector.onnx --served 127.0.0.1:8001     # and == the served model (Triton)
    cora check lint model.onnx                      # exit 1 if TensorRT would reject the file

export/check.py is the same command as a script. The checks are cora.export.parity (cases, slot-by-slot
comparison, ParityError) and cora.export.lint; their docstrings say what each checks.
"""

from __future__ import annotations

import argparse
import os

from cora.cli import common
from cora.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="check", required=True, metavar="check")
    p = sub.add_parser("parity", help="ONNX Runtime vs PyTorch (the model is rebuilt from <onnx>.json's source)",
                       description="Runs the export and the PyTorch model it was made from on the same cases and "
                                   "compares the detections slot by slot (exit 1 on any difference).")
    p.add_argument("onnx", help="an exported detector .onnx (with its .json sidecar)")
    p.add_argument("--ks", type=common.POSITIVE_INT, nargs="+", default=[1, 80, 1203, 4096],
                   help="vocabulary sizes (default: 1 80 1203 4096)")
    p.add_argument("--batch", type=common.POSITIVE_INT, default=2, help="images per run (default: 2)")
    p.add_argument("--sizes", type=common.POSITIVE_INT, nargs="+", default=None, metavar="H W",
                   help="image sizes as H W pairs (default: the export's size, and a smaller one if dynamic)")
    p.add_argument("--served", default=None, metavar="HOST:PORT",
                   help="also compare the model served there (`cora serve`) with ONNX Runtime on the same file, "
                        "image by image through detect() (default: no)")
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                   help="the --served endpoint's protocol (default: grpc)")
    lint = sub.add_parser("lint", help="static TensorRT 10.x readiness check",
                          description="Lists the ops and attributes of an .onnx file that TensorRT's ONNX parser "
                                      "would reject (exit 1 if any).")
    lint.add_argument("onnx", help="an .onnx file")


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="check an export: parity with PyTorch, TensorRT readiness",
                       description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.check == "lint":
        from cora.export.lint import lint_tensorrt

        findings = lint_tensorrt(read_onnx(args.onnx))
        for f in findings:
            print(f)
        errors = [f for f in findings if f.severity == "error"]
        print(f"{len(errors)} error(s), {sum(f.severity == 'warning' for f in findings)} warning(s)")
        return 1 if errors else 0

    from cora.checkpoint import load_model
    from cora.export.graph import export_module
    from cora.export.parity import TOLERANCES, ParityError, default_cases, format_table, parity_check
    from cora.runtime.base import read_metadata

    if args.sizes is not None and len(args.sizes) % 2:
        raise UserError(f"--sizes takes H W pairs, got {len(args.sizes)} numbers")
    meta = read_metadata(args.onnx)
    detector = load_model(**meta["source"])
    baked = detector.encode_vocabulary(meta["vocabulary"]) if meta.get("vocabulary") else None
    sizes = list(zip(args.sizes[::2], args.sizes[1::2])) if args.sizes else None
    cases = default_cases(meta, ks=args.ks, batch=args.batch, sizes=sizes)
    try:
        rows = parity_check(args.onnx, export_module(detector, baked), cases)
    except ParityError as e:
        print(format_table(e.rows))
        raise
    print(format_table(rows))
    print(f"parity ok ({len(rows)} cases, slot by slot; tolerances {TOLERANCES})")
    if args.served:
        from cora.serve.parity import served_parity

        try:
            rows = served_parity(args.onnx, args.served, cases, protocol=args.protocol)
        except ParityError as e:
            print(format_table(e.rows))
            raise
        print(format_table(rows))
        print(f"served parity ok: {args.served} ({args.protocol}) == ONNX Runtime, image by image through detect()")
    return 0


def read_onnx(path: str):
    """The ModelProto of an .onnx file (external data not loaded); UserError naming the file if it is
    missing or not an ONNX model."""
    import onnx
    from google.protobuf.message import DecodeError

    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist or is not a file (an .onnx file was expected)")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not an ONNX model ({common.first_line(e)})") from None
    if not model.graph.node:  # protobuf parses an empty (or lucky) file as an empty model
        raise UserError(f"{path} is not an ONNX model (it holds no graph)")
    return model


def main(argv: list[str] | None = None) -> int:
    """export/check.py."""
    import sys

    parser = argparse.ArgumentParser(prog="export/check.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"check: {e}", file=sys.stderr)
        return 1
