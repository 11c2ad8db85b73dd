"""THE scoring of CORA's detections: boxes to pixels, every box x every class, per-class NMS, top M.

One implementation for eager inference, evaluation, the exported graph and everything that runs it: plain
tensor code, batched, with no Python branch on a symbolic size (B, K, H, W), no one-hot, no `%` on a symbolic
K (the dynamo exporter cannot convert aten.remainder with a symbolic divisor: `i - (i // K) * K`), and every
TopK's k at most `max(pre_nms_topk, max_detections)` (< 3840, TensorRT's TopK limit, when exported).

Scores are ranked in steps of SCORE_STEP, ties broken as ONNX TopK breaks them (the lower index first) in
eager mode too (`ordered_topk`), and NMS sees strictly decreasing surrogate scores in that order, so PyTorch
and ONNX Runtime keep the same detections in the same slots even when scores tie (softmax(100 * cos)
saturates to 1.0 in float32, and the objectness of random weights differs by float noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

# TensorRT's TopK supports k < 3840.
MAX_TOPK = 3840
# Scores are ranked in steps of 2^-14 (~6e-5): order within a step is by index, not by the exact score.
SCORE_STEP = 2.0 ** -14


def class_probabilities(class_logits: Tensor, class_prior: Tensor | None = None) -> Tensor:
    """softmax over [K class logits, a background logit of 0], background dropped, times the prior.

    class_logits: Tensor[..., K] (temperature * cosine); class_prior: Tensor[K] or None. Returns Tensor[..., K].
    """
    background = class_logits.new_zeros(class_logits.shape[:-1] + (1,))
    probs = F.softmax(torch.cat([class_logits, background], dim=-1), dim=-1)[..., :-1]
    return probs if class_prior is None else probs * class_prior


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Tensor[..., 4] (cx, cy, w, h) -> Tensor[..., 4] (x0, y0, x1, y1), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def boxes_to_pixels(boxes: Tensor, image_sizes: Tensor, clip: bool = True) -> Tensor:
    """Normalised cxcywh boxes relative to each image -> xyxy pixels (clipped to the image unless `clip` is off).

    boxes: Tensor[B, Q, 4]; image_sizes: Tensor[B, 2] (h, w) in pixels. Returns Tensor[B, Q, 4]."""
    scale = image_sizes.flip(-1).repeat(1, 2).to(boxes.dtype)[:, None]       # [B, 1, 4] (w, h, w, h)
    pixels = cxcywh_to_xyxy(boxes) * scale
    return torch.minimum(pixels.clamp(min=0), scale.expand_as(pixels)) if clip else pixels


def ordered_topk(x: Tensor, k) -> tuple[Tensor, Tensor]:
    """`x.topk(k, dim=1)` with ONNX TopK's order: by value descending, equal values by index ascending.

    x: Tensor[B, N] float. torch.topk leaves the order of equal values unspecified; exported, the graph's
    TopK follows the ONNX rule, so the graph calls topk and eager code sorts a unique int64 key per element
    (the float's order-preserving bit pattern, then the reversed index) to get the same answer."""
    if torch.compiler.is_exporting():
        return x.topk(k, dim=1)
    bits = x.float().contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)            # IEEE order as integer order
    index = torch.arange(x.shape[1], device=x.device)
    key = bits * (1 << 32) + ((1 << 32) - 1 - index)                  # unique; larger = earlier
    idx = key.topk(k, dim=1).indices
    return x.gather(1, idx), idx


