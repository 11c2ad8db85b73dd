"""Checkpoints and THE model loader: our format (a folder with model.safetensors + config.json), presets
(random or CLIP-only weights) and the official release (imported by `cora convert`, then a checkpoint).

    model = load_model(checkpoint="runs/x/model")                       # learned weights + their config
    model = load_model(preset="tiny", random_init=True, seed=0)          # try the pipeline without weights
    model = load_model(**export_sidecar["source"])                       # the model an export was made from

Our format holds what CORA learns (region prompt, localizer, text projection); the frozen CLIP weights
come from an open_clip tag or a local file, named by the config. Writes are atomic (temporary file +
os.replace): an interrupted save never leaves a truncated checkpoint.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cora.config import CORAConfig, apply_overrides, config_from_dict, config_to_dict, get_preset
from cora.errors import UserError, first_line
from cora.fileio import atomic_write, write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_checkpoint(directory: str | Path, state_dict: dict[str, torch.Tensor], cfg: CORAConfig) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(Path(directory) / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))

    write_json(Path(directory) / CONFIG_NAME, config_to_dict(cfg), indent=2)


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], CORAConfig]:
    directory = Path(directory)
    weights, config = directory / WEIGHTS_NAME, directory / CONFIG_NAME
    if not weights.is_file() or not config.is_file():
        raise FileNotFoundError(
            f"{directory} is not a cora checkpoint: expected {WEIGHTS_NAME} and {CONFIG_NAME} in it "
            "(import an official release with `cora convert`)"
        )
    try:
        with open(config, encoding="utf-8") as f:
            cfg = config_from_dict(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config} is not valid JSON ({e})") from None
    except ValueError as e:
        raise ValueError(f"{config}: {first_line(e)}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:  # empty, truncated or not a safetensors file at all
        raise ValueError(f"{weights} is not a readable safetensors file ({first_line(e)})") from None
    check_finite(state, weights)
    return state, cfg


def check_finite(state_dict: dict[str, torch.Tensor], source) -> None:
    """ValueError naming `source` and the first tensor with a NaN or an infinite value: such weights load
    and silently detect nothing."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: weight {key!r} holds NaN or infinite values; the checkpoint is corrupt")


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads learned weights into a CORA model; the CLIP weights must be its only missing keys."""
    shapes = {k: v.shape for k, v in model.learned_state_dict().items()}
    missing = sorted(set(shapes) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}")
    wrong = [k for k in sorted(state_dict) if state_dict[k].shape != shapes[k]]
    if wrong:
        k = wrong[0]
        raise ValueError(f"checkpoint does not fit the model: {len(wrong)} weight(s) of another shape, e.g. {k!r} "
                         f"is {list(state_dict[k].shape)}, the model's {list(shapes[k])} (another preset or "
                         "config.json?)")
    model.load_state_dict(state_dict, strict=False)


def load_torch_file(path: str | Path, allowed: tuple[type, ...] = ()):
    """torch.load(weights_only=True) on the CPU: tensors, containers and the `allowed` classes, never arbitrary
    code. Every failure is a ValueError naming the file (FileNotFoundError when missing): a refused pickle,
    an empty, truncated or non-PyTorch file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = ", ".join(["tensors", *(c.__name__ for c in allowed)])
        raise ValueError(f"{path}: refused to load objects other than {names} ({unpickling_reason(e)})") from None
    except (EOFError, RuntimeError, OSError, KeyError, ValueError, IndexError) as e:  # what torch.load raises
        # EOFError (empty), KeyError / IndexError (bytes that are no pickle) say nothing more useful
        detail = f" ({first_line(e)})" if isinstance(e, (RuntimeError, OSError, ValueError)) else ""
        raise ValueError(f"{path} is not a PyTorch file torch.load can read{detail}") from None


def unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only refusal that names what was refused (its first line is a generic
    note about PyTorch 2.6)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), first_line(error))


def load_official_file(path: str | Path) -> dict:
    """An official CORA file (load_torch_file): tensors, containers and argparse.Namespace (the official files
    store their training arguments as one)."""
    return load_torch_file(path, (argparse.Namespace,))


def load_model(checkpoint: str | Path | None = None, preset: str | None = None, *, clip_weights: str | None = None,
               random_init: bool = False, seed: int = 0, overrides=(), device: str = "cpu",
               fresh: bool = False):
    """The CORA detector in eval mode on `device`, from a checkpoint folder or (with `random_init`) a preset.

    checkpoint: a cora checkpoint folder (its config.json gives the architecture); else `preset`
        (default "rn50_coco") with random CORA weights, which needs `random_init` so that random weights are
        never used by accident.
    clip_weights: a local open_clip checkpoint for the frozen CLIP backbone (default: the config's open_clip
        tag, which needs the model hub; with `random_init` and no file, random CLIP weights).
    seed: random weights are drawn after `torch.manual_seed(seed)`: the same arguments give the same model.
    overrides: config overrides ("inference.nms_iou=0.6", see cora.config.apply_overrides).
    The keyword names are those of an export's sidecar "source", so `load_model(**meta["source"])` rebuilds
    the model an export was made from. Raises UserError (one line) for every user mistake.
    fresh: allow fresh CORA weights without `random_init` (training starts from them; CLIP's stay real).
    """
    if checkpoint is None and not random_init and not fresh:
        raise UserError("no CORA weights: pass a checkpoint folder (import the official release with `cora convert`), "
                        "or random_init / --random-init to try the pipeline with random weights")
    try:
        state, cfg = load_checkpoint(checkpoint) if checkpoint is not None else (None, get_preset(preset or "rn50_coco"))
        cfg = apply_overrides(cfg, list(overrides or []))
    except (ValueError, OSError) as e:
        raise UserError(first_line(e)) from e
    torch.manual_seed(int(seed))
    model = build_model(cfg, clip_weights, random_init)
    if state is not None:
        try:
            load_into(model, state)
        except ValueError as e:
            raise UserError(f"{checkpoint}: {first_line(e)}") from e
    return model.to(device).eval()


def build_model(cfg: CORAConfig, clip_weights: str | None = None, random_init: bool = False):
    """`CORA.from_config` (fresh CORA weights from the current RNG) with the CLIP weights' failures as one
    UserError: a missing, refused (pickle), truncated or wrong `clip_weights` file, or no model hub."""
    from cora.modeling.detector import CORA

    try:
        return CORA.from_config(cfg, clip_weights=clip_weights, random_init=random_init)
    except ValueError as e:  # a config the modules refuse, or a clip_weights file that is not this CLIP (named)
        raise UserError(first_line(e)) from e
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        if isinstance(e, pickle.UnpicklingError):
            raise UserError(f"--clip-weights {clip_weights}: refused to load objects other than tensors "
                            f"({unpickling_reason(e)})") from e
        if clip_weights is not None:  # the file's own problem: empty, truncated, not a CLIP
            reason = "empty or truncated" if isinstance(e, EOFError) else first_line(e)
            raise UserError(f"--clip-weights {clip_weights}: {reason}") from e
        raise UserError(f"could not load the CLIP weights of {cfg.backbone.clip_model} ({first_line(e)}); "
                        "without the model hub, pass --clip-weights PATH to a local open_clip checkpoint") from e
