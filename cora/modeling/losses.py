"""The localizer's training criterion (DETR style): per decoder layer, match queries to ground truths
(per class, `PerClassHungarianMatcher`), then

    loss_objectness = sigmoid focal loss (alpha 0.25, gamma 2) of every query's objectness logit, target 1
                      for matched queries and 0 otherwise, summed / num_boxes
    loss_bbox       = L1 between matched boxes (normalised cxcywh), summed / num_boxes
    loss_giou       = 1 - GIoU of matched boxes, summed / num_boxes

Terms are returned unweighted, keyed `loss_<name>_d{i}` for decoder layer i (0 = first, L-1 = last);
`SetCriterion.total` applies the weights (from `weight_dict`) once. `num_boxes` is the mean number of
ground truths per process (all-reduced when torch.distributed is initialised), clamped to >= 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from cora.modeling.matcher import PerClassHungarianMatcher
from cora.modeling.scoring import cxcywh_to_xyxy

LOSS_TERMS = ("objectness", "bbox", "giou")


def average_num_boxes(targets: list[dict[str, Tensor]], device: torch.device) -> float:
    """Ground truths per process, averaged over processes (all_reduce), clamped to >= 1."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return max(float(n.item()) / world, 1.0)


class SetCriterion(nn.Module):
    """criterion(outputs, targets, compatible=None) -> dict of unweighted loss terms per decoder layer.

    outputs: CORA.forward's dict: "boxes" Tensor[L, B, Q, 4] normalised cxcywh, "objectness" Tensor[L, B, Q],
        "classes" Tensor[B, Q] (pre-matched class per query).
    targets: B dicts with "boxes_cxcywh" Tensor[G_b, 4] and "labels" Tensor[G_b] (vocabulary indices).
    compatible: None, or Tensor[K, K] bool for relaxed matching (CORA on LVIS), passed to the matcher for
        every decoder layer: see `PerClassHungarianMatcher` and `cora.modeling.matcher.similar_classes`.
    """

    def __init__(self, matcher: PerClassHungarianMatcher | None = None, weight_objectness: float = 2.0,
                 weight_bbox: float = 5.0, weight_giou: float = 2.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.matcher = matcher if matcher is not None else PerClassHungarianMatcher(
            weight_objectness, weight_bbox, weight_giou, focal_alpha, focal_gamma)
        self.weights = {"objectness": weight_objectness, "bbox": weight_bbox, "giou": weight_giou}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def loss_objectness(self, objectness: Tensor, indices, num_boxes: float) -> dict[str, Tensor]:
        """objectness [B, Q] logits; matched queries are positives."""
        target = torch.zeros_like(objectness)
        batch, query = _flat_indices(indices, objectness.device)
        target[batch, query] = 1.0
        loss = sigmoid_focal_loss(objectness, target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum")
        return {"loss_objectness": loss / num_boxes}

    def loss_boxes(self, boxes: Tensor, targets, indices, num_boxes: float) -> dict[str, Tensor]:
        """boxes [B, Q, 4] cxcywh; L1 and 1 - GIoU over matched pairs."""
        batch, query = _flat_indices(indices, boxes.device)
        src = boxes[batch, query]
        tgt = torch.cat([t["boxes_cxcywh"].to(boxes.device)[j] for t, (_, j) in zip(targets, indices)]).to(src.dtype) \
            if len(targets) else src.new_zeros(0, 4)
        l1 = (src - tgt).abs().sum()
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt))) if len(src) else src.new_zeros(0)
        return {"loss_bbox": l1 / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                compatible: Tensor | None = None) -> dict[str, Tensor]:
        boxes, objectness, classes = outputs["boxes"], outputs["objectness"], outputs["classes"]
        num_boxes = average_num_boxes(targets, boxes.device)
        losses = {}
        for i in range(boxes.shape[0]):
            layer = {"boxes": boxes[i], "objectness": objectness[i], "classes": classes}
            indices = self.matcher(layer, targets, compatible)
            terms = {**self.loss_objectness(objectness[i], indices, num_boxes),
                     **self.loss_boxes(boxes[i], targets, indices, num_boxes)}
            losses.update({f"{k}_d{i}": v for k, v in terms.items()})
        return losses

    def weight_of(self, key: str) -> float:
        """'loss_giou_d3' -> the weight of giou."""
        return self.weights[key[len("loss_"):].rsplit("_d", 1)[0]]

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        """The training objective: sum of weight * term, the one place weights are applied."""
        return sum(self.weight_of(k) * v for k, v in losses.items())


def _flat_indices(indices, device) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device) if indices else \
        torch.zeros(0, dtype=torch.int64, device=device)
    query = torch.cat([q for q, _ in indices]).to(device) if indices else batch
    return batch, query