def detections(class_logits: Tensor, objectness: Tensor, boxes: Tensor, *, score_threshold: float, nms_iou: float,
               max_detections: int, pre_nms_topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Scores every (box, class) pair, keeps the best `pre_nms_topk` above `score_threshold`, runs NMS per
    (image, class) and returns the top `max_detections` per image, padded.

    class_logits: Tensor[B, Q, K] region-classifier logits (temperature * cosine) of the decoded boxes.
    objectness: Tensor[B, Q] logits of the localizer's class-agnostic objectness head.
    boxes: Tensor[B, Q, 4] xyxy pixels.
    pre_nms_topk: pairs entering NMS per image (0: all Q * K pairs, as the official evaluation; eager only).
    Score of (box q, class k) = softmax([logits_q, 0])_k * sigmoid(objectness_q).

    Returns boxes Tensor[B, M, 4] xyxy pixels, scores Tensor[B, M] (descending in steps of SCORE_STEP), labels Tensor[B, M] int64;
    empty slots have box 0, score 0 and label -1. M = max_detections.
    """
    b, q, k = class_logits.shape
    m = max_detections
    scores = class_probabilities(class_logits) * objectness.sigmoid().unsqueeze(-1)  # [B, Q, K]
    flat = scores.reshape(b, q * k)                                                            # [B, Q*K]
    n = q * k if pre_nms_topk == 0 else torch.sym_min(pre_nms_topk, q * k)
    # Rank by the score rounded down to SCORE_STEP: scores that differ by float noise between two runtimes
    # (ulps of the objectness sigmoid) become exact ties, which both sides break by index.
    _, top_idx = ordered_topk(torch.floor(flat * (1 / SCORE_STEP)), n)                      # [B, n]
    top_scores = flat.gather(1, top_idx)
    query = top_idx // k
    label = top_idx - query * k                                                               # idx % K
    candidates = boxes.gather(1, query[..., None].expand(b, n, 4))                           # [B, n, 4]
    valid = top_scores > score_threshold

    # One NMS call for the batch: each (image, class) group moves to its own tile (torchvision's coordinate
    # trick, written without its branch on the box count). batched_nms offsets by label * size, which needs
    # log2(B * K) of float32's 24 bits (0.5 px steps at K = 4096, 1333 px): here the classes present among an
    # image's candidates are ranked densely, tile t = image * C + rank (C = most classes present in one
    # image) and the tiles fill an R x R grid, R = ceil(sqrt(B * C)), so offsets stay below R * size.
    present = torch.zeros_like(scores[:, 0]).scatter(1, label, 1.0)                         # [B, K]
    rank = (present.cumsum(1) - 1).gather(1, label).to(torch.int64)                         # [B, n]
    per_image = present.sum(1).max().to(torch.int64)                                         # C
    tile = rank + torch.arange(b, device=label.device)[:, None] * per_image                  # [B, n] < B * C
    grid = torch.ceil(torch.sqrt((per_image * b).to(torch.float32))).to(torch.int64)         # R
    tile_y = tile // grid
    tile_x = tile - tile_y * grid
    side = candidates.max() + 1
    shift = torch.stack([tile_x, tile_y, tile_x, tile_y], dim=-1).to(candidates) * side      # [B, n, 4]
    # NMS sees the candidates' rank, not their scores: strictly decreasing in the order topk chose, so tied
    # scores are visited in the same order by torchvision and by ONNX NonMaxSuppression.
    order = torch.arange(n, 0, -1, device=label.device, dtype=torch.float32).expand(b, n)    # [B, n]
    kept = torchvision.ops.nms((candidates + shift).reshape(-1, 4), order.reshape(-1), nms_iou)
    keep = torch.zeros(b * n, dtype=torch.bool, device=kept.device).index_fill(0, kept, True).reshape(b, n)
    # The first M kept, valid candidates (rank order = score order); others get -1 and come last.
    ranked = torch.where(keep & valid, order, torch.full_like(order, -1.0))                   # [B, n]
    m_avail = torch.sym_min(m, n)
    best, pick = ranked.topk(m_avail, dim=1)                                                 # [B, m']
    found = best > 0
    out_boxes = torch.where(found[..., None], candidates.gather(1, pick[..., None].expand(b, m_avail, 4)), 0.0)
    out_scores = torch.where(found, top_scores.gather(1, pick), 0.0)
    out_labels = torch.where(found, label.gather(1, pick), -1)
    pad = m - m_avail
    return (F.pad(out_boxes, (0, 0, 0, pad)), F.pad(out_scores, (0, pad)), F.pad(out_labels, (0, pad), value=-1))
