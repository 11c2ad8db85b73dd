"""Checks of an exported CORA: parity with PyTorch, and a static TensorRT-readiness lint.

    python export/check.py parity model.onnx                    # K in 1 2 65 1203 4096, whole + letterboxed
    python export/check.py parity model.onnx --ks 1 7 --batch 2 --sizes 128 160 96 128
    python export/check.py lint model.onnx                       # exit 1 if TensorRT would reject the file

This file is the command line. The parity check (cases, the PyTorch reference, tie-aware matching of
detections, ParityError) is export/parity.py; the TensorRT 10.x readiness lint is export/lint.py. Their
docstrings say what each checks.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from export.lint import lint_tensorrt  # noqa: E402
from export.parity import (  # noqa: E402
    TOLERANCES, DetectorReference, ParityError, default_cases, format_table, parity_check,
)


# ---- command line ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export/check.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="ONNX Runtime vs PyTorch (the model is rebuilt from <onnx>.json)")
    p.add_argument("onnx", help="an exported detector .onnx (with its .json sidecar)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 65, 1203, 4096], help="vocabulary sizes (default: 1 2 65 1203 4096)")
    p.add_argument("--batch", type=int, default=2, help="images per run (default: 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, metavar="H W",
                   help="image sizes as H W pairs (default: the export's size, and a smaller one if dynamic)")
    lint = sub.add_parser("lint", help="static TensorRT 10.x readiness check")
    lint.add_argument("onnx", help="an .onnx file")
    args = parser.parse_args(argv)

    if args.command == "lint":
        findings = lint_tensorrt(args.onnx)
        for f in findings:
            print(f)
        errors = [f for f in findings if f.severity == "error"]
        print(f"{len(errors)} error(s), {sum(f.severity == 'warning' for f in findings)} warning(s)")
        return 1 if errors else 0

    import onnx

    from export.to_onnx import ExportError, load_detector, read_sidecar

    if args.sizes is not None and len(args.sizes) % 2:
        parser.error("--sizes takes H W pairs")
    try:
        meta = read_sidecar(args.onnx)
        inputs = [i.name for i in onnx.load(args.onnx, load_external_data=False).graph.input]
        if "image_sizes" not in inputs:
            raise ExportError(f"{args.onnx} has no 'image_sizes' input (inputs: {', '.join(inputs)}): it was exported "
                              "before the padding mask and differs from CORA.detect on padded images; re-export it "
                              "with export/to_onnx.py (or `cora export`)")
        detector, _ = load_detector(meta["source"])
    except (FileNotFoundError, ExportError) as e:
        print(f"check: {e}", file=sys.stderr)
        return 1
    baked = detector.encode_vocabulary(meta["vocabulary"]) if meta.get("vocabulary") else None
    reference = DetectorReference(detector, baked, **meta["postprocess"])
    sizes = list(zip(args.sizes[::2], args.sizes[1::2])) if args.sizes else None
    cases = default_cases(meta, ks=args.ks, batch=args.batch, sizes=sizes)
    try:
        rows = parity_check(args.onnx, reference, cases)
    except ParityError as e:
        print(format_table(e.rows))
        print(f"check: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"parity ok ({len(rows)} cases; tolerances {TOLERANCES})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
