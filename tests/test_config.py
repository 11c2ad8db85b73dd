"""cora.config: presets, JSON round trip, overrides and their errors."""

import json

import pytest

from cora.config import PRESETS, apply_overrides, config_from_dict, config_to_dict, config_to_json, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json(name):
    cfg = get_preset(name)
    assert config_from_dict(json.loads(config_to_json(cfg))) == cfg


def test_lvis_preset_keeps_300_detections():
    assert get_preset("rn50x4_lvis").inference.max_detections == 300
    assert get_preset("rn50x4_lvis").backbone.clip_model == "RN50x4"


def test_overrides():
    cfg = apply_overrides(get_preset("rn50_coco"), ["inference.max_detections=300", "backbone.pretrained=null",
                                                    "backbone.clip_model=RN50x4", "localizer.dropout=0.0"])
    assert cfg.inference.max_detections == 300 and cfg.backbone.pretrained is None
    assert cfg.backbone.clip_model == "RN50x4" and cfg.localizer.dropout == 0.0
    assert get_preset("rn50_coco").inference.max_detections == 100  # presets are not mutated


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'rn5O_coco'.*did you mean 'rn50_coco'"):
        get_preset("rn5O_coco")
    with pytest.raises(ValueError, match=r"unknown config key 'inference.max_detection'.*did you mean 'inference.max_detections'"):
        apply_overrides(get_preset("tiny"), ["inference.max_detection=3"])
    with pytest.raises(ValueError, match=r"override must be key=value"):
        apply_overrides(get_preset("tiny"), ["inference.nms_iou"])
    with pytest.raises(ValueError, match=r"inference is a section"):
        apply_overrides(get_preset("tiny"), ["inference=3"])
    data = config_to_dict(get_preset("tiny"))
    data["localizer"]["num_querys"] = 5
    with pytest.raises(ValueError, match=r"unknown config key localizer. 'num_querys'"):
        config_from_dict(data)


@pytest.mark.parametrize("override, value", [
    ("inference.max_detections=300", 300), ("temperature=50", 50.0), ("inference.nms_iou=1", 1.0),
    ("backbone.pretrained=null", None), ("backbone.pretrained=2023", "2023"),  # a name that reads as a number
    ("inference.pre_nms_topk=0", 0), ("text_context_length=15", 15),
])
def test_override_values_take_the_field_type(override, value):
    key = override.split("=")[0]
    got = apply_overrides(get_preset("tiny"), [override])
    for part in key.split("."):
        got = getattr(got, part)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("override, message", [
    ("inference.max_detections=abc", "an int, got 'abc'"), ("inference.max_detections=2.5", "an int, got 2.5"),
    ("inference.max_detections=true", "an int, got True"), ("inference.max_detections=0", r"in \[1, inf\]"),
    ("inference.score_threshold=NaN", "a finite float, got nan"), ("inference.nms_iou=1.5", r"in \[0, 1\]"),
    ("localizer.dropout=null", "a finite float, got None"), ("text_context_length=78", r"in \[2, 77\]"),
    ("temperature=-1", r"in \[1e-06, inf\], got -1"),
])
def test_override_values_outside_the_field_type_are_refused(override, message):
    with pytest.raises(ValueError, match=f"config key {override.split('=')[0]} must be .*{message}"):
        apply_overrides(get_preset("tiny"), [override])


def test_config_json_values_are_checked_too():
    data = config_to_dict(get_preset("tiny"))
    data["inference"]["max_detections"] = "100"
    with pytest.raises(ValueError, match="config key inference.max_detections must be an int, got '100'"):
        config_from_dict(data)
    with pytest.raises(ValueError, match="config file must be a JSON object of keys, got list"):
        config_from_dict([data])


def test_config_json_missing_keys_take_the_defaults():
    """Deliberate: a config.json written before a key existed (e.g. text_context_length) still loads, with the
    key's default; a checkpoint whose architecture then differs is refused by its weights' shapes
    (cora.checkpoint.load_into)."""
    data = config_to_dict(get_preset("tiny"))
    del data["text_context_length"], data["inference"]["pre_nms_topk"]
    cfg = config_from_dict(data)
    assert cfg.text_context_length == 77 and cfg.inference.pre_nms_topk == 3000
    assert cfg == get_preset("tiny")
