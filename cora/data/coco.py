"""COCO-format detection datasets for open-vocabulary training and evaluation.

    train = CocoDetection("instances_train2017.json", "coco/train2017", vocabulary="base",
                          transforms=train_transforms(), drop_empty=True)
    image, target = train[0]
    train.vocabulary[target["labels"][0]], train.category_ids[target["labels"][0]]   # name, COCO category id

Crowd (`iscrowd: 1`) and ignored (`ignore: 1`) annotations are skipped, and so are boxes with no area
inside the image. See CocoDetection.__getitem__ for the target format.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cora import fileio
from cora.data.splits import Split, load_categories, load_split, unknown_names_message
from cora.data.transforms import clip_boxes, eval_transforms, train_transforms, with_cxcywh
from cora.io import image_tensor, read_image
from cora.vocabulary import category_name

VOCABULARIES = ("all", "base", "novel", "base+novel")  # named vocabularies; a list of class names also works


def read_json(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    data = fileio.read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} is not a COCO / LVIS instances json "
                         f"(expected an object, got {type(data).__name__})")
    return data


def image_file(image_root: str | os.PathLike, entry: dict, source: str = "the json") -> Path:
    """An image entry's file: `image_root / file_name`, or (LVIS v1 entries have no file_name) the last two
    parts of `coco_url`, `<folder>/<file>`, or `<file>` alone when image_root has no such folder."""
    image_root = Path(image_root)
    if entry.get("file_name"):
        return image_root / entry["file_name"]
    url = str(entry.get("coco_url") or "").rstrip("/")
    if "/" not in url:
        raise ValueError(f"{source}: image {entry.get('id')} has neither 'file_name' nor 'coco_url'")
    folder, name = url.split("/")[-2:]
    return image_root / folder / name if (image_root / folder).is_dir() else image_root / name


class CocoDetection(Dataset):
    """Images and boxes of a COCO instances json, labelled by their index in a vocabulary.

    Args:
        ann_file: instances json (`images`, `annotations`, `categories`).
        image_root: folder of the images: an image's path is `image_root / file_name`, or, when the entry has
            no `file_name` (LVIS v1), `image_root / <folder>/<file>` from the last two parts of `coco_url`
            (e.g. "train2017/000000391895.jpg": LVIS v1 val mixes COCO train and val images).
        vocabulary: the classes, in label order: "all" (every category, by id; the default), "base",
            "novel", "base+novel" (per `split`), or a list of category names (LVIS underscores optional).
            Annotations of other categories are dropped.
        split: "coco" / "lvis" / a split file / a Split (see cora.data.splits.load_split), exposed as
            `self.split`; default: `default_split` when `vocabulary` names a group, else none.
        transforms: `(image, target) -> (image, target)` applied to each item (see cora.data.transforms).
        drop_empty: leave out images with no annotation in the vocabulary (training).

    Attributes: vocabulary (list[str] names), category_ids (list[int]: label -> category id),
    label_of (dict: category id -> label), split (Split or None), image_ids (list[int]), ann_file.
    """

    default_split = "coco"

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_root: str | os.PathLike,
        vocabulary: str | Sequence[str] | None = "all",
        split: str | os.PathLike | Split | None = None,
        transforms: Callable | None = None,
        drop_empty: bool = False,
    ):
        self.ann_file = os.fspath(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        data = read_json(ann_file)
        categories = load_categories(data, where=repr(self.ann_file))
        self.split = None
        self.category_ids = self._vocabulary_ids(categories, vocabulary, split)
        names = {c["id"]: category_name(c) for c in categories}
        self.vocabulary = [names[i] for i in self.category_ids]
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids)}

        boxes, labels = self._index_annotations(data, set(names))
        images = data.get("images")
        if not isinstance(images, list):
            raise ValueError(f"{self.ann_file!r} has no 'images' list")
        if drop_empty:
            images = [img for img in images if img["id"] in boxes]
        self.images = images
        self.image_ids = [img["id"] for img in images]
        self._boxes, self._labels = boxes, labels

    def _vocabulary_ids(self, categories: list[dict], vocabulary, split) -> list[int]:
        all_ids = [c["id"] for c in categories]
        if split is not None or (isinstance(vocabulary, str) and vocabulary in VOCABULARIES[1:]):
            self.split = load_split(split if split is not None else self.default_split, categories)
        if vocabulary is None or vocabulary == "all":
            return all_ids
        if vocabulary in VOCABULARIES:
            return {"base": self.split.base_ids, "novel": self.split.novel_ids,
                    "base+novel": self.split.ovd_ids}[vocabulary]
        if isinstance(vocabulary, str):
            raise ValueError(unknown_names_message(
                f"vocabulary must be one of {', '.join(VOCABULARIES)} or a list of class names; unknown",
                [vocabulary], VOCABULARIES))
        names = list(vocabulary)
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if not names or repeated:
            raise ValueError(f"vocabulary must be non-empty without repeated names, got {names[:10]}")
        catalog = Split(tuple(all_ids), tuple(category_name(c) for c in categories), frozenset(), frozenset())
        try:
            return catalog.ids_of(names)
        except ValueError as e:
            raise ValueError(f"vocabulary of {self.ann_file!r}: {e}") from None

    def _index_annotations(self, data: dict, known_ids: set[int]) -> tuple[dict[int, np.ndarray], dict]:
        """Per image id: boxes float32 [n, 4] xyxy pixels, labels int64 [n] (vocabulary annotations only)."""
        sizes = {img["id"]: (img.get("height"), img.get("width")) for img in data.get("images", [])}
        rows = defaultdict(list)
        for ann in data.get("annotations", []):
            cid = ann["category_id"]
            if cid not in known_ids:
                raise ValueError(f"{self.ann_file!r}: annotation {ann.get('id')} has category_id {cid}, "
                                 "which is not among the json's categories")
            label = self.label_of.get(cid)
            if label is None or ann.get("iscrowd", 0) or ann.get("ignore", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            height, width = sizes.get(ann["image_id"], (None, None))
            x2, y2 = x + w, y + h
            if height is not None and width is not None:  # degenerate once clipped to the image
                x, y, x2, y2 = max(x, 0.0), max(y, 0.0), min(x2, float(width)), min(y2, float(height))
            if x2 > x and y2 > y:
                rows[ann["image_id"]].append((x, y, x2, y2, label))
        boxes = {i: np.asarray([r[:4] for r in rs], dtype=np.float32) for i, rs in rows.items()}
        labels = {i: np.asarray([r[4] for r in rs], dtype=np.int64) for i, rs in rows.items()}
        return boxes, labels

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    def __len__(self) -> int:
        return len(self.images)

    def image_labels(self, index: int) -> Tensor:
        """Tensor[n] int64: the vocabulary labels of image `index`'s annotations as indexed from the json (before
        transforms), without reading the image (e.g. for repeat-factor sampling, cora.data.sampling)."""
        labels = self._labels.get(self.images[index]["id"])
        return torch.from_numpy(labels.copy()) if labels is not None else torch.zeros(0, dtype=torch.int64)

    def image_path(self, index: int) -> Path:
        return image_file(self.image_root, self.images[index], self.ann_file)

    def _extra_target(self, info: dict) -> dict:
        """Hook for subclasses: more target entries from the image's json entry."""
        return {}

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        """Returns (image, target).

        image: Tensor[3, H, W] float32 RGB in [0, 1] (after `transforms`).
        target:
            "boxes": Tensor[N, 4] float32 xyxy in pixels of `image`;
            "boxes_cxcywh": Tensor[N, 4] float32 (cx, cy, w, h) normalised by the image's (w, h);
            "labels": Tensor[N] int64 indices into `vocabulary`;
            "image_id": int (the json's id); "orig_size": Tensor[2] int64 (h, w) of the file;
            "size": Tensor[2] int64 (h, w) of `image`.
        """
        info = self.images[index]
        path = self.image_path(index)
        try:
            image = image_tensor(read_image(path))  # the reader of evaluation and detect (16-bit scaled)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {str(path)!r} (image id {info['id']} of {self.ann_file!r}) "
                                    f"not found under image_root {str(self.image_root)!r}") from None
        h, w = image.shape[-2:]
        empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
        boxes, labels = self._boxes.get(info["id"], empty[0]), self._labels.get(info["id"], empty[1])
        size = torch.tensor([h, w])
        target = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels.copy()),
                  "image_id": info["id"], "orig_size": size, "size": size.clone(), **self._extra_target(info)}
        target = clip_boxes(target)  # the file's size rules when the json's height / width disagree
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, with_cxcywh(target)


def collate_fn(batch: list[tuple[Tensor, dict]]) -> tuple[list[Tensor], list[dict]]:
    """DataLoader collate: images of different sizes stay a list (the model pads them)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def build_dataset(ann_file, image_root, train: bool, split: str | Split | None = None, transforms=None,
                  dataset_class: type[CocoDetection] = CocoDetection) -> CocoDetection:
    """Training: base vocabulary, images without base boxes dropped, train_transforms() by default.
    Evaluation: base + novel vocabulary, every image, eval_transforms() by default."""
    if transforms is None:
        transforms = train_transforms() if train else eval_transforms()
    return dataset_class(ann_file, image_root, vocabulary="base" if train else "base+novel", split=split,
                         transforms=transforms, drop_empty=train)
