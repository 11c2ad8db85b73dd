"""A procedurally drawn shapes dataset in COCO and LVIS format: unit tests, smoke training, the demo.

    write_synthetic("shapes", num_images=20, seed=0, size=(128, 128))
    CocoDetection("shapes/instances_train.json", "shapes", vocabulary="base")
    LvisDetection("shapes/lvis_val.json", "shapes")

Layout of OUT:
    images/000001.png ...            RGB PNGs, H x W
    instances_train.json / _val.json COCO format (file_name "images/000001.png": image_root is OUT)
    lvis_train.json / lvis_val.json  LVIS format: the same images (`coco_url` ".../images/000001.png") and
                                     boxes; categories with `synset`, `frequency`, image / instance counts;
                                     per image `neg_category_ids` and `not_exhaustive_category_ids`
    split.json                       {"base": [names], "novel": [names]} (cora.data.splits.load_split)

Images: a textured background (smooth noise, a gradient or stripes, in muted colours, plus pixel noise),
then 2..max_objects saturated shapes (circle, square, triangle, star, cross, ring, heart, hexagon) of
varied sizes, colours and rotations. Shapes overlap, but each keeps at least 60% of its pixels visible;
boxes are tight around the visible pixels (xywh, integer pixel edges), segmentations are RLE. With
probability 0.15 an image also holds a crowd: a cluster of small shapes of one class, annotated as one
`iscrowd: 1` box (COCO) or as a not-exhaustive category (LVIS, which has no crowd boxes).

Classes: the shape names (default), or "<colour> <shape>" (colour_classes=True: 48 classes); both read as
CLIP prompts. Ring, heart and hexagon are novel (LVIS frequency "r"); circle, square, triangle are "f",
star and cross "c". Everything is a function of (seed, image index): the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cora.fileio import write_json

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "hexagon")
NOVEL_SHAPES = ("ring", "heart", "hexagon")
FREQUENCY = {"circle": "f", "square": "f", "triangle": "f", "star": "c", "cross": "c", "ring": "r", "heart": "r",
             "hexagon": "r"}
COLOURS = {"red": (215, 35, 35), "green": (35, 165, 55), "blue": (35, 75, 215), "yellow": (240, 210, 30),
           "purple": (135, 45, 180), "orange": (245, 125, 25)}
MIN_VISIBLE = 0.6   # a shape may hide at most 40% of an earlier one
CROWD_PROB = 0.15
NEG_PROB = 0.8      # LVIS: an absent category is listed in neg_category_ids with this probability


def synthetic_categories(colour_classes: bool = False) -> list[dict]:
    """COCO categories [{"id", "name", "supercategory", "shape", "colour"}]; ids from 1. "colour" is None
    for shape-only classes (the colour is then random)."""
    pairs = [(s, c) for s in SHAPES for c in COLOURS] if colour_classes else [(s, None) for s in SHAPES]
    return [{"id": i + 1, "name": f"{c} {s}" if c else s, "supercategory": "shape", "shape": s, "colour": c}
            for i, (s, c) in enumerate(pairs)]


def _polygon(n: int, radius: float, inner: float | None, rotation: float, s: int) -> list[tuple[float, float]]:
    """Regular n-gon (or n-pointed star when `inner` is given) centred in an s x s box."""
    c, points = (s - 1) / 2, []
    for k in range(n * (2 if inner else 1)):
        r = radius * (inner if inner and k % 2 else 1.0)
        a = rotation + 2 * math.pi * k / (n * (2 if inner else 1)) - math.pi / 2
        points.append((c + r * math.cos(a), c + r * math.sin(a)))
    return points


def shape_mask(shape: str, s: int, rotation: float) -> np.ndarray:
    """bool [s, s]: the shape drawn to fill an s x s box (rotation in radians, ignored where it would
    change the shape's name: squares and crosses stay axis-aligned)."""
    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    r = (s - 1) / 2
    if shape in ("circle", "ring"):
        draw.ellipse([0, 0, s - 1, s - 1], fill=255)
        if shape == "ring":
            t = max(1.0, 0.24 * s)
            draw.ellipse([t, t, s - 1 - t, s - 1 - t], fill=0)
    elif shape == "square":
        draw.rectangle([0, 0, s - 1, s - 1], fill=255)
    elif shape == "cross":
        t = max(1.0, 0.34 * s)
        draw.rectangle([(s - t) / 2, 0, (s + t) / 2 - 1, s - 1], fill=255)
        draw.rectangle([0, (s - t) / 2, s - 1, (s + t) / 2 - 1], fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r, None, rotation, s), fill=255)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, r, None, rotation, s), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(5, r, 0.45, rotation, s), fill=255)
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        x, y = x * np.cos(rotation) - y * np.sin(rotation), x * np.sin(rotation) + y * np.cos(rotation)
        x, y = (x - x.min()) / np.ptp(x) * (s - 1), (y - y.min()) / np.ptp(y) * (s - 1)  # fill the box
        draw.polygon(list(zip(x.tolist(), y.tolist())), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return np.asarray(img) > 127


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float [h, w, 3] in 0..255: two muted colours mixed by smooth noise, a gradient or stripes."""
    grey = rng.uniform(70, 190, size=(2, 1))
    c1, c2 = np.clip(grey + rng.uniform(-25, 25, size=(2, 3)), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # smooth noise: coarse random grid, bilinear upsampling
        coarse = Image.fromarray(rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16)), dtype=np.uint8))
        t = np.asarray(coarse.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255
    else:
        a = rng.uniform(0, np.pi)
        proj = xx * np.cos(a) + yy * np.sin(a)
        if kind == 1:  # gradient
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        else:          # stripes
            t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(5, 18))
    image = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return image + rng.normal(0, 8, size=(h, w, 3))


def _place(rng, owner, full_areas, colours, mask, colour, h, w, tries: int = 8):
    """A (y, x) where `mask` fits inside the image, covers no earlier shape of the same colour (their outlines
    would merge) and leaves every earlier instance >= MIN_VISIBLE visible; None if `tries` draws fail."""
    s_h, s_w = mask.shape
    for _ in range(tries):
        y, x = int(rng.integers(0, h - s_h + 1)), int(rng.integers(0, w - s_w + 1))
        covered = owner[y:y + s_h, x:x + s_w][mask]
        covered = covered[covered >= 0]
        if covered.size:
            lost = np.bincount(covered, minlength=len(full_areas))
            visible = np.bincount(owner[owner >= 0], minlength=len(full_areas))
            if np.any((visible - lost) < MIN_VISIBLE * np.asarray(full_areas)):
                continue
            if any(colours[j] == colour for j in np.flatnonzero(lost)):
                continue
        return y, x
    return None


def _paint(rng, image, owner, mask, y, x, colour, k):
    """Paints the shape at (y, x) in `colour` (+ jitter, shading, noise) and marks its pixels as instance k."""
    s_h, s_w = mask.shape
    rgb = np.clip(np.asarray(colour, np.float32) + rng.normal(0, 12, 3), 0, 255)
    shade = np.linspace(-1, 1, s_h, dtype=np.float32)[:, None, None] * rng.uniform(-18, 18)
    fill = rgb + shade + rng.normal(0, 5, size=(s_h, s_w, 3))
    window = image[y:y + s_h, x:x + s_w]
    window[mask] = fill[mask]
    owner[y:y + s_h, x:x + s_w][mask] = k


def render_image(seed: int, index: int, height: int, width: int, categories: list[dict],
                 max_objects: int = 6) -> tuple[np.ndarray, list[dict]]:
    """Image `index` of the dataset of `seed`: (uint8 [height, width, 3] RGB, instances), each instance
    {"category_id", "mask": bool [height, width] (visible pixels), "iscrowd": 0 / 1}."""
    rng = np.random.default_rng([seed, index])
    side = min(height, width)
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int64)  # which instance each pixel shows (-1: background)
    instances, full_areas, colours = [], [], []  # per instance: annotation, pixels when drawn, base colour

    def category():
        cat = categories[int(rng.integers(len(categories)))]
        colour = COLOURS[cat["colour"]] if cat["colour"] else list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        return cat, colour

    if rng.random() < CROWD_PROB:  # drawn first: the crowd lies under the other shapes
        cat, colour = category()
        region = int(rng.integers(int(0.25 * side), int(0.4 * side) + 1))
        cy, cx = int(rng.integers(0, height - region + 1)), int(rng.integers(0, width - region + 1))
        for _ in range(int(rng.integers(4, 8))):
            s = int(rng.integers(max(5, int(0.06 * side)), max(6, int(0.1 * side)) + 1))
            mask = shape_mask(cat["shape"], s, rng.uniform(0, 2 * np.pi))
            y, x = cy + int(rng.integers(0, region - s + 1)), cx + int(rng.integers(0, region - s + 1))
            _paint(rng, image, owner, mask, y, x, colour, 0)
        instances.append({"category_id": cat["id"], "iscrowd": 1})
        full_areas.append(int((owner == 0).sum()))
        colours.append(colour)

    for _ in range(int(rng.integers(2, max(2, max_objects) + 1))):
        cat, colour = category()
        s = int(rng.integers(max(8, int(0.15 * side)), max(9, int(0.45 * side)) + 1))
        tilt = rng.uniform(-0.3, 0.3) if cat["shape"] == "heart" else rng.uniform(0, 2 * np.pi)  # hearts stay upright
        mask = shape_mask(cat["shape"], s, tilt)
        spot = _place(rng, owner, full_areas, colours, mask, colour, height, width)
        if spot is None:
            continue
        _paint(rng, image, owner, mask, *spot, colour, len(instances))
        instances.append({"category_id": cat["id"], "iscrowd": 0})
        full_areas.append(int(mask.sum()))
        colours.append(colour)

    for k, inst in enumerate(instances):
        inst["mask"] = owner == k
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _annotation(inst: dict, ann_id: int, image_id: int) -> dict:
    from pycocotools import mask as mask_utils

    mask = inst["mask"]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x, y = int(cols[0]), int(rows[0])
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": inst["category_id"],
            "bbox": [float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)],
            "area": float(mask.sum()), "iscrowd": inst["iscrowd"],
            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}}


def write_synthetic(out: str | os.PathLike, num_images: int = 20, seed: int = 0, size: tuple[int, int] = (128, 128),
                    val_fraction: float = 0.2, colour_classes: bool = False, max_objects: int = 6) -> dict[str, Path]:
    """Draws `num_images` images (the last round(num_images * val_fraction) are the validation set, at least
    one when num_images >= 2) and writes them with their jsons into `out` (see the module docstring).
    size: (height, width) in pixels, each >= 32. Returns the written files by role."""
    height, width = (int(v) for v in size)
    if num_images < 1 or height < 32 or width < 32:
        raise ValueError(f"need num_images >= 1 and a size of at least 32 x 32, got {num_images}, {height} x {width}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = min(num_images - 1, max(1 if num_images >= 2 else 0, round(num_images * val_fraction)))
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    categories = synthetic_categories(colour_classes)
    cat_ids = [c["id"] for c in categories]
    sets = {"train": ([], [], []), "val": ([], [], [])}  # images, annotations, LVIS image entries
    next_ann_id = 1
    for index in range(num_images):
        image_id = index + 1
        pixels, instances = render_image(seed, index, height, width, categories, max_objects)
        file_name = f"images/{image_id:06d}.png"
        Image.fromarray(pixels).save(out / file_name, format="PNG")
        images, annotations, lvis_images = sets["train" if index < num_images - num_val else "val"]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})
        for inst in instances:
            annotations.append(_annotation(inst, next_ann_id, image_id))
            next_ann_id += 1
        present = {i["category_id"] for i in instances if not i["iscrowd"]}
        crowd = sorted({i["category_id"] for i in instances if i["iscrowd"]})
        rng = np.random.default_rng([seed, index, 1])
        absent = [c for c in cat_ids if c not in present and c not in crowd]
        neg = [c for c, u in zip(absent, rng.random(len(absent))) if u < NEG_PROB]
        lvis_images.append({"id": image_id, "height": height, "width": width, "license": 1,
                            "coco_url": f"http://synthetic.invalid/{file_name}",
                            "neg_category_ids": neg, "not_exhaustive_category_ids": crowd})

    info = {"description": f"cora synthetic shapes, seed {seed}", "version": "1.0", "year": 2024}
    licenses = [{"id": 1, "name": "generated", "url": ""}]
    coco_categories = [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]} for c in categories]
    train_annotations = [a for a in sets["train"][1] if not a["iscrowd"]]
    written = {}
    for name, (images, annotations, lvis_images) in sets.items():
        written[f"coco_{name}"] = out / f"instances_{name}.json"
        write_json(written[f"coco_{name}"], {"info": info, "licenses": licenses, "images": images,
                                             "annotations": annotations, "categories": coco_categories})
        lvis_annotations = [{k: v for k, v in a.items() if k != "iscrowd"} for a in annotations if not a["iscrowd"]]
        written[f"lvis_{name}"] = out / f"lvis_{name}.json"
        write_json(written[f"lvis_{name}"], {"info": info, "licenses": licenses, "images": lvis_images,
                                             "annotations": lvis_annotations,
                                             "categories": _lvis_categories(categories, train_annotations)})
    split = {"base": [c["name"] for c in categories if c["shape"] not in NOVEL_SHAPES],
             "novel": [c["name"] for c in categories if c["shape"] in NOVEL_SHAPES]}
    written["split"] = out / "split.json"
    write_json(written["split"], split)
    return written


def _lvis_categories(categories: list[dict], train_annotations: list[dict]) -> list[dict]:
    """LVIS category entries; image / instance counts are over the training set, as in LVIS."""
    instances = {c["id"]: 0 for c in categories}
    images = {c["id"]: set() for c in categories}
    for a in train_annotations:
        instances[a["category_id"]] += 1
        images[a["category_id"]].add(a["image_id"])
    return [{"id": c["id"], "name": c["name"].replace(" ", "_"), "synset": f"{c['shape']}.n.01",
             "synonyms": [c["name"].replace(" ", "_")], "def": f"a {c['name']} drawn on a textured background",
             "frequency": FREQUENCY[c["shape"]], "image_count": len(images[c["id"]]),
             "instance_count": instances[c["id"]]} for c in categories]


def read_split(out: str | os.PathLike) -> dict[str, list[str]]:
    """The {"base", "novel"} names of a dataset written by write_synthetic."""
    with open(Path(out) / "split.json", encoding="utf-8") as f:
        return json.load(f)
