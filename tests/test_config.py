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
