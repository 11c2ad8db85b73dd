"""Joint image / box transforms: callables `(image, target) -> (image, target)`, composed with Compose.

    train = train_transforms()     # flip; multi-scale 480..800 (max 1333), or resize + crop + multi-scale
    small = scaled_train_transforms(128, 192)   # the same recipe for small images (sizes x 128 / 800)
    val = eval_transforms()        # short side 800, long side at most 1333

image: Tensor[3, H, W] float in [0, 1]. target: a dict with
    "boxes": Tensor[N, 4] float xyxy in pixels of `image` (pixel i spans [i, i + 1));
    "size": Tensor[2] int64 (h, w) of `image`, updated by every transform that changes it;
    per-box entries (PER_BOX_KEYS present, e.g. "labels" Tensor[N]) are kept aligned with "boxes".
Other keys pass through unchanged; datasets add "boxes_cxcywh" after the transforms (see with_cxcywh).

Randomness: every random transform takes `generator` (a torch.Generator). None (the default) draws from
torch's global RNG, which DataLoader seeds differently in each worker; a generator passed here is copied
into each worker as is, so all workers would then repeat the same augmentation sequence.
No normalisation here: CORA normalises inside the model (CLIP's mean / std), so datasets return images in
[0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cora.preprocess import resize_image, resized_size

TRAIN_SCALES = tuple(range(480, 801, 32))  # DETR / CORA multi-scale training: short side 480, 512, ..., 800
PER_BOX_KEYS = ("boxes", "labels", "area", "iscrowd", "category_ids")

Transform = Callable[[Tensor, dict], "tuple[Tensor, dict]"]


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _image_size(image: Tensor) -> tuple[int, int]:
    if image.dim() != 3:
        raise ValueError(f"image must be Tensor[C, H, W], got {list(image.shape)}")
    return int(image.shape[-2]), int(image.shape[-1])


def keep_boxes(target: dict, keep: Tensor) -> dict:
    """target with its per-box entries (PER_BOX_KEYS) indexed by `keep` (bool mask or indices)."""
    return {k: (v[keep] if k in PER_BOX_KEYS and isinstance(v, Tensor) else v) for k, v in target.items()}


def with_cxcywh(target: dict) -> dict:
    """Adds "boxes_cxcywh": Tensor[N, 4] (cx, cy, w, h) normalised by target["size"] (h, w)."""
    h, w = (float(v) for v in target["size"])
    x1, y1, x2, y2 = target["boxes"].unbind(-1)
    cxcywh = torch.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], dim=-1)
    return {**target, "boxes_cxcywh": cxcywh}


def clip_boxes(target: dict) -> dict:
    """Clips "boxes" to the image (target["size"]) and drops boxes left with no area."""
    if "boxes" not in target:
        return target
    h, w = (float(v) for v in target["size"])
    boxes = target["boxes"].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return keep_boxes({**target, "boxes": boxes}, keep)


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirrors image and boxes with probability p: x -> W - x."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        if _rand(self.generator) >= self.p:
            return image, target
        _, w = _image_size(image)
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=-1)
        return image.flip(-1), target


def resize(image: Tensor, target: dict, size: int, max_size: int | None = None) -> tuple[Tensor, dict]:
    """Resizes the short side to `size` (long side <= max_size) with the detector's rule and pixels
    (cora.preprocess.resized_size / resize_image), so training and evaluation see what `detect` sees; boxes
    scaled by (w'/w, h'/h)."""
    h, w = _image_size(image)
    nh, nw = resized_size(h, w, size, max_size)
    if (nh, nw) == (h, w):
        return image, {**target, "size": torch.tensor([h, w])}
    image = resize_image(image, (nh, nw))
    target = {**target, "size": torch.tensor([nh, nw])}
    if "boxes" in target:
        target["boxes"] = target["boxes"] * target["boxes"].new_tensor([nw / w, nh / h, nw / w, nh / h])
    if "area" in target:
        target["area"] = target["area"] * (nw * nh / (w * h))
    return image, target


class RandomResize:
    """Resizes the short side to one of `sizes`, chosen uniformly (long side capped at max_size)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None, generator: torch.Generator | None = None):
        if not sizes or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive ints, got {sizes!r}")
        self.sizes, self.max_size, self.generator = [int(s) for s in sizes], max_size, generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        size = self.sizes[_randint(0, len(self.sizes) - 1, self.generator)] if len(self.sizes) > 1 else self.sizes[0]
        return resize(image, target, size, self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize({self.sizes}, max_size={self.max_size})"


class Resize(RandomResize):
    """Deterministic resize: short side `size`, long side <= max_size."""

    def __init__(self, size: int, max_size: int | None = None):
        super().__init__([size], max_size)

    def __repr__(self) -> str:
        return f"Resize({self.sizes[0]}, max_size={self.max_size})"


def crop(image: Tensor, target: dict, top: int, left: int, height: int, width: int) -> tuple[Tensor, dict]:
    """Crops rows [top, top + height) and columns [left, left + width); boxes shifted, clipped to the
    crop, and dropped when nothing of them is left."""
    image = image[:, top:top + height, left:left + width]
    target = {**target, "size": torch.tensor([int(image.shape[-2]), int(image.shape[-1])])}
    if "boxes" in target:
        target["boxes"] = target["boxes"] - target["boxes"].new_tensor([left, top, left, top])
        target = clip_boxes(target)
    return image, target


class RandomSizeCrop:
    """A random crop of width and height drawn uniformly from [min_size, max_size] (each capped at the
    image's side), at a uniform random position."""

    def __init__(self, min_size: int, max_size: int, generator: torch.Generator | None = None):
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size, self.generator = min_size, max_size, generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        h, w = _image_size(image)
        ch = min(h, _randint(self.min_size, max(self.min_size, min(h, self.max_size)), self.generator))
        cw = min(w, _randint(self.min_size, max(self.min_size, min(w, self.max_size)), self.generator))
        top, left = _randint(0, h - ch, self.generator), _randint(0, w - cw, self.generator)
        return crop(image, target, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"RandomSizeCrop({self.min_size}, {self.max_size})"


class RandomSelect:
    """Applies `first` with probability p, else `second`."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5, generator: torch.Generator | None = None):
        self.first, self.second, self.p, self.generator = first, second, p, generator

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        return (self.first if _rand(self.generator) < self.p else self.second)(image, target)


def train_transforms(
    scales: Sequence[int] = TRAIN_SCALES,
    max_size: int = 1333,
    crop_resize: Sequence[int] = (400, 500, 600),
    crop_size: tuple[int, int] = (384, 600),
    generator: torch.Generator | None = None,
) -> Compose:
    """CORA's (DETR's) training recipe: random horizontal flip, then either a multi-scale resize (short side
    from `scales`, long side <= max_size), or with p = 0.5 a resize to `crop_resize`, a random crop of
    `crop_size` and the multi-scale resize."""
    multiscale = RandomResize(scales, max_size, generator)
    return Compose([
        RandomHorizontalFlip(0.5, generator),
        RandomSelect(
            multiscale,
            Compose([RandomResize(crop_resize, None, generator), RandomSizeCrop(*crop_size, generator), multiscale]),
            p=0.5, generator=generator,
        ),
    ])


def scaled_train_transforms(min_size: int, max_size: int, generator: torch.Generator | None = None) -> Compose:
    """train_transforms with every size scaled by min_size / 800 (small images: the tiny preset, the
    synthetic shapes). min_size=800, max_size=1333 gives the standard recipe."""
    f = min_size / 800

    def scale(sizes):
        return sorted({max(1, round(v * f)) for v in sizes})

    return train_transforms(scale(TRAIN_SCALES), max_size, scale((400, 500, 600)), tuple(scale((384, 600))), generator)


def eval_transforms(min_size: int = 800, max_size: int = 1333) -> Compose:
    """Evaluation: short side `min_size`, long side <= max_size (cora.config.InferenceConfig's sizes)."""
    return Compose([Resize(min_size, max_size)])
