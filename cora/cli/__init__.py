"""The `cora` command line: `python -m cora <command> --help`.

Commands: detect, eval, train-prompt, relabel, train, export, data, convert, bench. Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A failure worth one line to the user (bad input, missing weights), not a traceback."""


def add_detect_parser(sub) -> None:
    p = sub.add_parser(
        "detect", help="detect objects named by a vocabulary in images",
        description="Runs CORA on images; writes an annotated PNG and a JSON of detections per image.",
    )
    p.add_argument("images", nargs="+", help="image files (any format PIL reads; gray, RGBA and 16-bit are converted)")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab", help='class names, comma-separated, e.g. "cat,dog,traffic light"')
    vocab.add_argument("--vocab-file", help="a .txt file (one class name per line) or a COCO/LVIS json")
    p.add_argument("--preset", default="rn50_coco", help="model preset (default: rn50_coco; see cora.config.PRESETS)")
    p.add_argument("--checkpoint", default=None, help="a cora checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint file for the CLIP backbone "
                   "(default: the preset's open_clip tag, which needs the model hub)")
    p.add_argument("--random-init", action="store_true",
                   help="random CORA and CLIP weights (seed 0): try the pipeline without weights")
    p.add_argument("--out", default="detections", help="output folder (default: ./detections)")
    p.add_argument("--score-threshold", type=float, default=0.3, help="draw and save detections above this score (default: 0.3)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=run_detect)


def build_model(cfg, state, clip_weights: str | None, random_init: bool, device: str):
    """CORA of `cfg` with CLIP weights and learned weights (`state`, or none), in eval mode on `device`."""
    from cora.checkpoint import load_into
    from cora.modeling.detector import CORA

    if random_init:
        import torch

        torch.manual_seed(0)  # smoke runs are reproducible: the same random weights every time
    try:
        model = CORA.from_config(cfg, clip_weights=clip_weights, random_init=random_init)
    except (RuntimeError, OSError) as e:
        raise CLIError(f"could not load the CLIP weights of {cfg.backbone.clip_model} ({str(e).splitlines()[0]}); "
                       "without the model hub, pass --clip-weights PATH to a local open_clip checkpoint") from e
    if state is not None:
        load_into(model, state)
    return model.to(device).eval()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_detect(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from cora.config import get_preset
    from cora.checkpoint import load_checkpoint
    from cora.io import draw_detections, read_image, write_detections_json
    from cora.modeling.text import load_vocabulary

    if args.checkpoint is None and not args.random_init:
        raise CLIError("no CORA weights: pass --checkpoint DIR (import the official release with `cora convert`), "
                       "or --random-init to try the pipeline with random weights")
    try:
        names = load_vocabulary(args.vocab if args.vocab is not None else args.vocab_file)
        if args.checkpoint is not None:
            state, cfg = load_checkpoint(args.checkpoint)
        else:
            state, cfg = None, get_preset(args.preset)
        images = [read_image(path) for path in args.images]
    except (ValueError, FileNotFoundError, OSError) as e:
        raise CLIError(str(e)) from e
    model = build_model(cfg, state, args.clip_weights, args.random_init, args.device)
    text = model.encode_vocabulary(names)

    for path, image in tqdm(list(zip(args.images, images)), desc="detect", unit="image", disable=len(images) < 2):
        (det,) = model.detect([torch.from_numpy(image).permute(2, 0, 1).float().div(255)], text_embeddings=text)
        keep = det["scores"] > args.score_threshold
        det = {k: v[keep].cpu() for k, v in det.items()}
        write_detections_json(args.out, path, det, names)
        draw_detections(args.out, path, image, det, names)
    print(f"wrote {len(images)} result(s) to {args.out}")
    return 0


def add_convert_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="import the official CORA release into a cora checkpoint",
        description="Converts the official localizer checkpoint + region-prompt file (github.com/tgxs002/CORA) "
                    "into a cora checkpoint folder (model.safetensors + config.json). Loads with "
                    "torch.load(weights_only=True): no arbitrary code is unpickled.",
    )
    p.add_argument("--localizer", required=True, help="official localizer checkpoint (.pth with a 'model' / 'model_ema' entry)")
    p.add_argument("--prompt", required=True, help="official region-prompt file ({'attnpool.positional_embedding': [S*S+1, C]})")
    p.add_argument("--preset", default="rn50_coco", help="the architecture of the release (default: rn50_coco)")
    p.add_argument("--no-ema", action="store_true", help="use the 'model' weights even if 'model_ema' is present")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.set_defaults(run=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from cora.config import get_preset
    from cora.engine.convert import convert_to_checkpoint

    try:
        unused = convert_to_checkpoint(args.localizer, args.prompt, get_preset(args.preset), args.out, not args.no_ema)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        raise CLIError(str(e).splitlines()[0]) from e
    if unused:
        print(f"not used ({len(unused)}): {', '.join(unused[:20])}" + (" ..." if len(unused) > 20 else ""))
    print(f"wrote {args.out}")
    return 0


# `cora bench NAME ...` runs benchmarks/<script> of the source checkout in a fresh interpreter (the scripts set
# OpenMP's spin policy before torch is imported).
BENCHMARKS = {"vocab": "vocab_scaling.py", "kernels": "kernels.py"}


def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="run a benchmark: vocab (latency vs vocabulary size), kernels (ops vs baselines)",
        description="Runs benchmarks/vocab_scaling.py (vocab: CORA against OV-DETR-style conditional decoding "
                    "for K = 1 .. 4096) or benchmarks/kernels.py (kernels: each compiled op against its baseline) "
                    "with the arguments that follow; `cora bench vocab --help` lists them. Tables are printed, "
                    "JSON and PNG written to benchmarks/results/.",
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / BENCHMARKS[args.name]
    if not script.is_file():
        raise CLIError(f"{script} not found: the benchmarks ship with the source checkout, not the installed package")
    return subprocess.call([sys.executable, str(script), *args.args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cora", description="CORA open-vocabulary detection toolkit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    from cora.data.cli import add_data_parser
    from cora.engine.eval_cli import add_eval_parser
    from cora.engine.relabel import add_relabel_parser
    from cora.engine.train_cli import add_train_parser, add_train_prompt_parser
    from cora.export_cli import add_export_parser

    add_detect_parser(sub)
    add_eval_parser(sub)
    add_train_prompt_parser(sub)
    add_relabel_parser(sub)
    add_train_parser(sub)
    add_export_parser(sub)
    add_data_parser(sub)
    add_convert_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):  # flag values: defaults < --config file < command line
            from cora.engine.train_cli import load_config_file

            try:
                args.config_parser.set_defaults(**load_config_file(args.config, args.config_parser))
            except (ValueError, OSError) as e:
                raise CLIError(str(e).splitlines()[0]) from e
            args = parser.parse_args(argv)
        return args.run(args)
    except CLIError as e:
        print(f"cora {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
