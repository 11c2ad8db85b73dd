"""Checkpoints: our format (a folder with model.safetensors + config.json) and the official release.

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

from cora.config import CORAConfig, config_from_dict, config_to_dict
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
