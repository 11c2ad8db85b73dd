"""Anchor pre-matching (CORA, sec. 3.3): give each localizer anchor a class, and that class's text as its query.

Each anchor box is pooled from CLIP's layer4 map (RoIAlign to `pool_side` x `pool_side` + the region
classifier's prompted attention pool) and matched to its most similar class,
`c = argmax_k softmax(100 * [cos(v, t_1..t_K), 0])_k` (a background logit of 0). The anchor's content
query is `text_proj(t_c)`, so one decoder pass serves every class whatever the vocabulary size K.

Differences from the official code (tgxs002/CORA, `models/fast_detr.py`, `FastDETR._sample_feature` and
`get_query_and_mask`), all deliberate:
- pooling is the exact attention pool (the official default approximates it by RoIAligning the q/k/v
  projections of the whole map and skipping the positional embedding's key/value bias terms);
- anchors are scaled by the un-padded image size in pixels (spatial_scale 1/32); the official code
  scales by the number of un-padded layer4 cells of the mask (spatial_scale 1);
- the argmax runs over the K classes only, and the novel-class boost (x8 at evaluation, ids hard-coded
  there) is the runtime input `class_prior`; the official code can also pick the background column
  (its query is then `text_proj(0)`) and sorts the anchors by class, which the permutation-invariant
  decoder does not need;
- the class -> query lookup is a gather (`index_select`), not a one-hot matrix product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cora.modeling.mlp import MLP
from cora.modeling.scoring import class_probabilities, cxcywh_to_xyxy
from cora.modeling.region_classifier import cosine_logits
from cora.ops import PromptedAttentionPool, roi_align
from cora.ops._utils import batched_boxes_to_rois, is_tracing

# The official code's `--condition_bottleneck` (text_dim -> 128 -> hidden_dim).
TEXT_PROJ_BOTTLENECK = 128


class AnchorPreMatcher(nn.Module):
    """Pre-match anchors to classes and build their content queries.

    Args:
        backbone: a `CLIPBackbone`; only its geometry is read (`pool_side`, `stride`), it is not kept.
        pool: the region classifier's `PromptedAttentionPool` (shared, so both use the same prompt).
        text_dim: D, the text embedding dimension (= the attention pool's output dimension).
        hidden_dim: the localizer's width (content query size).
        temperature: logit scale of the cosine similarity (100, as CLIP).

    Attributes:
        text_proj: `MLP(text_dim, 128, hidden_dim, 2)`, named as the official code's `self.text_proj`
            (keys `text_proj.layers.{0,1}.{weight,bias}`), so official checkpoints load unchanged.
    """

    def __init__(self, backbone: nn.Module, pool: PromptedAttentionPool, text_dim: int, hidden_dim: int = 256,
                 temperature: float = 100.0):
        super().__init__()
        if not isinstance(pool, PromptedAttentionPool):
            raise ValueError(
                f"AnchorPreMatcher: pool must be a cora.ops.PromptedAttentionPool, got {type(pool).__name__}"
            )
        out_dim = pool.attnpool.c_proj.out_features
        if text_dim != out_dim:
            raise ValueError(
                f"AnchorPreMatcher: text_dim must equal the attention pool's output dim {out_dim}, got {text_dim!r}"
            )
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"AnchorPreMatcher: temperature must be a positive number, got {temperature!r}")
        self.pool = pool
        self.pool_side = int(backbone.pool_side)
        self.spatial_scale = 1.0 / (2 * backbone.stride)  # layer4 is stride 32 (layer3 is backbone.stride)
        self.text_dim = text_dim
        self.hidden_dim = hidden_dim
        self.temperature = float(temperature)
        self.text_proj = MLP(text_dim, TEXT_PROJ_BOTTLENECK, hidden_dim, 2)

    def forward(
        self,
        layer4_map: Tensor,
        anchors: Tensor,
        image_sizes: Tensor,
        padded_size: tuple[int, int],
        text_embeddings: Tensor,
        class_prior: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Pre-match Q anchors in each of B images to K classes.

        Args:
            layer4_map: Tensor[B, C4, H/32, W/32], CLIP's layer4 on the whole layer3 map
                (`backbone.layer4_map`).
            anchors: Tensor[Q, 4] normalised `cxcywh` in [0, 1], relative to each image's un-padded
                size (DETR's convention); shared by all images.
            image_sizes: Tensor[B, 2] `(h, w)` of the un-padded images, in input pixels.
            padded_size: `(H, W)` of the padded batch, in input pixels (image sizes must fit in it).
            text_embeddings: Tensor[K, D] class embeddings (K >= 1), as `TextEmbedder` gives them
                (L2-normalised; the cosine re-normalises, `text_proj` takes them as given).
            class_prior: optional Tensor[K] multiplying the class probabilities before the argmax
                (e.g. 8 on novel classes at evaluation, as the official code); None = all ones.

        Returns:
            dict with
            - "classes": Tensor[B, Q] int64, the pre-matched class of each anchor, in [0, K);
            - "content_queries": Tensor[B, Q, hidden_dim] = `text_proj(text_embeddings)[classes]`;
            - "scores": Tensor[B, Q], the winning class's softmax probability (background column
              included in the softmax, class_prior not applied), float32 or wider.

        Matching runs without gradient (CLIP and the prompt are not trained here); gradients reach
        `text_proj` through "content_queries".
        """
        self._check_inputs(layer4_map, anchors, image_sizes, padded_size, text_embeddings, class_prior)
        batch, queries = layer4_map.shape[0], anchors.shape[0]
        with torch.no_grad():
            # Box geometry in float32 at least: half precision is off by up to 0.5 px at 1333 px.
            geometry = torch.promote_types(layer4_map.dtype, torch.float32)
            boxes = cxcywh_to_xyxy(anchors.to(device=layer4_map.device, dtype=geometry))  # [Q, 4]
            sizes = image_sizes.to(device=layer4_map.device, dtype=geometry)
            scale = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=-1)  # [B, 4] (w, h, w, h)
            boxes = boxes[None] * scale[:, None, :]  # [B, Q, 4] pixels
            rois = batched_boxes_to_rois(boxes)  # [B*Q, 5]
            regions = roi_align(layer4_map, rois, self.pool_side, self.spatial_scale, -1, True)  # [B*Q, C4, S, S]
            embeddings = self.pool(regions).reshape(batch, queries, -1)  # [B, Q, D]
            logits = cosine_logits(embeddings, text_embeddings, self.temperature, self.text_dim)  # [B, Q, K]
            probs = class_probabilities(logits)  # [B, Q, K], background column dropped
            weighted = probs if class_prior is None else probs * class_prior.to(probs)
            classes = weighted.argmax(dim=-1)  # [B, Q] int64
            scores = probs.gather(-1, classes[..., None]).squeeze(-1)  # [B, Q]
        projected = self.text_proj(text_embeddings.to(self.text_proj.layers[0].weight))  # [K, hidden_dim]
        content = projected.index_select(0, classes.reshape(-1)).reshape(batch, queries, -1)  # [B, Q, hidden_dim]
        return {"classes": classes, "content_queries": content, "scores": scores}

    def _check_inputs(self, layer4_map, anchors, image_sizes, padded_size, text_embeddings, class_prior) -> None:
        channels = self.pool.attnpool.q_proj.in_features
        if not isinstance(layer4_map, Tensor) or layer4_map.dim() != 4 or layer4_map.shape[1] != channels:
            raise ValueError(
                f"AnchorPreMatcher: layer4_map must be Tensor[B, {channels}, H/32, W/32], got {_shape(layer4_map)}"
            )
        if not isinstance(anchors, Tensor) or anchors.dim() != 2 or anchors.shape[1] != 4:
            raise ValueError(
                f"AnchorPreMatcher: anchors must be Tensor[Q, 4] (normalised cxcywh), got {_shape(anchors)}"
            )
        batch = layer4_map.shape[0]
        if not isinstance(image_sizes, Tensor) or tuple(image_sizes.shape) != (batch, 2):
            raise ValueError(
                f"AnchorPreMatcher: image_sizes must be Tensor[B, 2] = [{batch}, 2] (h, w), got {_shape(image_sizes)}"
            )
        if not (isinstance(padded_size, (tuple, list, torch.Size)) and len(padded_size) == 2):
            raise ValueError(f"AnchorPreMatcher: padded_size must be a pair (H, W), got {padded_size!r}")
        if not isinstance(text_embeddings, Tensor) or text_embeddings.dim() != 2 \
                or text_embeddings.shape[1] != self.text_dim or text_embeddings.shape[0] < 1:
            raise ValueError(
                f"AnchorPreMatcher: text_embeddings must be Tensor[K, {self.text_dim}] with K >= 1, "
                f"got {_shape(text_embeddings)}"
            )
        if class_prior is not None and (not isinstance(class_prior, Tensor)
                                        or tuple(class_prior.shape) != (text_embeddings.shape[0],)):
            raise ValueError(
                f"AnchorPreMatcher: class_prior must be Tensor[K] = [{text_embeddings.shape[0]}] or None, "
                f"got {_shape(class_prior)}"
            )
        if is_tracing(image_sizes):
            return
        height, width = int(padded_size[0]), int(padded_size[1])
        too_big = (image_sizes <= 0).any(dim=1) | (image_sizes[:, 0] > height) | (image_sizes[:, 1] > width)
        if bool(too_big.any()):
            i = int(too_big.nonzero()[0, 0])
            raise ValueError(
                f"AnchorPreMatcher: image_sizes[{i}] = {image_sizes[i].tolist()} must be positive and fit in "
                f"padded_size (H, W) = ({height}, {width})"
            )


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__
