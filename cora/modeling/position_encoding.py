"""Sine positional encodings of DAB-DETR as CORA uses them: one for feature-map cells, one for anchor boxes.

Both follow CORA's official code (github.com/tgxs002/CORA, `models/position_encoding.py` and
`gen_sineembed_for_position` in `models/dab_transformer.py`):

- `sine_position_embedding`: DETR's normalised sine embedding of a padded feature map, with DAB-DETR's
  half-cell offset (cell centres at `cumsum(valid) - 0.5`, normalised by the number of valid cells) and
  CORA's temperature 20 (`--pe_temperature`, default 20 in `main.py`; DETR uses 10000). Because it only
  counts valid cells, the embedding of an image's valid cells does not depend on how much it was padded.
- `anchor_sine_embedding`: the sine embedding of normalised box coordinates used for the decoder's
  positional queries, temperature 10000, coordinates emitted in the order (y, x, w, h).

Feature layout of both: for each coordinate, `num_pos_feats` values `[sin(t/T^(0/n)), cos(t/T^(0/n)),
sin(t/T^(2/n)), cos(t/T^(2/n)), ...]` with `t = 2*pi*coordinate` and `n = num_pos_feats`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _frequencies(num_pos_feats: int, temperature: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Tensor[num_pos_feats]: T^(2 * (i // 2) / num_pos_feats), the divisor of feature i."""
    index = torch.arange(num_pos_feats, dtype=dtype, device=device)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_pos_feats)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """Tensor[..., n] angles -> Tensor[..., n]: sin of the even features, cos of the odd ones, interleaved."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def _check_num_pos_feats(num_pos_feats: int) -> None:
    if not isinstance(num_pos_feats, int) or isinstance(num_pos_feats, bool) or num_pos_feats <= 0 \
            or num_pos_feats % 2:
        raise ValueError(f"num_pos_feats must be a positive even int, got {num_pos_feats!r}")


def sine_position_embedding(mask: Tensor, num_pos_feats: int = 128, temperature: float = 20.0) -> Tensor:
    """Normalised sine positional embedding of a padded feature map.

    Args:
        mask: Tensor[B, h, w] bool, True on padding. Valid cells form the top-left block of each image.
        num_pos_feats: features per axis (hidden_dim // 2); even.
        temperature: frequency base (CORA: 20).

    Returns:
        Tensor[B, 2 * num_pos_feats, h, w] float32: the y features first, then the x features. Cell (i, j)
        of an image with h' x w' valid cells has y = 2*pi*(i + 0.5)/(h' + 1e-6), x = 2*pi*(j + 0.5)/(w' + 1e-6)
        (the 1e-6 is the official code's epsilon). Values on padded cells are defined but meaningless.
    """
    if not isinstance(mask, Tensor) or mask.dim() != 3 or mask.dtype != torch.bool:
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a bool Tensor[B, h, w], got {got}")
    _check_num_pos_feats(num_pos_feats)
    valid = ~mask
    y = valid.cumsum(1, dtype=torch.float32) - 0.5  # [B, h, w]
    x = valid.cumsum(2, dtype=torch.float32) - 0.5  # [B, h, w]
    eps = 1e-6
    y = y / (y[:, -1:, :] + 0.5 + eps) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 0.5 + eps) * (2 * math.pi)
    freq = _frequencies(num_pos_feats, temperature, torch.float32, mask.device)
    pos_y = _interleave_sin_cos(y[..., None] / freq)  # [B, h, w, n]
    pos_x = _interleave_sin_cos(x[..., None] / freq)  # [B, h, w, n]
    return torch.cat((pos_y, pos_x), dim=-1).permute(0, 3, 1, 2)  # [B, h, w, 2n] -> [B, 2n, h, w]


def anchor_sine_embedding(boxes: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised boxes (DAB-DETR's `gen_sineembed_for_position`).

    Args:
        boxes: Tensor[..., 4] normalised cxcywh, or Tensor[..., 2] normalised centres (cx, cy).
        num_pos_feats: features per coordinate (hidden_dim // 2; the official code hard-codes 128); even.
        temperature: frequency base (10000 in the official code).

    Returns:
        Tensor[..., 4 * num_pos_feats] ordered (y, x, w, h), or Tensor[..., 2 * num_pos_feats] ordered (y, x),
        in the dtype of `boxes`.
    """
    if not isinstance(boxes, Tensor) or boxes.dim() < 1 or boxes.shape[-1] not in (2, 4):
        got = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be Tensor[..., 4] (cx, cy, w, h) or Tensor[..., 2] (cx, cy), got {got}")
    _check_num_pos_feats(num_pos_feats)
    freq = _frequencies(num_pos_feats, temperature, boxes.dtype, boxes.device)
    emb = _interleave_sin_cos(boxes[..., None] * (2 * math.pi) / freq)  # [..., D, n]
    order = [1, 0, 2, 3] if boxes.shape[-1] == 4 else [1, 0]  # (cx, cy, w, h) -> (y, x, w, h)
    return emb[..., order, :].flatten(-2)  # [..., D, n] -> [..., D * n]
