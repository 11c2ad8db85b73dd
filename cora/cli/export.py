"""`cora export`: one command over the export formats, driven by the EXPORT_FORMATS table.

    format    --format  suffix   CPU  GPU
    ONNX      onnx      .onnx    yes  yes
    TensorRT  engine    .engine  no   yes  (exports the ONNX first unless --onnx is given)
    Triton    triton    folder   yes  yes  (a model repository for `cora serve`: detector + text encoder)

    cora export --preset tiny --random-init --out tiny.onnx
    cora export --format engine --checkpoint ckpt/ --clip-weights RN50.pt --out cora.engine --fp16
    cora export --format triton --preset tiny --random-init --out repo/

The scripts export/to_onnx.py and export/to_trt.py are this command with a fixed format (`onnx_main`,
`trt_main`). The work is cora.export (graph, onnx, tensorrt, parity, lint); this module only parses and
dispatches, with heavy imports inside the functions.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass

from cora.cli import common
from cora.errors import UserError


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
# The vocabulary comes with each request and the repository holds its own text encoder.
_TRITON_OPTIONS = tuple(o for o in _ONNX_OPTIONS if o not in ("vocab", "text_encoder"))

EXPORT_FORMATS: tuple[ExportFormat, ...] = (
    ExportFormat("ONNX", "onnx", ".onnx", cpu=True, gpu=True, options=_ONNX_OPTIONS),
    ExportFormat("TensorRT", "engine", ".engine", cpu=False, gpu=True, options=_ONNX_OPTIONS + _ENGINE_OPTIONS),
    ExportFormat("Triton", "triton", "", cpu=True, gpu=True, options=_TRITON_OPTIONS),
)


def _format(value: str) -> ExportFormat:
    for f in EXPORT_FORMATS:
        if value == f.arg:
            return f
    choices = [f.arg for f in EXPORT_FORMATS]
    hint = difflib.get_close_matches(value, choices, n=1)
    raise argparse.ArgumentTypeError(f"unknown format {value!r}; choose from {', '.join(choices)}"
                                     + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def add_onnx_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output file: .onnx (or .engine for --format engine; a folder for "
                   "--format triton); written atomically, sidecar <out>.json")
    common.add_model_arguments(p)
    p.add_argument("--vocab", default=None, help="bake this vocabulary in: comma-separated names or a .txt / COCO-LVIS "
                   ".json file (default: none, text_embeddings is a graph input)")
    p.add_argument("--max-detections", type=common.POSITIVE_INT, default=None,
                   help="M, detections per image (default: the config's "
                   "inference.max_detections)")
    p.add_argument("--score-threshold", type=common.PROBABILITY, default=None,
                   help="keep scores above this (default: the "
                   "config's inference.score_threshold)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--image-size", type=common.POSITIVE_INT, nargs=2, metavar=("H", "W"), default=None,
                      help="static input size (multiples of 32; default: dynamic)")
    size.add_argument("--dynamic-size", action="store_true", help="dynamic height and width (the default)")
    p.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="also export the CLIP text encoder (tokens [N, 77] -> embeddings [N, D]) to PATH (default: no)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch (default: check)")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fp16", action="store_true", help="allow fp16 kernels (softmax, normalisation, attention-pool "
                   "logits, TopK and NMS stay fp32; default: fp32 only)")
    p.add_argument("--vocab-profile", type=common.POSITIVE_INT, nargs=3, default=[1, 80, 4096],
                   metavar=("MIN", "OPT", "MAX"),
                   help="vocabulary sizes K of the optimisation profile (default: 1 80 4096)")
    p.add_argument("--image-profile", type=common.POSITIVE_INT, nargs=6, default=None,
                   metavar=("MIN_H", "MIN_W", "OPT_H", "OPT_W", "MAX_H", "MAX_W"),
                   help="image sizes of the profile, multiples of 32 (default: from the export's resize sizes)")
    p.add_argument("--batch-profile", type=common.POSITIVE_INT, nargs=3, default=[1, 1, 4],
                   metavar=("MIN", "OPT", "MAX"),
                   help="batch sizes of the profile (default: 1 1 4)")
    p.add_argument("--workspace", type=common.POSITIVE, default=4.0, help="builder workspace in GiB (default: 4)")


def check_profiles(args) -> str | None:
    """A usage problem with the engine's profile flags, or None."""
    for flag, values in (("--vocab-profile", args.vocab_profile), ("--batch-profile", args.batch_profile)):
        lo, opt, hi = values
        if not 1 <= lo <= opt <= hi:
            return f"{flag} needs 1 <= MIN <= OPT <= MAX, got {lo} {opt} {hi}"
    if args.image_profile is not None:
        v = args.image_profile
        if any(x <= 0 or x % 32 for x in v) or not (v[0] <= v[2] <= v[4] and v[1] <= v[3] <= v[5]):
            return f"--image-profile needs multiples of 32 with MIN <= OPT <= MAX per side, got {' '.join(map(str, v))}"
    if args.workspace <= 0:
        return f"--workspace must be positive (GiB), got {args.workspace}"
    return None


