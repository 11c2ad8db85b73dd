"""COCO and LVIS datasets on the synthetic shapes jsons (and hand-edited variants)."""

import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from cora.data.coco import CocoDetection, build_dataset, collate_fn
from cora.data.lvis import LvisDetection, build_lvis_dataset
from cora.data.synthetic import NOVEL_SHAPES, SHAPES, write_synthetic
from cora.data.transforms import eval_transforms

BASE = [s for s in SHAPES if s not in NOVEL_SHAPES]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_synthetic(out, num_images=16, seed=1, val_fraction=0.25)  # seed 1: crowds in train
    return out


def load(path):
    return json.loads(path.read_text())


def edited(tmp_path, shapes, name, edit):
    """A copy of shapes/<name> changed by edit(data), written to tmp_path (images stay under shapes)."""
    data = load(shapes / name)
    edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_items(shapes):
    data = load(shapes / "instances_train.json")
    ds = CocoDetection(shapes / "instances_train.json", shapes)
    assert len(ds) == len(data["images"]) == 12 and ds.vocabulary == list(SHAPES) and ds.num_classes == 8
    assert ds.category_ids == list(range(1, 9)) and ds.label_of[3] == 2 and ds.split is None
    anns = [a for a in data["annotations"] if not a["iscrowd"]]
    assert any(a["iscrowd"] for a in data["annotations"])  # the crowds are skipped below
    total = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert target["image_id"] == ds.image_ids[i] == data["images"][i]["id"]
        assert target["orig_size"].tolist() == target["size"].tolist() == [128, 128]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        mine = [a for a in anns if a["image_id"] == target["image_id"]]
        expected = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)]
        assert target["boxes"].tolist() == expected
        assert [ds.category_ids[label] for label in target["labels"].tolist()] == [a["category_id"] for a in mine]
        cx = (target["boxes"][:, 0] + target["boxes"][:, 2]) / 2 / 128
        assert torch.allclose(target["boxes_cxcywh"][:, 0], cx)
        total += len(target["boxes"])
    assert total == len(anns)


def test_base_vocabulary(shapes):
    ds = CocoDetection(shapes / "instances_train.json", shapes, vocabulary="base", split=shapes / "split.json")
    assert ds.vocabulary == BASE and ds.split.novel_names == list(NOVEL_SHAPES)
    data = load(shapes / "instances_train.json")
    base_ids = {c["id"] for c in data["categories"] if c["name"] in BASE}
    base_anns = [a for a in data["annotations"] if a["category_id"] in base_ids and not a["iscrowd"]]
    assert sum(len(ds[i][1]["labels"]) for i in range(len(ds))) == len(base_anns)
    kept = CocoDetection(shapes / "instances_train.json", shapes, "base", shapes / "split.json", drop_empty=True)
    assert kept.image_ids == sorted({a["image_id"] for a in base_anns}) and len(kept) <= len(ds)
    novel = CocoDetection(shapes / "instances_train.json", shapes, "novel", shapes / "split.json")
    assert novel.vocabulary == list(NOVEL_SHAPES) and novel.category_ids == [6, 7, 8]


def test_vocabulary_list_keeps_its_order(shapes):
    ds = CocoDetection(shapes / "instances_val.json", shapes, vocabulary=["star", "circle"])
    assert ds.vocabulary == ["star", "circle"] and ds.category_ids == [4, 1]
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    assert set(labels.tolist()) <= {0, 1}


def test_vocabulary_errors(shapes):
    with pytest.raises(ValueError, match="'circel' \\(did you mean 'circle'\\?\\)"):
        CocoDetection(shapes / "instances_val.json", shapes, vocabulary=["star", "circel"])
    with pytest.raises(ValueError, match="'bse' \\(did you mean 'base'\\?\\)"):
        CocoDetection(shapes / "instances_val.json", shapes, vocabulary="bse")
    with pytest.raises(ValueError, match="repeated"):
        CocoDetection(shapes / "instances_val.json", shapes, vocabulary=["star", "star"])
    with pytest.raises(ValueError, match="COCO OVD split names not among"):  # the default split is COCO's
        CocoDetection(shapes / "instances_val.json", shapes, vocabulary="base")


