"""LVIS detection dataset: CocoDetection plus LVIS's federated-annotation fields.

    train = LvisDetection("lvis_v1_train.json", "coco", vocabulary="base", drop_empty=True)  # no rare classes
    val = LvisDetection("lvis_v1_val.json", "coco")                                         # all 1203 classes

LVIS v1 images are COCO 2017 images, referenced by `coco_url` ("http://.../train2017/000000391895.jpg"):
`image_root` is then the folder holding train2017/ and val2017/. Entries with a `file_name` (LVIS v0.5)
are read from `image_root / file_name`. Vocabulary names have underscores replaced by spaces
("traffic_light" -> "traffic light"). Groups: rare categories are novel, common and frequent ones base.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cora.data.coco import CocoDetection, build_dataset


class LvisDetection(CocoDetection):
    """See CocoDetection for the arguments (`split` defaults to "lvis": frequency "r" = novel).

    The target also holds, from the image's entry (for the federated evaluation):
        "neg_category_ids": Tensor[A] int64: categories verified absent from the image;
        "not_exhaustive_category_ids": Tensor[B] int64: categories whose instances are not all annotated;
        "neg_labels", "not_exhaustive_labels": the same as vocabulary indices (categories outside the
        vocabulary left out).
    """

    default_split = "lvis"

    def _to_labels(self, category_ids: list[int]) -> Tensor:
        return torch.tensor([self.label_of[c] for c in category_ids if c in self.label_of], dtype=torch.int64)

    def _extra_target(self, info: dict) -> dict:
        neg = [int(c) for c in info.get("neg_category_ids", [])]
        not_exhaustive = [int(c) for c in info.get("not_exhaustive_category_ids", [])]
        return {
            "neg_category_ids": torch.tensor(neg, dtype=torch.int64),
            "not_exhaustive_category_ids": torch.tensor(not_exhaustive, dtype=torch.int64),
            "neg_labels": self._to_labels(neg),
            "not_exhaustive_labels": self._to_labels(not_exhaustive),
        }


def build_lvis_dataset(ann_file, image_root, train: bool, split=None, transforms=None) -> LvisDetection:
    """build_dataset for LVIS: training on common + frequent classes, evaluation on all of them."""
    return build_dataset(ann_file, image_root, train, split, transforms, dataset_class=LvisDetection)
