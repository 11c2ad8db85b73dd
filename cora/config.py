"""Configurations as frozen dataclasses: the schema, the defaults and the named presets.

    cfg = get_preset("rn50_coco")
    cfg = apply_overrides(cfg, ["inference.max_detections=300", "localizer.num_queries=900"])
    config_from_dict(config_to_dict(cfg)) == cfg

Architecture only: weights (CLIP tag or file, checkpoints) are given separately. Every value that enters a
config (an override, a config.json) is checked against its field's type and range (`check_value`): a wrong
value is a ValueError naming the key, never a config that fails later.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    clip_model: str = "RN50"        # an open_clip ResNet config name, or "tiny" (tests)
    pretrained: str | None = "openai"  # open_clip tag of the CLIP weights; None = none (random init)


@dataclass(frozen=True)
class LocalizerConfig:
    hidden_dim: int = 256
    num_queries: int = 1000
    num_heads: int = 8
    num_encoder_layers: int = 3
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1


@dataclass(frozen=True)
class InferenceConfig:
    min_size: int = 800          # shorter image side after resizing (pixels)
    max_size: int = 1333         # longer side cap (pixels)
    score_threshold: float = 0.001
    nms_iou: float = 0.5
    max_detections: int = 100    # 100 for COCO, 300 for LVIS
    pre_nms_topk: int = 3000     # (box, class) pairs per image entering NMS; 0 = all (the official evaluation)


@dataclass(frozen=True)
class CORAConfig:
    name: str = "rn50_coco"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    temperature: float = 100.0   # CLIP logit scale applied to cosine similarities (tau)
    text_context_length: int = 77  # prompt tokens for the text encoder; the official evaluation uses 15


PRESETS: dict[str, CORAConfig] = {
    "rn50_coco": CORAConfig(),
    "rn50x4_coco": CORAConfig(name="rn50x4_coco", backbone=BackboneConfig(clip_model="RN50x4")),
    "rn50x4_lvis": CORAConfig(
        name="rn50x4_lvis", backbone=BackboneConfig(clip_model="RN50x4"), inference=InferenceConfig(max_detections=300)
    ),
    # Seconds on a CPU: unit tests, the demo and smoke runs (random weights).
    "tiny": CORAConfig(
        name="tiny",
        backbone=BackboneConfig(clip_model="tiny", pretrained=None),
        localizer=LocalizerConfig(hidden_dim=32, num_queries=20, num_heads=4, num_encoder_layers=1,
                                  num_decoder_layers=2, dim_feedforward=64, dropout=0.0),
        inference=InferenceConfig(min_size=128, max_size=192),
    ),
}


# Allowed ranges (inclusive) of numeric keys; other int keys must be >= 1, other float keys finite.
RANGES: dict[str, tuple[float, float]] = {
    "localizer.dropout": (0.0, 1.0),
    "inference.score_threshold": (0.0, 1.0),
    "inference.nms_iou": (0.0, 1.0),
    "inference.pre_nms_topk": (0, math.inf),  # 0 = all pairs
    "temperature": (1e-6, math.inf),
    "text_context_length": (2, 77),  # CLIP's text tower has 77 positions; the end token needs one
}


def check_value(key: str, value, annotation: str):
    """`value` for the config key `key` (a dotted path) whose field annotation is `annotation`: the value, as
    the field's type (an int is a valid float), or ValueError naming the key, the expected type and the value."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None and "None" in kinds:
        return None
    if "str" in kinds and isinstance(value, str):
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if "int" in kinds and numeric and isinstance(value, int):
        pass
    elif "float" in kinds and numeric and math.isfinite(value):
        value = float(value)
    else:
        names = {"int": "an int", "float": "a finite float", "str": "a str", "None": "null"}
        raise ValueError(f"config key {key} must be {' or '.join(names[k] for k in kinds)}, got {value!r}")
    low, high = RANGES.get(key, (1, math.inf) if "int" in kinds else (-math.inf, math.inf))
    if not low <= value <= high:
        raise ValueError(f"config key {key} must be in [{low:g}, {high:g}], got {value!r}")
    return value


def unknown_name_message(kind: str, name: str, choices) -> str:
    """'unknown preset 'rn5O_coco'; choose from a, b (did you mean 'rn50_coco'?)'"""
    choices = sorted(choices)
    hint = difflib.get_close_matches(name, choices, n=1)
    return f"unknown {kind} {name!r}; choose from {', '.join(choices)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def get_preset(name: str) -> CORAConfig:
    if name not in PRESETS:
        raise ValueError(unknown_name_message("preset", name, PRESETS))
    return PRESETS[name]


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: dict[str, Any], cls=CORAConfig, path: str = ""):
    """Inverse of config_to_dict; unknown keys and wrong values are errors (a misspelled key never passes
    silently); missing keys take their defaults."""
    if not isinstance(data, dict):
        where = path.rstrip(".") or "file"
        raise ValueError(f"config {where} must be a JSON object of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ValueError(unknown_name_message(f"config key {path}", unknown[0], fields))
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_type(fields[key].type)
        kwargs[key] = (config_from_dict(value, sub, f"{path}{key}.") if sub is not None
                       else check_value(path + key, value, fields[key].type))
    return cls(**kwargs)


def config_to_json(cfg) -> str:
    return json.dumps(config_to_dict(cfg), indent=2)


def apply_overrides(cfg, overrides: list[str]):
    """`["inference.max_detections=300"]`: values parsed as JSON (numbers, true/false, null), else strings,
    then checked against the key's type and range (`check_value`)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override must be key=value (e.g. inference.nms_iou=0.6), got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        cfg = _set(cfg, key.split("."), value, raw, key, _all_keys(type(cfg)))
    return cfg


def _set(cfg, parts: list[str], value, raw: str, full_key: str, all_keys: list[str]):
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if parts[0] not in fields:
        raise ValueError(unknown_name_message("config key", full_key, all_keys))
    if len(parts) == 1:
        if _dataclass_type(fields[parts[0]].type) is not None:
            raise ValueError(f"{full_key} is a section; set one of its keys, e.g. {full_key}.<key>=...")
        annotation = fields[parts[0]].type
        if "str" in str(annotation) and value is not None and not isinstance(value, str):
            value = raw  # a name that reads as JSON (backbone.pretrained=2023) is still a name
        return replace(cfg, **{parts[0]: check_value(full_key, value, annotation)})
    return replace(cfg, **{parts[0]: _set(getattr(cfg, parts[0]), parts[1:], value, raw, full_key, all_keys)})


def _all_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        sub = _dataclass_type(f.type)
        keys += _all_keys(sub, f"{prefix}{f.name}.") if sub is not None else [prefix + f.name]
    return keys


def _dataclass_type(annotation):
    """The config dataclass named by a field annotation (annotations are strings here), or None."""
    return {c.__name__: c for c in (BackboneConfig, LocalizerConfig, InferenceConfig)}.get(str(annotation))