def test_crowd_ignore_and_degenerate_boxes_are_skipped(tmp_path, shapes):
    def edit(data):
        anns = [a for a in data["annotations"] if a["image_id"] == 1 and not a["iscrowd"]]
        anns[0]["iscrowd"] = 1
        anns[1]["bbox"] = [10, 10, 0, 5]          # no width
        data["annotations"] += [
            dict(anns[2], id=90001, bbox=[200, 10, 5, 5]),   # outside the 128 x 128 image
            dict(anns[2], id=90002, bbox=[-5, -5, 4, 4]),    # outside, above-left
            dict(anns[2], id=90003, ignore=1),
            dict(anns[2], id=90004, bbox=[120, 120, 20, 20]),  # clipped to [120, 120, 128, 128]
        ]

    path = edited(tmp_path, shapes, "instances_train.json", edit)
    before = CocoDetection(shapes / "instances_train.json", shapes)[0][1]
    after = CocoDetection(path, shapes)[0][1]
    assert len(after["boxes"]) == len(before["boxes"]) - 2 + 1
    assert after["boxes"][-1].tolist() == [120, 120, 128, 128]


def test_missing_image_names_the_file_and_the_json(tmp_path, shapes):
    root = tmp_path / "root"
    shutil.copytree(shapes / "images", root / "images")
    (root / "images" / "000002.png").unlink()
    ds = CocoDetection(shapes / "instances_train.json", root)
    ds[0]
    with pytest.raises(FileNotFoundError, match="000002.png.*image id 2 of .*instances_train.json"):
        ds[1]


@pytest.mark.parametrize("edit, error, message", [
    (lambda d: d.pop("categories"), ValueError, "instances_train.json' has no 'categories'"),
    (lambda d: d.pop("images"), ValueError, "has no 'images' list"),
    (lambda d: d["annotations"][0].update(category_id=99), ValueError, "category_id 99"),
    (lambda d: d["images"][0].pop("file_name"), None, None),
])
def test_bad_jsons(tmp_path, shapes, edit, error, message):
    path = edited(tmp_path, shapes, "instances_train.json", edit)
    if error is None:
        ds = CocoDetection(path, shapes)
        with pytest.raises(ValueError, match="neither 'file_name' nor 'coco_url'"):
            ds[0]
    else:
        with pytest.raises(error, match=message):
            CocoDetection(path, shapes)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        CocoDetection(tmp_path / "nope.json", shapes)


def test_transforms_and_loader(shapes):
    ds = CocoDetection(shapes / "instances_val.json", shapes, transforms=eval_transforms(256, 512))
    image, target = ds[0]
    assert image.shape == (3, 256, 256) and target["size"].tolist() == [256, 256]
    assert target["orig_size"].tolist() == [128, 128]
    assert torch.allclose(target["boxes"], CocoDetection(shapes / "instances_val.json", shapes)[0][1]["boxes"] * 2)
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_fn)))
    assert len(images) == len(targets) == 3


def test_build_dataset(shapes):
    train = build_dataset(shapes / "instances_train.json", shapes, train=True, split=shapes / "split.json")
    assert train.vocabulary == BASE and all(len(train[i][1]["labels"]) for i in range(len(train)))
    val = build_dataset(shapes / "instances_val.json", shapes, train=False, split=shapes / "split.json",
                        transforms=eval_transforms(160, 200))
    assert val.vocabulary == list(SHAPES) and min(val[0][0].shape[-2:]) == 160


def test_lvis_dataset(shapes):
    data = load(shapes / "lvis_val.json")
    ds = LvisDetection(shapes / "lvis_val.json", shapes)
    assert ds.vocabulary == list(SHAPES) and len(ds) == 4
    for i in range(len(ds)):
        image, target = ds[i]
        entry = data["images"][i]
        assert target["neg_category_ids"].tolist() == entry["neg_category_ids"]
        assert target["not_exhaustive_category_ids"].tolist() == entry["not_exhaustive_category_ids"]
        assert target["neg_labels"].tolist() == [c - 1 for c in entry["neg_category_ids"]]
        assert len(target["boxes"]) == sum(a["image_id"] == entry["id"] for a in data["annotations"])
    base = build_lvis_dataset(shapes / "lvis_train.json", shapes, train=True)  # split "lvis": rare = novel
    assert base.vocabulary == BASE
    rare_free = base[0][1]
    assert set(rare_free["neg_labels"].tolist()) <= set(range(len(BASE)))


def test_lvis_names_and_file_name_key(tmp_path, shapes):
    write_synthetic(tmp_path, num_images=3, seed=0, colour_classes=True)
    ds = LvisDetection(tmp_path / "lvis_train.json", tmp_path, vocabulary=["red circle", "blue_star"])
    assert ds.vocabulary == ["red circle", "blue star"]

    def to_file_name(data):  # LVIS v0.5 style entries
        for img in data["images"]:
            img["file_name"] = img.pop("coco_url").split("/", 3)[-1]

    (tmp_path / "v05").mkdir()
    path = edited(tmp_path / "v05", tmp_path, "lvis_train.json", to_file_name)
    a, b = LvisDetection(path, tmp_path)[0], LvisDetection(tmp_path / "lvis_train.json", tmp_path)[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
