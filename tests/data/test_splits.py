"""Base / novel splits: the COCO OVD names, LVIS frequencies, split files, validation, ovd_instances."""

import json

import pytest

from cora.data.splits import (
    COCO_BASE_CLASSES,
    COCO_NOVEL_CLASSES,
    Split,
    coco_ovd_split,
    load_categories,
    load_split,
    lvis_ovd_split,
    make_split,
    ovd_instances,
)

# COCO 2017 instances categories (id, name).
COCO_2017_CATEGORIES = [{"id": i, "name": n, "supercategory": "x"} for i, n in [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
]]
# The novel category ids the official CORA code hard-codes for COCO.
OFFICIAL_NOVEL_IDS = [5, 6, 17, 18, 21, 22, 28, 32, 36, 41, 47, 49, 61, 63, 76, 81, 87]


def test_coco_names():
    assert len(COCO_BASE_CLASSES) == 48 and len(COCO_NOVEL_CLASSES) == 17
    assert len(set(COCO_BASE_CLASSES) | set(COCO_NOVEL_CLASSES)) == 65
    assert len(COCO_2017_CATEGORIES) == 80


def test_coco_ovd_split_over_coco_2017():
    split = coco_ovd_split({"categories": COCO_2017_CATEGORIES[::-1]})  # any order: sorted by id
    assert split.novel_ids == OFFICIAL_NOVEL_IDS
    assert len(split.base_ids) == 48 and len(split.ovd_ids) == 65
    assert split.ids == tuple(sorted(c["id"] for c in COCO_2017_CATEGORIES))
    assert split.novel_names[:3] == ["airplane", "bus", "cat"] and split.base_names[0] == "person"
    assert split.id_of("tv") == 72 and split.name_of(72) == "tv"
    assert split.group_of("cat") == "novel" and split.group_of(1) == "base" and split.group_of("traffic light") is None
    assert split.ids_of(["dog", "person"]) == [18, 1]
    assert split.to_dict() == {"base": split.base_names, "novel": split.novel_names}
    with pytest.raises(KeyError, match="no category with id 12"):
        split.name_of(12)


def test_coco_split_lists_unknown_names_with_hints():
    categories = [dict(c, name={"tv": "tvmonitor", "couch": "sofa"}.get(c["name"], c["name"]))
                  for c in COCO_2017_CATEGORIES]
    with pytest.raises(ValueError, match="'tv' \\(did you mean 'tvmonitor'\\?\\)") as info:
        coco_ovd_split(categories)
    assert "'couch'" in str(info.value) and "not among the json's 80 categories" in str(info.value)


def test_lookup_errors_have_hints():
    split = coco_ovd_split(COCO_2017_CATEGORIES)
    with pytest.raises(ValueError, match="'zebr' \\(did you mean 'zebra'\\?\\)"):
        split.id_of("zebr")


def lvis_categories():
    return [
        {"id": 1, "name": "traffic_light", "synset": "traffic_light.n.01", "frequency": "f"},
        {"id": 2, "name": "aerosol_can", "synset": "aerosol.n.02", "frequency": "c"},
        {"id": 3, "name": "armoire", "synset": "armoire.n.01", "frequency": "r"},
    ]


def test_lvis_split_rare_is_novel():
    split = lvis_ovd_split({"categories": lvis_categories()})
    assert split.base_names == ["traffic light", "aerosol can"] and split.novel_names == ["armoire"]
    assert split.frequency == {1: "f", 2: "c", 3: "r"}
    assert split.id_of("traffic_light") == split.id_of("traffic light") == 1


def test_lvis_split_needs_frequencies():
    categories = lvis_categories()
    del categories[1]["frequency"]
    with pytest.raises(ValueError, match="lack one: \\['aerosol_can'\\]"):
        lvis_ovd_split(categories)


