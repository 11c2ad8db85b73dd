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
from safetensors.torch import load_file, save_file

from cora.config import CORAConfig, apply_overrides, config_from_dict, config_to_dict, get_preset
from cora.errors import UserError
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
    with open(config) as f:
        cfg = config_from_dict(json.load(f))
    return load_file(str(weights)), cfg


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Loads learned weights into a CORA model; the CLIP weights must be its only missing keys."""
    expected = model.learned_state_dict().keys()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}")
    model.load_state_dict(state_dict, strict=False)


def load_official_file(path: str | Path) -> dict:
    """torch.load of an official CORA file without unpickling arbitrary objects: tensors, containers
    and argparse.Namespace (the official files store their training arguments as one)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")[0]
        raise ValueError(f"{path}: refused to load objects other than tensors and argparse.Namespace ({first})") from None


def load_model(checkpoint: str | Path | None = None, preset: str | None = None, *, clip_weights: str | None = None,
               random_init: bool = False, seed: int = 0, overrides=(), device: str = "cpu"):
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
    """
    from cora.modeling.detector import CORA

    if checkpoint is None and not random_init:
        raise UserError("no CORA weights: pass a checkpoint folder (import the official release with `cora convert`), "
                        "or random_init / --random-init to try the pipeline with random weights")
    try:
        state, cfg = load_checkpoint(checkpoint) if checkpoint is not None else (None, get_preset(preset or "rn50_coco"))
        cfg = apply_overrides(cfg, list(overrides or []))
    except (ValueError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from e
    torch.manual_seed(int(seed))
    try:
        model = CORA.from_config(cfg, clip_weights=clip_weights, random_init=random_init)
    except (RuntimeError, OSError) as e:
        raise UserError(f"could not load the CLIP weights of {cfg.backbone.clip_model} ({str(e).splitlines()[0]}); "
                        "without the model hub, pass --clip-weights PATH to a local open_clip checkpoint") from e
    if state is not None:
        load_into(model, state)
    return model.to(device).eval()
