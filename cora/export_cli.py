"""`cora export`: one command over the export formats, driven by the EXPORT_FORMATS table.

    format    --format  suffix   CPU  GPU  script
    ONNX      onnx      .onnx    yes  yes  export/to_onnx.py
    TensorRT  engine    .engine  no   yes  export/to_trt.py (exports the ONNX first unless --onnx is given)

    cora export --preset tiny --random-init --out tiny.onnx
    cora export --format engine --checkpoint ckpt/ --clip-weights RN50.pt --out cora.engine --fp16

The scripts under export/ stay runnable on their own; this wrapper only dispatches (heavy imports in run).
Wire it into cora/cli.py with `add_export_parser(sub)`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ExportFormat:
    name: str
    arg: str        # the --format value
    suffix: str
    cpu: bool       # can be produced on a CPU-only machine
    gpu: bool
    options: tuple  # argparse dests this format uses


_ONNX_OPTIONS = ("out", "preset", "checkpoint", "random_init", "clip_weights", "seed", "overrides", "vocab",
                 "max_detections", "score_threshold", "image_size", "dynamic_size", "text_encoder", "no_check")
_ENGINE_OPTIONS = ("onnx", "fp16", "vocab_profile", "image_profile", "batch_profile", "workspace")

EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("ONNX", "onnx", ".onnx", cpu=True, gpu=True, options=_ONNX_OPTIONS),
    ExportFormat("TensorRT", "engine", ".engine", cpu=False, gpu=True, options=_ONNX_OPTIONS + _ENGINE_OPTIONS),
)


def _format(value: str) -> ExportFormat:
    for f in EXPORT_FORMATS:
        if value == f.arg:
            return f
    choices = [f.arg for f in EXPORT_FORMATS]
    hint = difflib.get_close_matches(value, choices, n=1)
    raise argparse.ArgumentTypeError(f"unknown format {value!r}; choose from {', '.join(choices)}"
                                     + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _scripts():
    """export/to_onnx.py and export/to_trt.py as modules (the repository root holds the export/ folder)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from export import to_onnx, to_trt

    return to_onnx, to_trt


def add_export_parser(sub) -> None:
    to_onnx, to_trt = _scripts()  # argparse definitions only: both modules import nothing heavy at top level
    rows = "\n".join(f"  {f.arg:<7} {f.name:<9} {f.suffix:<8} cpu={'yes' if f.cpu else 'no'}" for f in EXPORT_FORMATS)
    p = sub.add_parser(
        "export", help="export CORA to ONNX or a TensorRT engine",
        description=f"Export formats:\n{rows}\nAn ONNX export ends in a parity check against PyTorch (--no-check skips it).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", type=_format, default=EXPORT_FORMATS[0],
                   help=f"one of {', '.join(f.arg for f in EXPORT_FORMATS)} (default: onnx)")
    to_onnx.add_arguments(p)
    p.add_argument("--onnx", default=None, help="engine only: build from this .onnx instead of exporting one first")
    to_trt.add_engine_arguments(p)
    p.set_defaults(run=run_export, _parser=p)


def run_export(args: argparse.Namespace) -> int:
    fmt: ExportFormat = args.format
    parser: argparse.ArgumentParser = args._parser
    defaults = {a.dest: a.default for a in parser._actions}
    misplaced = [d for d in _ENGINE_OPTIONS if d not in fmt.options and getattr(args, d) != defaults.get(d)]
    if misplaced:
        flags = ", ".join("--" + d.replace("_", "-") for d in misplaced)
        parser.error(f"{flags}: only for --format engine (got --format {fmt.arg})")
    to_onnx, to_trt = _scripts()
    if fmt.arg == "onnx":
        try:
            return to_onnx.run(args)
        except to_onnx.ExportError as e:
            print(f"cora export: {e}", file=sys.stderr)
            return 1

    problem = to_trt.check_profiles(args)
    if problem:
        parser.error(problem)
    engine_out = args.out
    onnx_path = args.onnx or (os.path.splitext(engine_out)[0] + ".onnx")
    missing = to_trt.tensorrt_missing(args.onnx)
    if missing is not None:  # fail before the (slow) ONNX export
        print(f"cora export: {missing}", file=sys.stderr)
        return 1
    if args.onnx is None:
        args.out = onnx_path
        try:
            to_onnx.run(args)
        except to_onnx.ExportError as e:
            print(f"cora export: {e}", file=sys.stderr)
            return 1
        args.out = engine_out
    args.onnx = onnx_path
    return to_trt.run(args)