def test_load_split_forms(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"base": ["person", "car"], "novel": ["cat"]}))
    split = load_split(path, COCO_2017_CATEGORIES)
    assert split.base_ids == [1, 3] and split.novel_ids == [17] and split.group_of("dog") is None
    assert load_split("coco", COCO_2017_CATEGORIES).novel_ids == OFFICIAL_NOVEL_IDS
    assert load_split(split, COCO_2017_CATEGORIES) == split
    assert load_split("lvis", lvis_categories()).novel_ids == [3]
    with pytest.raises(FileNotFoundError, match="did you mean 'coco'"):
        load_split("cocoo", COCO_2017_CATEGORIES)
    path.write_text(json.dumps({"base": ["person"]}))
    with pytest.raises(ValueError, match="must hold"):
        load_split(path, COCO_2017_CATEGORIES)


@pytest.mark.parametrize("data, message", [
    ({"images": []}, "the json has no 'categories'"),
    ({"categories": []}, "has no 'categories'"),
    ({"categories": [{"id": "1", "name": "a"}]}, "categories\\[0\\] must be"),
    ({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "repeated category ids \\[1\\]"),
    ({"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}, "repeated category names \\['a'\\]"),
])
def test_bad_categories(data, message):
    with pytest.raises(ValueError, match=message):
        load_categories(data)


def test_load_categories_names_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="x.json' has no 'categories'"):
        load_categories(path)


def test_split_invariants():
    with pytest.raises(ValueError, match="both base and novel"):
        make_split(COCO_2017_CATEGORIES, ["cat", "dog"], ["cat"])
    with pytest.raises(ValueError, match="not categories"):
        Split((1, 2), ("a", "b"), frozenset({3}), frozenset())


def small_instances():
    """Image 1: novel only; 2: base + novel + crowd base; 3: a class outside the 65; 4: no annotations."""
    anns = [(1, 17), (2, 1), (2, 18), (2, 3), (3, 10)]
    return {
        "info": {"description": "hand-made"}, "licenses": [],
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 10, "width": 10} for i in (1, 2, 3, 4)],
        "annotations": [{"id": k + 1, "image_id": img, "category_id": cat, "bbox": [1, 1, 3, 3], "area": 9,
                         "iscrowd": int(k == 3)} for k, (img, cat) in enumerate(anns)],
        "categories": [dict(c) for c in COCO_2017_CATEGORIES],
    }


def test_ovd_instances_train_and_val():
    split = coco_ovd_split(small_instances())
    train = ovd_instances(small_instances(), split, "train")
    assert [c["id"] for c in train["categories"]] == split.base_ids
    assert [img["id"] for img in train["images"]] == [2]
    assert [(a["image_id"], a["category_id"]) for a in train["annotations"]] == [(2, 1), (2, 3)]
    assert train["info"]["description"] == "hand-made" and train["info"]["ovd_split"]["image_set"] == "train"
    val = ovd_instances(small_instances(), split, "val")
    assert len(val["categories"]) == 65 and [img["id"] for img in val["images"]] == [1, 2, 3, 4]
    assert sorted(a["category_id"] for a in val["annotations"]) == [1, 3, 17, 18]
    with pytest.raises(ValueError, match="'train' or 'val'"):
        ovd_instances(small_instances(), split, "test")


def test_a_training_json_without_the_novel_classes_gets_a_base_only_split():
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(["cat", "dog", "cow"])]
    split = make_split(categories, ["cat", "dog", "cow"], ["zebra", "giraffe"])
    assert split.base_names == ["cat", "dog", "cow"] and split.novel_names == []
    with pytest.raises(ValueError, match="zebra"):  # some novel classes present: a missing one is an error
        make_split(categories + [{"id": 9, "name": "giraffe"}], ["cat", "dog", "cow"], ["zebra", "giraffe"])
    with pytest.raises(ValueError, match="horse"):  # a missing base class is always an error
        make_split(categories, ["cat", "dog", "cow", "horse"], ["zebra"])
