"""Detections from CORA's outputs: every box scored against every class, per-class NMS, top M."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor


def class_probabilities(class_logits: Tensor, class_prior: Tensor | None = None) -> Tensor:
    """softmax over [K class logits, a background logit of 0], background dropped, times the prior.

    class_logits: Tensor[..., K] (temperature * cosine); class_prior: Tensor[K] or None.
    Returns Tensor[..., K].
    """
    background = class_logits.new_zeros(class_logits.shape[:-1] + (1,))
    probs = F.softmax(torch.cat([class_logits, background], dim=-1), dim=-1)[..., :-1]
    return probs if class_prior is None else probs * class_prior


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.batched_nms in float64: indices kept, by decreasing score.

    batched_nms separates classes by offsetting each box by label x (max coordinate + 1); with K = 4096 classes
    and ~1333-pixel images the offsets reach ~5.5e6, where float32 steps by 0.5 px, enough to flip the
    decision for pairs near the IoU threshold. float64 keeps the offsets exact.
    boxes: Tensor[N, 4] xyxy; scores: Tensor[N]; labels: Tensor[N] int. Returns Tensor[M] int64."""
    return torchvision.ops.batched_nms(boxes.double(), scores.double(), labels, iou_threshold)


def postprocess(
    class_logits: Tensor,
    objectness: Tensor,
    boxes: Tensor,
    image_sizes: Tensor,
    score_threshold: float = 0.001,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    pre_nms_topk: int = 3000,
) -> list[dict[str, Tensor]]:
    """Per-image detections, as in CORA's evaluation.

    Args:
        class_logits: Tensor[B, Q, K] region-classifier logits (100 * cosine) of the decoded boxes.
        objectness: Tensor[B, Q] logits of the localizer's class-agnostic objectness head.
        boxes: Tensor[B, Q, 4] normalised cxcywh, relative to each image's un-padded extent.
        image_sizes: Tensor[B, 2] (height, width) in pixels of the images the boxes should be in.
        score_threshold: keep (box, class) pairs scoring above this.
        nms_iou: IoU threshold of the per-class NMS (`per_class_nms`).
        max_detections: detections kept per image (100 for COCO, 300 for LVIS).
        pre_nms_topk: only the best `pre_nms_topk` (box, class) pairs of an image enter NMS (bounds
            the NMS cost when Q * K is large; it drops only pairs that cannot make the top
            `max_detections` unless NMS removes more than pre_nms_topk - max_detections of them).

    Score of (box q, class k) = softmax([logits_q, 0])_k * sigmoid(objectness_q).

    Returns:
        B dicts with "boxes" Tensor[M, 4] xyxy pixels (clipped to the image), "scores" Tensor[M],
        "labels" Tensor[M] int64 class indices; M <= max_detections, sorted by score.
    """
    if class_logits.dim() != 3:
        raise ValueError(f"class_logits must be Tensor[B, Q, K], got {list(class_logits.shape)}")
    b, q, k = class_logits.shape
    if objectness.shape != (b, q) or boxes.shape != (b, q, 4) or image_sizes.shape != (b, 2):
        raise ValueError(
            f"expected objectness [B, Q] = [{b}, {q}], boxes [B, Q, 4] and image_sizes [B, 2], got "
            f"{list(objectness.shape)}, {list(boxes.shape)}, {list(image_sizes.shape)}"
        )
    scores = class_probabilities(class_logits) * objectness.sigmoid().unsqueeze(-1)  # [B, Q, K]
    h, w = image_sizes.to(boxes.dtype).unbind(-1)
    scale = torch.stack([w, h, w, h], dim=-1).unsqueeze(1)                          # [B, 1, 4]
    boxes_xyxy = cxcywh_to_xyxy(boxes) * scale
    limit = scale.expand_as(boxes_xyxy)
    boxes_xyxy = torch.minimum(boxes_xyxy.clamp(min=0), limit)

    results = []
    for i in range(b):
        flat = scores[i].flatten()                                                     # [Q * K]
        top_scores, top_idx = flat.topk(min(pre_nms_topk, flat.numel()))
        keep = top_scores > score_threshold
        top_scores, top_idx = top_scores[keep], top_idx[keep]
        query, label = top_idx // k, top_idx % k
        candidates = boxes_xyxy[i, query]
        kept = per_class_nms(candidates, top_scores, label, nms_iou)[:max_detections]
        results.append({"boxes": candidates[kept], "scores": top_scores[kept], "labels": label[kept]})
    return results