def add_parser(sub) -> None:
    rows = "\n".join(f"  {f.arg:<7} {f.name:<9} {f.suffix:<8} cpu={'yes' if f.cpu else 'no'}" for f in EXPORT_FORMATS)
    p = sub.add_parser(
        "export", help="export CORA to ONNX, a TensorRT engine or a Triton model repository",
        description=f"Export formats:\n{rows}\nAn ONNX export ends in a parity check against PyTorch (--no-check "
                    "skips it); the file replaces an existing one only after it passed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", type=_format, default=EXPORT_FORMATS[0],
                   help=f"one of {', '.join(f.arg for f in EXPORT_FORMATS)} (default: onnx)")
    add_onnx_arguments(p)
    p.add_argument("--onnx", default=None, help="engine only: build from this .onnx instead of exporting one first")
    add_engine_arguments(p)
    p.set_defaults(run=run, _parser=p)


def check_outputs(args: argparse.Namespace) -> None:
    """Before any (slow) work: --out and --text-encoder (and their .json sidecars) are file paths, distinct,
    and none of them is an input file."""
    flags = [("--out", args.out), ("--text-encoder", getattr(args, "text_encoder", None))]
    outputs = [(flag, p) for flag, path in flags if path is not None for p in (path, f"{path}.json")]
    for flag, path in outputs:
        common.check_output_file(path, flag)
    inputs = [getattr(args, name, None) for name in ("onnx", "checkpoint", "clip_weights", "vocab")]
    inputs = {os.path.abspath(p) for p in inputs if p is not None and os.path.isfile(p)}
    seen = set()
    for flag, path in outputs:
        full = os.path.abspath(path)
        if full in inputs:
            raise UserError(f"{flag} {args.out if flag == '--out' else args.text_encoder}: {path} would replace an "
                            "input file; choose another path")
        if full in seen:
            raise UserError(f"{flag} {path} names the same file as another output; choose another path")
        seen.add(full)


def export_onnx(args: argparse.Namespace) -> None:
    """Exports the detector (and the text encoder with --text-encoder), checks parity, lints for TensorRT."""
    import time

    from cora.checkpoint import load_model
    from cora.export.lint import lint_tensorrt
    from cora.export.onnx import export_detector, export_text_encoder, sidecar_path
    from cora.vocabulary import load_vocabulary

    overrides = []  # the flags' values first: a --set of the same key wins
    if args.max_detections is not None:
        overrides.append(f"inference.max_detections={args.max_detections}")
    if args.score_threshold is not None:
        overrides.append(f"inference.score_threshold={args.score_threshold}")
    source = common.model_source(args, overrides)
    with common.user_errors():
        check_outputs(args)
        vocabulary = load_vocabulary(args.vocab) if args.vocab is not None else None
    detector = load_model(**source)
    start = time.perf_counter()
    if args.text_encoder is not None:  # first: the detector's metadata names it
        export_text_encoder(detector, args.text_encoder, source=source, check=not args.no_check)
        print(f"wrote {args.text_encoder} and {sidecar_path(args.text_encoder)}")
    export_detector(detector, args.out, source=source, vocabulary=vocabulary,
                    image_size=tuple(args.image_size) if args.image_size else None, check=not args.no_check,
                    text_encoder=args.text_encoder)
    print(f"wrote {args.out} and {sidecar_path(args.out)} ({time.perf_counter() - start:.1f} s"
          f"{'' if args.no_check else ', parity checked'})")
    findings = lint_tensorrt(args.out)
    for f in findings:
        if f.severity != "info":
            print(f)
    print(f"TensorRT lint: {sum(f.severity == 'error' for f in findings)} error(s), "
          f"{sum(f.severity == 'warning' for f in findings)} warning(s)")


