"""The arguments several `cora` commands share, and what turns them into library calls.

    add_model_arguments(p)            # --preset --checkpoint --clip-weights --random-init --seed --set
    add_device_argument(p)            # --device (default: cuda if available, else cpu)
    add_vocabulary_arguments(p)       # --vocab | --vocab-file
    p.add_argument("--lr", type=POSITIVE)  # the one validation layer of numeric flags (see `number`)
    check_output_dir(args.out, "--out")   # before any work: an output path of the wrong kind is refused
    model = load_model(**model_source(args), device=resolve_device(args.device))
    with user_errors():               # ValueError / OSError of the library -> UserError (one line, exit 1)
        ...

A leaf of the command line: no heavy import at module level (the parser is built on every `cora` call).
"""

from __future__ import annotations

import argparse
import math
import os
from contextlib import contextmanager
from pathlib import Path

from cora.errors import UserError, first_line

DEFAULT_PRESET = "rn50_coco"


def number(kind: type = float, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False):
    """An argparse `type`: a finite int or float in [low, high] (`low_open` / `high_open`: that end excluded).
    NaN, +-inf and values out of range are usage errors naming the flag (argparse: exit 2). --config values go
    through the same function (load_config_file)."""
    bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "",
              f"{'<' if high_open else '<='} {high}" if high is not None else ""]
    expected = f"{'an integer' if kind is int else 'a finite number'} {' and '.join(b for b in bounds if b)}".strip()

    def inside(value) -> bool:
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        return math.isfinite(value) and above and below

    def parse(text):
        try:
            value = kind(str(text).strip())
        except ValueError:
            value = None
        if value is None or not inside(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {str(text)!r}")
        return value

    return parse


POSITIVE_INT = number(int, 1)
NON_NEGATIVE_INT = number(int, 0)
POSITIVE = number(float, 0, low_open=True)
NON_NEGATIVE = number(float, 0)
PROBABILITY = number(float, 0, 1)          # a score threshold, a probability
FRACTION = number(float, 0, 1, high_open=True)  # a share that cannot be all: dropout, EMA decay
SEED = number(int, 0, 2**32 - 1)           # a 32-bit seed, as numpy.random.seed takes


def check_output_file(path: str | None, flag: str) -> None:
    """Refuses, before any work starts, an output file that names a folder or lies in a file."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory; expected a file path")
    _check_parents(Path(path).parent, flag, path)


def check_output_dir(path: str | None, flag: str) -> None:
    """Refuses, before any work starts, an output folder that is an existing file or lies in one."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is an existing file; expected a folder")
    _check_parents(Path(path).parent, flag, path)


def _check_parents(folder: Path, flag: str, path: str) -> None:
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            return


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
        p.add_argument("--seed", type=SEED, default=0, help="seed of --random-init's weights (default: 0)")
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
    """The one device rule: `device` when given (cpu, cuda or cuda:N, checked against the GPUs torch sees),
    else "cuda" if torch sees a GPU, else "cpu". UserError for any other name or a GPU that is not there."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and count == 0:
        raise UserError(f"--device {device}: torch sees no CUDA GPU here (use --device cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= count:
        raise UserError(f"--device {device}: torch sees {count} CUDA GPU(s), cuda:0 .. cuda:{count - 1}")
    return device


def add_vocabulary_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--vocab NAMES | --vocab-file FILE (cora.vocabulary.load_vocabulary reads either)."""
    vocab = p.add_mutually_exclusive_group(required=required)
    vocab.add_argument("--vocab", default=None, help='class names, comma-separated, e.g. "cat,dog,traffic light"')
    vocab.add_argument("--vocab-file", default=None, type=Path,
                       help="a .txt file (one class name per line, # comments) or a COCO / LVIS .json file; "
                       "always read as a file")


def vocabulary_source(args: argparse.Namespace) -> str | Path | None:
    """What to pass to cora.vocabulary.load_vocabulary: --vocab (names, or a .txt / .json path) or --vocab-file
    (a Path: always read as a file); None if neither."""
    return args.vocab if args.vocab is not None else args.vocab_file


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
    by dest. Unknown names are errors (with the closest flag); values go through the flag's own type and
    choices, as on the command line (a list for flags that take several values)."""
    import json

    import yaml

    from cora.config import unknown_name_message

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--config {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                         f"({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} must hold a mapping of flag names to values")
    actions = {a.option_strings[0][2:].replace("-", "_"): a for a in parser._actions
               if a.option_strings and a.option_strings[0].startswith("--") and a.dest not in ("help", "config")}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in actions:
            raise ValueError(f"--config {path}: " + unknown_name_message("flag", name, actions))
        out[actions[name].dest] = _config_value(actions[name], value, f"--config {path}: {key}")
    return out


def _config_value(action: argparse.Action, value, where: str):
    """A --config value checked as argparse checks the flag's command-line value."""
    several = action.nargs not in (None, "?") or isinstance(action, argparse._AppendAction)
    if value is None or action.nargs == 0:  # store_true flags: a bool
        if action.nargs == 0 and not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if several != isinstance(value, list):
        raise ValueError(f"{where} must be {'a list' if several else 'a single value'}, got {value!r}")
    items = value if several else [value]
    try:
        items = [action.type(str(v)) if action.type is not None else v for v in items]
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    if action.choices is not None:
        bad = [v for v in items if v not in action.choices]
        if bad:
            raise ValueError(f"{where}: {bad[0]!r} is not one of {', '.join(map(str, action.choices))}")
    return items if several else items[0]
