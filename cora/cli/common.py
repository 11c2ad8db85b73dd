"""The arguments several `cora` commands share, and what turns them into library calls.

    add_model_arguments(p)            # --preset --checkpoint --clip-weights --random-init --seed --set
    add_device_argument(p)            # --device (default: cuda if available, else cpu)
    add_vocabulary_arguments(p)       # --vocab | --vocab-file
    model = load_model(**model_source(args), device=resolve_device(args.device))
    with user_errors():               # ValueError / OSError of the library -> UserError (one line, exit 1)
        ...

A leaf of the command line: no heavy import at module level (the parser is built on every `cora` call).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

from cora.errors import UserError

DEFAULT_PRESET = "rn50_coco"


def add_model_arguments(p: argparse.ArgumentParser, *, checkpoint_flags: tuple[str, ...] = ("--checkpoint",),
                        checkpoint_help: str | None = None, random_init_help: str | None = None,
                        seed: bool = True) -> None:
    """The model source, as `cora.checkpoint.load_model` takes it (`model_source(args)`).

    checkpoint_flags: the checkpoint flag and its aliases (dest is always `checkpoint`).
    seed: add --seed (commands with their own --seed, e.g. train, set False; model_source then reads theirs).
    """
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"model preset without a checkpoint (default: {DEFAULT_PRESET}; see cora.config.PRESETS)")
    p.add_argument(*checkpoint_flags, dest="checkpoint", default=None,
                   help=checkpoint_help or "a cora checkpoint folder (model.safetensors + config.json); its config "
                   "replaces --preset; import the official release with `cora convert` (default: none)")
    p.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint file for the CLIP backbone "
                   "(default: the config's open_clip tag, which needs the model hub)")
    p.add_argument("--random-init", action="store_true",
                   help=random_init_help or "random CORA and CLIP weights (drawn after --seed): try the pipeline "
                   "without weights (default: off)")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="seed of --random-init's weights (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set inference.max_detections=300 (default: none)")


def model_source(args: argparse.Namespace, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The keyword arguments of `cora.checkpoint.load_model` (and `cora.runtime.load_detector`) from
    add_model_arguments' flags, device excepted: checkpoint, preset (None with a checkpoint), clip_weights,
    random_init, seed, overrides (`overrides` first, then --set, so the user's --set wins). JSON-ready: the
    same dict is an export's sidecar "source"."""
    return {"checkpoint": args.checkpoint, "preset": None if args.checkpoint else args.preset,
            "clip_weights": args.clip_weights, "random_init": bool(args.random_init), "seed": int(args.seed),
            "overrides": [*overrides, *args.overrides]}


def add_device_argument(p: argparse.ArgumentParser, extra_help: str = "") -> None:
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)" + extra_help)


def resolve_device(device: str | None) -> str:
    """The one default device rule: `device` when given, else "cuda" if torch sees a GPU, else "cpu"."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def add_vocabulary_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--vocab NAMES | --vocab-file FILE (cora.vocabulary.load_vocabulary reads either)."""
    vocab = p.add_mutually_exclusive_group(required=required)
    vocab.add_argument("--vocab", default=None, help='class names, comma-separated, e.g. "cat,dog,traffic light"')
    vocab.add_argument("--vocab-file", default=None,
                       help="a .txt file (one class name per line, # comments) or a COCO / LVIS json")


def vocabulary_source(args: argparse.Namespace) -> str | None:
    """What to pass to cora.vocabulary.load_vocabulary: --vocab or --vocab-file (None if neither)."""
    return args.vocab if args.vocab is not None else args.vocab_file


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def user_errors(*types: type[BaseException]):
    """Turns the library's errors about user input (ValueError, OSError such as FileNotFoundError, or `types`)
    into UserError with their first line, which `cora.cli.main` prints; anything else keeps its traceback."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError, *types) as e:
        raise UserError(first_line(e)) from e


def data_dir(args: argparse.Namespace) -> Path | None:
    """--data as a Path (None when not given)."""
    return Path(args.data) if getattr(args, "data", None) else None


def split_file(split: str | None, data: Path | None) -> str | None:
    """--split, else data/split.json when it exists (cora.data.synthetic writes one), else None (COCO's)."""
    if split is None and data is not None and (data / "split.json").is_file():
        return str(data / "split.json")
    return split


def load_config_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """--config FILE: a YAML / JSON mapping of flag names (dashes or underscores) to values -> parser defaults
    by dest. Unknown names are errors (with the closest flag)."""
    import json

    import yaml

    from cora.config import unknown_name_message

    text = Path(path).read_text()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    flags = {a.option_strings[0][2:].replace("-", "_"): a.dest for a in parser._actions
             if a.option_strings and a.option_strings[0].startswith("--") and a.dest not in ("help", "config")}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in flags:
            raise ValueError(f"--config {path}: " + unknown_name_message("flag", name, flags))
        out[flags[name]] = value
    return out
