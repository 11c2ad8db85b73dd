"""Per-class Hungarian matching (DETR style) for CORA's localizer.

A query may only be matched to a ground truth of the class it was pre-matched to. The cost of pairing
query i with ground truth j is

    C_ij = w_obj * focal_cost(objectness_i) + w_bbox * |b_i - g_j|_1 + w_giou * (-GIoU(b_i, g_j))

with focal_cost(x) = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)), p = sigmoid(x)
(Deformable DETR's class cost, on the single objectness logit). Costs are built batched for all images at
once; each image's matrix is cut into per-class blocks, and all blocks of the batch are solved in one
`torch.ops.cora.batched_linear_assignment` call (through `cora.ops.linear_assignment.per_class_blocks`
on one block-diagonal-by-(image, class) problem).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from cora.modeling.postprocess import cxcywh_to_xyxy
from cora.ops.linear_assignment import per_class_blocks


def focal_objectness_cost(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Tensor[N] logits -> Tensor[N]: the focal cost of calling each query an object (low = confident)."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * (-(p + 1e-8).log())
    neg = (1 - alpha) * p ** gamma * (-(1 - p + 1e-8).log())
    return pos - neg


class PerClassHungarianMatcher(nn.Module):
    """matcher(outputs, targets) -> list of B (query_idx, target_idx) Tensor[M_b] int64 pairs.

    outputs: "boxes" Tensor[B, Q, 4] normalised cxcywh (one decoder layer), "objectness" Tensor[B, Q]
        logits, "classes" Tensor[B, Q] int pre-matched class per query.
    targets: B dicts with "boxes_cxcywh" Tensor[G_b, 4] normalised and "labels" Tensor[G_b] int (the
        same class indexing as "classes", i.e. indices into the vocabulary).
    Pairs are sorted by query index; per image and class, min(#queries, #ground truths) pairs.
    """

    def __init__(self, cost_objectness: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.cost_objectness, self.cost_bbox, self.cost_giou = cost_objectness, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, boxes: Tensor, objectness: Tensor, gt_boxes: Tensor) -> Tensor:
        """boxes [N, 4], objectness [N], gt_boxes [G, 4] (cxcywh) -> Tensor[N, G] matching costs."""
        obj = focal_objectness_cost(objectness.float(), self.focal_alpha, self.focal_gamma)       # [N]
        l1 = torch.cdist(boxes.float(), gt_boxes.float(), p=1)                                   # [N, G]
        giou = generalized_box_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(gt_boxes.float()))
        return self.cost_objectness * obj[:, None] + self.cost_bbox * l1 - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        boxes, objectness, classes = outputs["boxes"], outputs["objectness"], outputs["classes"]
        b, q = objectness.shape
        if boxes.shape != (b, q, 4) or classes.shape != (b, q) or len(targets) != b:
            raise ValueError(f"matcher: expected boxes [B, Q, 4], objectness / classes [B, Q] and B targets, got "
                             f"{list(boxes.shape)}, {list(objectness.shape)}, {list(classes.shape)}, {len(targets)}")
        device = boxes.device
        sizes = [len(t["labels"]) for t in targets]
        gt_boxes = torch.cat([t["boxes_cxcywh"].to(device) for t in targets]) if b else boxes.new_zeros(0, 4)
        gt_labels = torch.cat([t["labels"].to(device).long() for t in targets]) if b else classes.new_zeros(0)
        # One [B*Q, G] cost over the batch; cross-image pairs never form a block (distinct keys).
        cost = self.cost_matrix(boxes.reshape(-1, 4), objectness.reshape(-1), gt_boxes)
        stride = int(max(int(classes.max()) if classes.numel() else 0,
                         int(gt_labels.max()) if gt_labels.numel() else 0)) + 1
        gt_image = torch.repeat_interleave(torch.arange(b, device=device), torch.tensor(sizes, device=device))
        q_keys = (torch.arange(b, device=device)[:, None] * stride + classes.long()).reshape(-1)
        g_keys = gt_image * stride + gt_labels
        query_idx, gt_idx = per_class_blocks(cost, q_keys, g_keys)  # one batched_linear_assignment call
        image = torch.div(query_idx, q, rounding_mode="floor")
        counts = torch.bincount(image, minlength=b).tolist()
        gt_starts = torch.tensor([0] + sizes, device=device).cumsum(0)[:-1]
        out = []
        for i, (qi, gi) in enumerate(zip(query_idx.split(counts), gt_idx.split(counts))):
            out.append((qi - i * q, gi - gt_starts[i]))
        return out


def build_matcher(cost_objectness: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> PerClassHungarianMatcher:
    return PerClassHungarianMatcher(cost_objectness, cost_bbox, cost_giou)
