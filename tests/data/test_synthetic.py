"""The synthetic shapes dataset: determinism and the COCO / LVIS formats (no wall-clock assertions: timing is
for benchmarks)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cora.data.splits import load_split, lvis_ovd_split
from cora.data.synthetic import NOVEL_SHAPES, SHAPES, read_split, render_image, shape_mask, synthetic_categories, write_synthetic

FILES = ["instances_train.json", "instances_val.json", "lvis_train.json", "lvis_val.json", "split.json"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_synthetic(out, num_images=20, seed=0)
    return out


def all_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path, shapes):
    write_synthetic(tmp_path / "a", num_images=20, seed=0)
    assert all_bytes(tmp_path / "a") == all_bytes(shapes)
    write_synthetic(tmp_path / "b", num_images=20, seed=1)
    b = all_bytes(tmp_path / "b")
    assert b.keys() == all_bytes(shapes).keys() and b["images/000001.png"] != all_bytes(shapes)["images/000001.png"]


def test_image_i_does_not_depend_on_the_count(tmp_path, shapes):
    write_synthetic(tmp_path, num_images=5, seed=0)
    for i in range(1, 6):
        assert (tmp_path / f"images/{i:06d}.png").read_bytes() == (shapes / f"images/{i:06d}.png").read_bytes()


def test_files_and_split(shapes):
    assert all((shapes / f).is_file() for f in FILES)
    assert len(list((shapes / "images").glob("*.png"))) == 20
    split = read_split(shapes)
    assert split == {"base": [s for s in SHAPES if s not in NOVEL_SHAPES], "novel": list(NOVEL_SHAPES)}
    loaded = load_split(shapes / "split.json", shapes / "instances_val.json")
    assert loaded.novel_names == list(NOVEL_SHAPES)
    assert lvis_ovd_split(shapes / "lvis_val.json").novel_names == list(NOVEL_SHAPES)  # rare == novel


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' mask decoding under numpy 2
def test_coco_format(shapes):
    train, val = COCO(str(shapes / "instances_train.json")), COCO(str(shapes / "instances_val.json"))
    assert len(train.getImgIds()) == 16 and len(val.getImgIds()) == 4
    assert not set(train.getImgIds()) & set(val.getImgIds())
    assert [c["name"] for c in train.loadCats(train.getCatIds())] == list(SHAPES)
    anns = train.loadAnns(train.getAnnIds())
    assert len({a["id"] for a in anns}) == len(anns) > 40
    assert any(a["iscrowd"] for a in anns) and sum(a["iscrowd"] for a in anns) < len(anns) / 4
    for ann in anns:
        mask = train.annToMask(ann).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)  # tight on visible pixels
    image = train.loadImgs([1])[0]
    with Image.open(shapes / image["file_name"]) as png:
        assert png.mode == "RGB" and png.size == (image["width"], image["height"]) == (128, 128)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_shapes_are_painted_where_annotated(shapes):
    coco = COCO(str(shapes / "instances_train.json"))
    image = np.asarray(Image.open(shapes / "images/000002.png"), dtype=np.float32)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[2], iscrowd=False)):
        mask = coco.annToMask(ann).astype(bool)
        saturation = image.max(-1) - image.min(-1)
        assert np.median(saturation[mask]) > 2 * np.median(saturation[~mask])  # shapes are vivid, backgrounds muted


def test_lvis_format(shapes):
    lvis = json.loads((shapes / "lvis_train.json").read_text())
    coco = json.loads((shapes / "instances_train.json").read_text())
    assert [img["id"] for img in lvis["images"]] == [img["id"] for img in coco["images"]]
    assert len(lvis["annotations"]) == sum(1 for a in coco["annotations"] if not a["iscrowd"])
    assert all("iscrowd" not in a for a in lvis["annotations"])
    for cat in lvis["categories"]:
        assert {"id", "name", "synset", "frequency", "image_count", "instance_count"} <= cat.keys()
        assert cat["frequency"] in ("r", "c", "f") and (cat["frequency"] == "r") == (cat["name"] in NOVEL_SHAPES)
    counted = sum(c["instance_count"] for c in lvis["categories"])
    assert counted == len(lvis["annotations"])
    crowds = {(a["image_id"], a["category_id"]) for a in coco["annotations"] if a["iscrowd"]}
    for img in lvis["images"]:
        present = {a["category_id"] for a in lvis["annotations"] if a["image_id"] == img["id"]}
        assert img["coco_url"].endswith("/images/%06d.png" % img["id"])
        assert not set(img["neg_category_ids"]) & present
        assert {c for i, c in crowds if i == img["id"]} == set(img["not_exhaustive_category_ids"])
    assert any(img["not_exhaustive_category_ids"] for img in lvis["images"])


def test_lvis_api_loads_it(shapes):
    lvis = pytest.importorskip("lvis")
    api = lvis.LVIS(str(shapes / "lvis_val.json"))
    assert len(api.get_img_ids()) == 4 and len(api.get_cat_ids()) == len(SHAPES)


def test_colour_classes(tmp_path):
    write_synthetic(tmp_path, num_images=4, seed=0, size=(64, 96), colour_classes=True)
    coco = json.loads((tmp_path / "instances_train.json").read_text())
    names = [c["name"] for c in coco["categories"]]
    assert len(names) == 48 and names[:2] == ["red circle", "green circle"]
    lvis = json.loads((tmp_path / "lvis_train.json").read_text())
    assert lvis["categories"][0]["name"] == "red_circle"
    assert coco["images"][0]["height"] == 64 and coco["images"][0]["width"] == 96
    split = read_split(tmp_path)
    assert len(split["base"]) == 30 and "blue ring" in split["novel"]


def test_render_image_instances():
    pixels, instances = render_image(0, 3, 100, 120, synthetic_categories())
    assert pixels.shape == (100, 120, 3) and pixels.dtype == np.uint8
    masks = np.stack([i["mask"] for i in instances])
    assert masks.sum(0).max() == 1  # each pixel shows at most one instance


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_masks(shape):
    mask = shape_mask(shape, 20, 0.3)
    assert mask.shape == (20, 20) and 0.2 * 400 < mask.sum() <= 400
    ys, xs = np.nonzero(mask)
    assert xs.max() - xs.min() >= 14 and ys.max() - ys.min() >= 14


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 32 x 32"):
        write_synthetic(tmp_path, num_images=2, size=(16, 64))
    with pytest.raises(ValueError, match="num_images >= 1"):
        write_synthetic(tmp_path, num_images=0)
    with pytest.raises(ValueError, match="val_fraction"):
        write_synthetic(tmp_path, num_images=3, val_fraction=1.0)
    with pytest.raises(ValueError, match="unknown shape 'oval'"):
        shape_mask("oval", 10, 0.0)
