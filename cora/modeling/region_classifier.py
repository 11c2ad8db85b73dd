"""CORA's region classifier: CLIP's layer4 + prompted attention pooling on RoIAligned boxes, cosine with text.

Region prompting (CORA, sec. 3.2): the image goes once through CLIP's stem and layer1..layer3 (stride 16).
Each box is RoIAligned from that map to `roi_side` x `roi_side` (14 for RN50, 18 for RN50x4), run through
CLIP's layer4 (down to `pool_side` = 7 / 9) and CLIP's attention pool with a learned region prompt P
(`[S, S, C]`, zero-initialised, the only trained weights) added to the pooled tokens. The L2-normalised
embedding is compared with the class text embeddings by cosine similarity, scaled by a temperature (100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cora.ops import PromptedAttentionPool, roi_align
from cora.ops._utils import batched_boxes_to_rois


class RegionClassifier(nn.Module):
    """Classify boxes against text embeddings with CLIP and a region prompt.

    Args:
        backbone: a `CLIPBackbone` (frozen). Its `layer4`, `attnpool`, `roi_side`, `stride`,
            `layer3_channels` and `embed_dim` are used.
        temperature: logit scale applied to the cosine similarity (CLIP's 100).

    Attributes:
        pool: `cora.ops.PromptedAttentionPool(backbone.attnpool)`; `pool.prompt` is the trainable
            region prompt, Tensor[S, S, C4] with S = `backbone.pool_side`, zero-initialised (so the
            untrained classifier is plain CLIP on each crop). The anchor pre-matcher shares it.
    """

    def __init__(self, backbone: nn.Module, temperature: float = 100.0):
        super().__init__()
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
            raise ValueError(f"RegionClassifier: temperature must be a positive number, got {temperature!r}")
        self.backbone = backbone
        self.pool = PromptedAttentionPool(backbone.attnpool)
        self.temperature = float(temperature)

    def region_embeddings(self, features: Tensor, boxes: list[Tensor] | Tensor) -> Tensor:
        """L2-normalised CLIP embeddings of boxes.

        Args:
            features: Tensor[B, C3, h, w], CLIP's layer3 map (`backbone.features`), stride 16.
            boxes: pixel `xyxy` boxes in the (padded) input image: a list of B Tensor[N_i, 4] (N_i may
                be 0), or Tensor[B, N, 4] with N boxes per image (no Python loop over B: traceable and
                exportable with a dynamic batch).

        Returns:
            Tensor[sum N_i, D] (D = `backbone.embed_dim`), rows in the order of the boxes (image 0
            first), unit L2 norm, in the dtype of `features`.
        """
        self._check_features(features)
        batch = features.shape[0]
        if isinstance(boxes, Tensor):
            if boxes.dim() != 3 or boxes.shape[0] != batch or boxes.shape[2] != 4:
                raise ValueError(f"RegionClassifier: boxes must be Tensor[B = {batch}, N, 4], got {list(boxes.shape)}")
            rois = batched_boxes_to_rois(boxes)  # [B*N, 5]
        elif isinstance(boxes, (list, tuple)) and len(boxes) == batch:
            rois = list(boxes)
        else:
            got = f"a {type(boxes).__name__} of length {len(boxes)}" if isinstance(boxes, (list, tuple)) \
                else type(boxes).__name__
            raise ValueError(
                f"RegionClassifier: boxes must be a list of B = {batch} Tensor[N_i, 4] (one per image "
                f"of features) or Tensor[B, N, 4], got {got}"
            )
        backbone = self.backbone
        # [N, C3, roi_side, roi_side]; sampling_ratio -1: adaptive, aligned: pixel centres at +0.5.
        regions = roi_align(features, rois, backbone.roi_side, 1.0 / backbone.stride, -1, True)
        regions = backbone.layer4(regions)  # [N, C4, pool_side, pool_side]
        return F.normalize(self.pool(regions), dim=-1)  # [N, D]

    def forward(self, features: Tensor, boxes: list[Tensor] | Tensor, text_embeddings: Tensor) -> Tensor:
        """Class logits of boxes: `temperature * cos(region embedding, text embedding)`.

        Args:
            features: Tensor[B, C3, h, w] layer3 map (see `region_embeddings`).
            boxes: list of B Tensor[N_i, 4] or Tensor[B, N, 4] pixel `xyxy` boxes (see `region_embeddings`).
            text_embeddings: Tensor[K, D] class embeddings (normalised here; K >= 1).

        Returns:
            Tensor[sum N_i, K] logits, float32 (float64 for float64 features). Softmax with a
            background logit of 0 (see `cora.modeling.scoring`) gives class probabilities.
        """
        embeddings = self.region_embeddings(features, boxes)  # [N, D]
        return cosine_logits(embeddings, text_embeddings, self.temperature, self.backbone.embed_dim)

    @torch.no_grad()
    def load_prompt(self, state: Tensor) -> None:
        """Load a region prompt, in the paper's form or in the official code's form; both are kept exactly.

        Args:
            state: either
                - the paper form, the prompt P itself: Tensor[S, S, C4] (S = `backbone.pool_side`),
                  added to the region features; the positional embedding is reset to CLIP's;
                - the official code's form, the fine-tuned attention-pool positional embedding pe':
                  Tensor[S*S+1, C4] (row 0 is the mean/query token's); the prompt is reset to 0.
                  (P added to the tokens equals pe = CLIP's + [mean(P); P]; the official code tunes
                  all rows freely, a superset of that family.)

        Raises:
            ValueError: `state` is not a floating-point tensor of one of the two shapes, or has
                non-finite values.
        """
        pool = self.pool
        side_h, side_w, channels = pool.prompt.shape
        tokens = side_h * side_w + 1
        if not isinstance(state, Tensor) or not state.is_floating_point():
            got = f"a {state.dtype} tensor" if isinstance(state, Tensor) else type(state).__name__
            raise ValueError(f"load_prompt: state must be a floating-point Tensor, got {got}")
        if tuple(state.shape) not in ((side_h, side_w, channels), (tokens, channels)):
            raise ValueError(
                f"load_prompt: state must be the prompt Tensor[S, S, C] = [{side_h}, {side_w}, {channels}] or a "
                f"positional embedding Tensor[S*S+1, C] = [{tokens}, {channels}], got {list(state.shape)}"
            )
        if not bool(torch.isfinite(state).all()):
            raise ValueError("load_prompt: state has non-finite values")
        if state.dim() == 3:
            pool.prompt.copy_(state)
            pool.positional_embedding.copy_(pool.attnpool.positional_embedding)
        else:
            pool.prompt.zero_()
            pool.positional_embedding.copy_(state)

    def effective_positional_embedding(self) -> Tensor:
        """The official form of the current prompt: Tensor[S*S+1, C4]."""
        return self.pool.effective_positional_embedding().detach()

    def _check_features(self, features: Tensor) -> None:
        channels = self.backbone.layer3_channels
        if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != channels:
            got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"RegionClassifier: features must be the layer3 map Tensor[B, {channels}, h, w], got {got}"
            )


def cosine_logits(embeddings: Tensor, text_embeddings: Tensor, temperature: float, dim: int) -> Tensor:
    """`temperature * normalize(embeddings) @ normalize(text_embeddings).T`, in float32 or wider.

    embeddings: Tensor[..., D]; text_embeddings: Tensor[K, D] (D must equal `dim`). Returns Tensor[..., K].
    """
    if not isinstance(text_embeddings, Tensor) or text_embeddings.dim() != 2 or text_embeddings.shape[1] != dim:
        got = list(text_embeddings.shape) if isinstance(text_embeddings, Tensor) else type(text_embeddings).__name__
        raise ValueError(f"text_embeddings must be Tensor[K, {dim}] (K classes), got {got}")
    dtype = torch.promote_types(torch.promote_types(embeddings.dtype, text_embeddings.dtype), torch.float32)
    image = F.normalize(embeddings.to(dtype), dim=-1)
    text = F.normalize(text_embeddings.to(device=embeddings.device, dtype=dtype), dim=-1)
    return temperature * (image @ text.transpose(0, 1))  # [..., K]
