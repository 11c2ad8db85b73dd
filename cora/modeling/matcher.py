"""Per-class Hungarian matching (DETR style) for CORA's localizer.

A query may only be matched to a ground truth of the class it was pre-matched to. The cost of pairing
query i with ground truth j is

    C_ij = w_obj * focal_cost(objectness_i) + w_bbox * |b_i - g_j|_1 + w_giou * (-GIoU(b_i, g_j))

with focal_cost(x) = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)), p = sigmoid(x)
(Deformable DETR's class cost, on the single objectness logit). Costs are built batched for all images at
once; each image's matrix is cut into per-class blocks, and all blocks of the batch are solved in one
`torch.ops.cora.batched_linear_assignment` call (through `cora.ops.linear_assignment.per_class_blocks`
on one block-diagonal-by-(image, class) problem).

Relaxed matching (CORA on LVIS: a query pre-matched to class c may also be matched with a ground truth of a
class c' whose text embedding has cosine similarity > 0.7 with c's): `forward(..., compatible=...)` takes a
[K, K] bool matrix of allowed (query class, ground-truth class) pairs (`similar_classes`); each image is then
one Q x G problem whose incompatible pairs are forbidden (+inf), and all images are solved in one
`batched_linear_assignment` call: a maximum-size matching among the allowed pairs, of minimum cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou

from cora.modeling.scoring import cxcywh_to_xyxy
from cora.ops.linear_assignment import batched_linear_assignment, per_class_blocks


def focal_objectness_cost(logits: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Tensor[N] logits -> Tensor[N]: the focal cost of calling each query an object (low = confident)."""
    p = logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * (-(p + 1e-8).log())
    neg = (1 - alpha) * p ** gamma * (-(1 - p + 1e-8).log())
    return pos - neg


def similar_classes(text_embeddings: Tensor, threshold: float) -> Tensor:
    """Tensor[K, D] class text embeddings -> Tensor[K, K] bool: cosine(e_a, e_b) > threshold, diagonal True.

    The `compatible` matrix of relaxed matching (CORA, LVIS: threshold 0.7). Computed in float32 or wider, also
    under autocast (a bf16 product would move cosines near the threshold across it).
    """
    if not isinstance(text_embeddings, Tensor) or text_embeddings.dim() != 2:
        got = list(text_embeddings.shape) if isinstance(text_embeddings, Tensor) else type(text_embeddings).__name__
        raise ValueError(f"similar_classes: text_embeddings must be Tensor[K, D], got {got}")
    with torch.autocast(text_embeddings.device.type, enabled=False):
        e = F.normalize(text_embeddings.to(torch.promote_types(text_embeddings.dtype, torch.float32)), dim=-1)
        similar = (e @ e.transpose(0, 1)) > threshold
    return similar.fill_diagonal_(True)  # a class always matches itself (even a zero or NaN embedding)


class PerClassHungarianMatcher(nn.Module):
    """matcher(outputs, targets, compatible=None) -> list of B (query_idx, target_idx) Tensor[M_b] int64 pairs.

    outputs: "boxes" Tensor[B, Q, 4] normalised cxcywh (one decoder layer), "objectness" Tensor[B, Q]
        logits, "classes" Tensor[B, Q] int pre-matched class per query.
    targets: B dicts with "boxes_cxcywh" Tensor[G_b, 4] normalised and "labels" Tensor[G_b] int (the
        same class indexing as "classes", i.e. indices into the vocabulary).
    compatible: None (a query may only match a ground truth of its own class) or Tensor[K, K] bool with a
        True diagonal, K above every class index: query class a may match ground-truth class b where
        compatible[a, b] (relaxed matching, see the module docstring).
    Pairs are sorted by query index. Without `compatible`, per image and class, min(#queries, #ground truths)
    pairs; with it, per image, a maximum-size matching among the compatible pairs, of minimum total cost.
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
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                compatible: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
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
        if compatible is not None:
            return self._relaxed(cost, classes.long(), gt_labels, sizes, compatible)
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

    def _relaxed(self, cost: Tensor, classes: Tensor, gt_labels: Tensor, sizes: list[int],
                 compatible: Tensor) -> list[tuple[Tensor, Tensor]]:
        """cost [B*Q, G] over the batch, classes [B, Q], gt_labels [G] (G = sum(sizes)), compatible [K, K]:
        one Q x G_b problem per image, incompatible pairs +inf (forbidden), all solved in one call."""
        b, q = classes.shape
        device = cost.device
        if not isinstance(compatible, Tensor) or compatible.dim() != 2 or compatible.shape[0] != compatible.shape[1]:
            got = list(compatible.shape) if isinstance(compatible, Tensor) else type(compatible).__name__
            raise ValueError(f"matcher: compatible must be Tensor[K, K] bool, got {got}")
        if compatible.dtype != torch.bool:
            raise TypeError(f"matcher: compatible must be a bool tensor, got {compatible.dtype}")
        if not bool(compatible.diagonal().all()):
            bad = (~compatible.diagonal()).nonzero().squeeze(1)[:10].tolist()
            raise ValueError(f"matcher: compatible must have a True diagonal (a class is always compatible with "
                             f"itself); False for classes {bad}")
        k = compatible.shape[0]
        values = torch.cat([classes.reshape(-1), gt_labels])
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= k):
            raise ValueError(f"matcher: compatible is [{k}, {k}] but the query classes / ground-truth labels range "
                             f"over [{int(values.min())}, {int(values.max())}]")
        allowed = compatible.to(device)[classes.reshape(-1)[:, None], gt_labels[None, :]]      # [B*Q, G]
        q_image = torch.arange(b, device=device).repeat_interleave(q)
        gt_image = torch.repeat_interleave(torch.arange(b, device=device), torch.tensor(sizes, device=device))
        # Row-major masked selection of the same-image pairs reads image 0's Q x G_0 block, then image 1's...:
        # the packed problems (rows and columns are both grouped by image, in image order).
        packed = cost.masked_fill(~allowed, math.inf)[q_image[:, None] == gt_image[None, :]]
        rows = torch.full((b,), q, dtype=torch.int64)
        cols = torch.tensor(sizes, dtype=torch.int64)
        offsets = (rows * cols).cumsum(0) - rows * cols
        row_idx, col_idx, problem_idx = batched_linear_assignment(packed, rows, cols, offsets)
        counts = torch.bincount(problem_idx, minlength=b).tolist()  # pairs sorted by image, then query
        return list(zip(row_idx.split(counts), col_idx.split(counts)))


def build_matcher(cost_objectness: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> PerClassHungarianMatcher:
    return PerClassHungarianMatcher(cost_objectness, cost_bbox, cost_giou)
