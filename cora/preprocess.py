"""THE pre-processing of every detection path: resize rule, padding, letterbox, boxes back to the originals.

`CORA.detect`, `cora eval`, `cora relabel`, the runtimes of exported graphs (ONNX Runtime, TensorRT) and the
export's parity cases all call these functions, so an image becomes the same padded pixels everywhere:

    batch, sizes, originals = letterbox(images, min_size=800, max_size=1333)    # [B, 3, H, W], [B, 2], [B, 2]
    boxes, scores, labels = detector(batch, sizes, text_embeddings, prior)      # padded detections
    results = to_original(boxes, scores, labels, sizes, originals)             # per image, original pixels

Resize rule: scale = min(min_size / shorter side, max_size / longer side) (a fixed (H, W) instead: the
largest scale that fits), the new size is round(side * scale) (at least 1), pixels by bilinear interpolation
with antialiasing (`torch.nn.functional.interpolate`, align_corners=False), clamped to [0, 1]. The batch is
zero-padded at the bottom / right to multiples of SIZE_DIVISIBILITY (or to the fixed size). Training's random
resizing (cora.data.transforms) draws its sizes but resizes with `resized_size` / `resize_image` too.

The checks of the detector inputs live here too (`image_list`, `check_text_embeddings`, `check_class_prior`,
`check_image_sizes`), so `CORA.detect` and the runtimes refuse the same inputs with the same message, naming
the input, before any graph sees them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Stride of CLIP's layer4: padded sizes are multiples of it, so every feature map cell covers whole pixels.
SIZE_DIVISIBILITY = 32


def resized_size(h: int, w: int, min_size: int, max_size: int | None,
                 fixed_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(h, w) in pixels after resizing: shorter side `min_size`, longer side at most `max_size` (None: no
    cap), or the largest size with the same aspect that fits `fixed_size` (H, W)."""
    if fixed_size is not None:
        scale = min(fixed_size[0] / h, fixed_size[1] / w)
        return min(max(1, round(h * scale)), fixed_size[0]), min(max(1, round(w * scale)), fixed_size[1])
    scale = min_size / min(h, w)
    if max_size is not None:
        scale = min(scale, max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Tensor[3, h, w] float in [0, 1] -> Tensor[3, *size] (bilinear, antialiased, clamped to [0, 1])."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.clamp(0, 1)


def padded_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The smallest (H, W), multiples of SIZE_DIVISIBILITY, that holds every (h, w)."""
    return tuple(-(-max(v) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for v in zip(*sizes))


def pad_batch(images: Sequence[Tensor], size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """B Tensor[3, h_i, w_i] -> (Tensor[B, 3, H, W] zero-padded at the bottom / right, Tensor[B, 2] int64
    (h_i, w_i)), on the images' device. (H, W) = `size`, or `padded_size` of the images."""
    sizes = [(int(i.shape[1]), int(i.shape[2])) for i in images]
    ph, pw = size if size is not None else padded_size(sizes)
    batch = images[0].new_zeros(len(images), 3, ph, pw)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    return batch, torch.tensor(sizes, dtype=torch.int64, device=batch.device)


def as_tensor(x, name: str) -> Tensor:
    """A numpy array or torch Tensor as a Tensor (numpy shares memory, a read-only array is copied: torch
    tensors are always writable); anything else is refused naming `name`."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a numpy array or torch Tensor, got {type(x).__name__}")
    return x


def _value_range(x: Tensor) -> tuple[float, float]:
    """(min, max) of a non-empty float tensor; NaN when it holds a NaN."""
    lo, hi = torch.aminmax(x.detach())
    return float(lo), float(hi)


def check_text_embeddings(text_embeddings, embed_dim: int | None = None) -> Tensor:
    """Tensor / ndarray [K, D] float, K >= 1, D = embed_dim (when given), every value finite -> the Tensor."""
    t = as_tensor(text_embeddings, "text_embeddings")
    if t.dim() != 2 or t.shape[0] == 0 or (embed_dim is not None and t.shape[1] != embed_dim):
        expected = f"[K, {embed_dim}]" if embed_dim is not None else "[K, D]"
        raise ValueError(f"text_embeddings must be {expected} with K >= 1, got shape {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"text_embeddings must be floating point, got {t.dtype}")
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValueError(f"text_embeddings must be finite: {bad} of {t.shape[0]} rows hold NaN or Inf")
    return t


def check_class_prior(class_prior, k: int) -> Tensor | None:
    """Tensor / ndarray [K] float, each weight finite and >= 0 (None stays None: all ones) -> the Tensor."""
    if class_prior is None:
        return None
    p = as_tensor(class_prior, "class_prior")
    if tuple(p.shape) != (k,) or not p.is_floating_point():
        raise ValueError(f"class_prior must be a float [K] = [{k}] (one weight per class), got {p.dtype} {list(p.shape)}")
    lo, hi = _value_range(p)
    if not (0 <= lo and hi < math.inf):  # NaN fails both
        raise ValueError(f"class_prior must hold finite weights >= 0, got values in [{lo}, {hi}]")
    return p


def check_image_sizes(image_sizes, batch_shape: Sequence[int]) -> Tensor:
    """Tensor / ndarray [B, 2] integer (h, w) with 1 <= h <= H and 1 <= w <= W of the batch [B, 3, H, W]."""
    s = as_tensor(image_sizes, "image_sizes")
    b, _, h, w = batch_shape
    if tuple(s.shape) != (b, 2) or s.is_floating_point() or s.dtype == torch.bool:
        raise ValueError(f"image_sizes must be an integer [B, 2] = [{b}, 2] of (h, w), got {s.dtype} {list(s.shape)}")
    if not ((s >= 1).all() and (s[:, 0] <= h).all() and (s[:, 1] <= w).all()):
        raise ValueError(f"image_sizes must be (h, w) with 1 <= h <= {h} and 1 <= w <= {w} (the batch's size), "
                         f"got {s.tolist()}")
    return s


def image_list(images) -> list[Tensor]:
    """Tensor / ndarray [B, 3, H, W] or a list of [3, H, W], float RGB in [0, 1] -> list of float Tensor[3, H, W].
    Integer images (uint8) and float ones outside [0, 1] (0..255, mean/std-normalised, NaN) are refused: the
    model normalises inside, and a wrong range detects nothing without a word."""
    if isinstance(images, (np.ndarray, Tensor)):
        images = as_tensor(images, "images")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] or a list of [3, H, W] (RGB), got shape {list(images.shape)}")
        images = list(images)
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"images must be [B, 3, H, W] or a non-empty list of [3, H, W], got {type(images).__name__}")
    out = []
    for i, img in enumerate(images):
        img = as_tensor(img, f"images[{i}]")
        if img.dim() != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
            raise ValueError(f"images[{i}] must be [3, H, W] RGB, got shape {list(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"images[{i}] must be float in [0, 1], got {img.dtype} (divide uint8 images by 255)")
        lo, hi = _value_range(img)
        if not (0 <= lo and hi <= 1):  # NaN fails both
            hint = " (divide 0..255 images by 255)" if 1 < hi <= 255 and lo >= 0 else ""
            raise ValueError(f"images[{i}] must be float RGB in [0, 1], got values in [{lo:g}, {hi:g}]{hint}")
        out.append(img)
    return out


def letterbox(images, min_size: int, max_size: int, fixed_size: tuple[int, int] | None = None,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Resize and pad a batch: what every detector input goes through.

    images: see `image_list`. fixed_size: (H, W) of a static-size graph; None = the resize rule with the
    batch padded to multiples of SIZE_DIVISIBILITY.
    Returns (batch Tensor[B, 3, H, W] `dtype` on `device`, resized sizes Tensor[B, 2] int64 (h, w) = each
    image's valid top-left region, original sizes Tensor[B, 2] int64 (h, w)).
    """
    resized, originals = [], []
    for img in image_list(images):
        h, w = int(img.shape[1]), int(img.shape[2])
        resized.append(resize_image(img.to(device=device, dtype=dtype), resized_size(h, w, min_size, max_size, fixed_size)))
        originals.append((h, w))
    batch, sizes = pad_batch(resized, fixed_size)
    return batch, sizes, torch.tensor(originals, dtype=torch.int64, device=batch.device)


def to_original(boxes, scores, labels, sizes, originals) -> list[dict[str, Tensor]]:
    """Padded detections -> per image {"boxes" Tensor[m, 4] xyxy original pixels (clipped to the image),
    "scores" Tensor[m], "labels" Tensor[m] int64}, empty slots (label -1) dropped.

    boxes [B, M, 4] xyxy in pixels of the resized images, scores [B, M], labels [B, M] (numpy or torch);
    sizes, originals: [B, 2] (h, w) of the resized and the original images."""
    boxes, scores, labels, sizes, originals = (torch.as_tensor(x) for x in (boxes, scores, labels, sizes, originals))
    scale = (originals / sizes).flip(-1).repeat(1, 2).to(boxes)                  # [B, 4] (w, h, w, h) ratios
    limit = originals.flip(-1).repeat(1, 2).to(boxes)                            # [B, 4]
    out = []
    for i in range(boxes.shape[0]):
        keep = labels[i] >= 0
        b = torch.minimum((boxes[i][keep] * scale[i]).clamp(min=0), limit[i])
        out.append({"boxes": b, "scores": scores[i][keep], "labels": labels[i][keep].long()})
    return out
