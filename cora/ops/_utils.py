"""Small helpers shared by the op wrappers."""

from __future__ import annotations

import torch
from torch import Tensor


def pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """`7` -> (7, 7); `(7, 9)` -> (7, 9). Raises ValueError naming `name` otherwise."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    """List of N Tensor[L_i, 4] (x1, y1, x2, y2), one per image -> Tensor[sum L_i, 5] (i, x1, y1, x2, y2)."""
    if not isinstance(boxes, (list, tuple)) or not all(isinstance(b, Tensor) for b in boxes):
        raise ValueError(f"boxes must be Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError("boxes is an empty list: give one Tensor[L, 4] per image (L may be 0)")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be Tensor[L, 4], got {list(b.shape)}")
    concat = torch.cat(list(boxes), dim=0)
    index = torch.cat(
        [torch.full((b.shape[0], 1), i, dtype=concat.dtype, device=concat.device) for i, b in enumerate(boxes)]
    )
    return torch.cat([index, concat], dim=1)


def batched_boxes_to_rois(boxes: Tensor) -> Tensor:
    """Tensor[B, N, 4] (N boxes per image) -> Tensor[B*N, 5] (batch index, x1, y1, x2, y2), with no Python
    loop over B (traceable with a dynamic batch)."""
    b, n = boxes.shape[:2]
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(b, n, 1)
    return torch.cat([index, boxes], dim=-1).reshape(-1, 5)


def is_tracing(t: Tensor) -> bool:
    """True under torch.compile / torch.export / jit tracing, where data-dependent checks can't run."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or type(t) is not Tensor