def export_triton(args: argparse.Namespace) -> None:
    """A Triton model repository at --out (cora.export.triton): the detector and text encoder exported to
    ONNX (parity-checked unless --no-check) with the Python-backend models that serve them."""
    from cora.checkpoint import load_model
    from cora.export.triton import check_repository_target, export_repository

    for flag in (o for o in _ONNX_OPTIONS if o not in args.format.options):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag.replace('_', '-')}: not for --format triton (a served model takes its "
                            "vocabulary per request and its repository holds the text encoder)")
    common.check_output_dir(args.out, "--out")
    check_repository_target(args.out)  # before the minutes of export work
    overrides = [f"inference.{k}={getattr(args, k)}" for k in ("max_detections", "score_threshold")
                 if getattr(args, k) is not None]
    source = common.model_source(args, overrides)
    detector = load_model(**source)
    with common.user_errors():  # file-system errors (permissions, a full disk) as one line
        export_repository(detector, args.out, source=source, check=not args.no_check,
                          image_size=tuple(args.image_size) if args.image_size else None)
    print(f"wrote the model repository {args.out} (serve it with `cora serve {args.out}`)")


def build_engine(args: argparse.Namespace) -> None:
    from cora.export.onnx import read_sidecar
    from cora.export.tensorrt import build_engine as build, default_image_profile, tensorrt_missing

    if not os.path.isfile(args.onnx):
        raise UserError(f"{args.onnx} does not exist (export one with `cora export --format onnx`)")
    check_outputs(args)
    missing = tensorrt_missing(args.onnx)
    if missing is not None:
        raise UserError(missing)
    with common.user_errors():
        meta = read_sidecar(args.onnx)
    build(args.onnx, args.out, fp16=args.fp16, vocab_profile=args.vocab_profile,
          image_profile=args.image_profile or default_image_profile(meta),
          batch_profile=args.batch_profile, workspace_gib=args.workspace)
    print(f"wrote {args.out} and {args.out}.json")


def run(args: argparse.Namespace) -> int:
    fmt: ExportFormat = args.format
    parser: argparse.ArgumentParser = args._parser
    defaults = {a.dest: a.default for a in parser._actions}
    misplaced = [d for d in _ENGINE_OPTIONS if d not in fmt.options and getattr(args, d) != defaults.get(d)]
    if misplaced:
        flags = ", ".join("--" + d.replace("_", "-") for d in misplaced)
        parser.error(f"{flags}: only for --format engine (got --format {fmt.arg})")
    if fmt.arg == "triton":
        export_triton(args)
        return 0
    check_outputs(args)
    if fmt.arg == "onnx":
        export_onnx(args)
        return 0

    from cora.export.tensorrt import tensorrt_missing

    problem = check_profiles(args)
    if problem:
        parser.error(problem)
    engine_out = args.out
    onnx_path = args.onnx or (os.path.splitext(engine_out)[0] + ".onnx")
    missing = tensorrt_missing(args.onnx)
    if missing is not None:  # fail before the (slow) ONNX export
        raise UserError(missing)
    if args.onnx is None:
        args.out = onnx_path
        export_onnx(args)
        args.out = engine_out
    args.onnx = onnx_path
    build_engine(args)
    return 0


def _script_main(prog: str, description: str, add, work, argv) -> int:
    import sys

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add(parser)
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "vocab_profile") and (problem := check_profiles(args)):
            parser.error(problem)
        work(args)
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


def onnx_main(argv: list[str] | None = None) -> int:
    """export/to_onnx.py: `cora export --format onnx`."""
    return _script_main("export/to_onnx.py", "Export CORA to one ONNX file (see `cora export --help`).",
                        add_onnx_arguments, export_onnx, argv)


def _add_trt_script_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="the exported CORA .onnx (`cora export --format onnx`)")
    p.add_argument("--out", required=True, help="output .engine file (sidecar <out>.json)")
    add_engine_arguments(p)


def trt_main(argv: list[str] | None = None) -> int:
    """export/to_trt.py: a TensorRT engine from an exported .onnx."""
    return _script_main("export/to_trt.py", "Build a TensorRT engine from an exported CORA ONNX file.",
                        _add_trt_script_arguments, build_engine, argv)
