"""CORA as one exportable graph: padded pixels + their valid sizes + text embeddings in, padded detections out.

    module = ExportableCORA.from_detector(cora_model)            # runtime vocabulary
    module = ExportableCORA.from_detector(cora_model, text)      # baked vocabulary (text is a constant)
    boxes, scores, labels = module(images, image_sizes, text_embeddings, class_prior)
    boxes, scores, labels = module(images, image_sizes, class_prior)          # baked vocabulary

The graph holds everything `CORA.detect` does after resizing and padding: normalisation, backbone, anchor
pre-matching, localizer, region classifier, scoring (every box x every class), per-class NMS and the top M.
It is plain tensor code: no Python branch on a symbolic size (K, B, H, W), no one-hot, no `%` on a symbolic
K (the dynamo exporter cannot convert aten.remainder with a symbolic divisor: `idx - (idx // K) * K`), and
every TopK's k is at most `max(pre_nms_topk, max_detections)` (< 3840, TensorRT's TopK limit).

`image_sizes` [B, 2] int64 gives the (h, w) of each image's valid top-left region, in input pixels: the
resized image before it was padded at the bottom / right (cora.runtime.preprocess.letterbox returns it).
It is used exactly as `CORA.forward` uses it: the pre-matcher scales the anchors by it, `padding_mask`
hides the padded cells from the localizer's attention and normalises the sine positional encoding by each
image's valid extent, and the boxes are scaled by it (input pixels of the un-padded image, clipped to it).
So on the same padded batch and sizes the graph is `CORA.forward` + `postprocess`; sizes equal to the
input size (no padding) give the un-masked function. The graph cannot raise: sizes must be positive and
fit in (H, W) (the eager module checks this, in the pre-matcher).

The names, dtypes and dynamic axes of the graph's inputs and outputs are declared once, in `IO_SPECS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cora.modeling.detector import padding_mask
from cora.modeling.postprocess import class_probabilities, cxcywh_to_xyxy
from cora.modeling.region_classifier import cosine_logits

# TensorRT's TopK supports k <= 3840.
MAX_TOPK = 3840


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. `shape` entries: an int (static), a dim name (dynamic) or "D" (the
    text embedding dim, static, filled in at export)."""

    name: str
    kind: str    # "input" | "output"
    dtype: str   # numpy dtype name
    shape: tuple
    doc: str


# Dim names: batch B, height H, width W (multiples of 32), num_classes K, max_detections M (static).
IO_SPECS: tuple[TensorSpec, ...] = (
    TensorSpec("images", "input", "float32", ("batch", 3, "height", "width"),
               "RGB in [0, 1], zero-padded at the bottom / right; normalisation is in the graph"),
    TensorSpec("image_sizes", "input", "int64", ("batch", 2),
               "(h, w) of each image's valid (un-padded) top-left region in input pixels, 1 <= h <= H, 1 <= w <= W"),
    TensorSpec("text_embeddings", "input", "float32", ("num_classes", "D"),
               "class text embeddings (re-normalised in the graph); absent with a baked vocabulary"),
    TensorSpec("class_prior", "input", "float32", ("num_classes",),
               "multiplies the pre-matching class probabilities (all ones = none)"),
    TensorSpec("boxes", "output", "float32", ("batch", "max_detections", 4),
               "xyxy in input pixels, clipped to the image's valid region; 0 when empty"),
    TensorSpec("scores", "output", "float32", ("batch", "max_detections"), "sorted descending, 0 when empty"),
    TensorSpec("labels", "output", "int64", ("batch", "max_detections"), "class index, -1 when empty"),
)

def io_specs(baked_vocabulary: bool) -> tuple[TensorSpec, ...]:
    """IO_SPECS of one export mode: a baked vocabulary drops the `text_embeddings` input."""
    return tuple(s for s in IO_SPECS if not (baked_vocabulary and s.name == "text_embeddings"))


# The text encoder graph (cora.runtime.onnx.OnnxTextEncoder): token ids -> unit-norm embeddings.
TEXT_IO_SPECS: tuple[TensorSpec, ...] = (
    TensorSpec("tokens", "input", "int64", ("num_prompts", 77),
               "open_clip BPE token ids, zero-padded to CLIP's context length"),
    TensorSpec("embeddings", "output", "float32", ("num_prompts", "D"), "L2-normalised text embeddings"),
)


class ExportableTextEncoder(nn.Module):
    """forward(tokens: Tensor[N, 77] int64) -> Tensor[N, D] = normalize(clip.encode_text(tokens)).

    One embedding per prompt; averaging the prompt templates of a class happens in the runtime, as in
    `cora.modeling.text.TextEmbedder`."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)


class ExportableCORA(nn.Module):
    """forward(images [B, 3, H, W], image_sizes [B, 2] int64 (h, w), text_embeddings [K, D], class_prior [K]) ->
    (boxes [B, M, 4] xyxy input pixels clipped to each image's valid region, scores [B, M],
    labels [B, M] int64, -1 for empty slots).

    With a baked vocabulary (`BakedVocabularyCORA`, what `from_detector` returns when given text
    embeddings), forward(images, image_sizes, class_prior). Shares (does not copy) the detector's modules.

    Args:
        detector: a `cora.modeling.detector.CORA`.
        text_embeddings: optional Tensor[K, D] to bake in as a constant.
        score_threshold, nms_iou, max_detections, pre_nms_topk: as `cora.modeling.postprocess.postprocess`
            (default: the detector's `cfg.inference`).
    """

    def __init__(self, detector: nn.Module, text_embeddings: Tensor | None = None, *, score_threshold: float,
                 nms_iou: float, max_detections: int, pre_nms_topk: int):
        super().__init__()
        for name, value in (("max_detections", max_detections), ("pre_nms_topk", pre_nms_topk)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < MAX_TOPK:
                raise ValueError(f"{name} must be an int in [1, {MAX_TOPK}) (TensorRT's TopK limit), got {value!r}")
        self.backbone = detector.backbone
        self.prematcher = detector.prematcher
        self.localizer = detector.localizer
        self.region_classifier = detector.region_classifier
        self.temperature = float(detector.cfg.temperature)
        self.embed_dim = int(detector.backbone.embed_dim)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)
        self.pre_nms_topk = int(pre_nms_topk)
        if text_embeddings is not None:
            if text_embeddings.dim() != 2 or text_embeddings.shape[1] != self.embed_dim or text_embeddings.shape[0] < 1:
                raise ValueError(f"text_embeddings must be Tensor[K, {self.embed_dim}] with K >= 1, "
                                 f"got {list(text_embeddings.shape)}")
            self.register_buffer("baked_text", text_embeddings.detach().float().clone())
        else:
            self.baked_text = None

    @classmethod
    def from_detector(cls, detector: nn.Module, text_embeddings: Tensor | None = None, **overrides) -> "ExportableCORA":
        ic = detector.cfg.inference
        kwargs = dict(score_threshold=ic.score_threshold, nms_iou=ic.nms_iou, max_detections=ic.max_detections,
                      pre_nms_topk=min(ic.pre_nms_topk, MAX_TOPK - 1))
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        if text_embeddings is not None and cls is ExportableCORA:
            cls = BakedVocabularyCORA
        return cls(detector, text_embeddings, **kwargs)

    @property
    def baked(self) -> bool:
        return self.baked_text is not None

    def forward(self, images: Tensor, image_sizes: Tensor, text_embeddings: Tensor,
                class_prior: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.raw_outputs(images, image_sizes, text_embeddings, class_prior)
        return self.detections(out["class_logits"], out["objectness"], out["boxes"])

    def raw_outputs(self, images: Tensor, image_sizes: Tensor, text_embeddings: Tensor,
                    class_prior: Tensor) -> dict[str, Tensor]:
        """`CORA.forward`, last decoder layer only, boxes in pixels.

        images: Tensor[B, 3, H, W] RGB in [0, 1], padded at the bottom / right; image_sizes: Tensor[B, 2]
        int64 (h, w) of each un-padded image in input pixels; text_embeddings: Tensor[K, D]; class_prior:
        Tensor[K]. Returns "boxes" [B, Q, 4] xyxy input pixels of the un-padded image (clipped to it),
        "objectness" [B, Q] logits, "class_logits" [B, Q, K]."""
        b, _, h, w = images.shape
        backbone = self.backbone
        layer3 = backbone.features(backbone.normalize(images))                   # [B, C3, H/16, W/16]
        layer4 = backbone.layer4_map(layer3)                                     # [B, C4, H/32, W/32]
        matched = self.prematcher(layer4, self.localizer.anchors(), image_sizes, (h, w), text_embeddings, class_prior)
        # True on the cells of the padded strip: the encoder and decoder do not attend to them, and the sine
        # positional encoding counts only the valid cells (so every cell's encoding depends on the valid size).
        mask = padding_mask(image_sizes, layer3.shape[-2:], backbone.stride)     # [B, H/16, W/16]
        out = self.localizer(layer3, mask, matched["content_queries"])
        # The localizer's boxes are relative to the un-padded image, as in CORA.forward.
        scale = image_sizes.flip(-1).repeat(1, 2).to(layer3.dtype)               # [B, 4] (w, h, w, h)
        boxes = cxcywh_to_xyxy(out["boxes"][-1]) * scale[:, None]               # [B, Q, 4] pixels
        embeddings = self.region_classifier.region_embeddings(layer3, boxes).reshape(b, boxes.shape[1], -1)  # [B, Q, D]
        logits = cosine_logits(embeddings, text_embeddings, self.temperature, self.embed_dim)  # [B, Q, K]
        clipped = torch.minimum(boxes.clamp(min=0), scale[:, None].expand_as(boxes))
        return {"boxes": clipped, "objectness": out["objectness"][-1], "class_logits": logits}

    def detections(self, class_logits: Tensor, objectness: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`postprocess` as tensor code, batched.

        class_logits [B, Q, K], objectness [B, Q], boxes [B, Q, 4] xyxy pixels ->
        boxes [B, M, 4], scores [B, M], labels [B, M] int64 (-1, score 0, box 0 in empty slots).
        """
        b, q, k = class_logits.shape
        m = self.max_detections
        scores = class_probabilities(class_logits) * objectness.sigmoid().unsqueeze(-1)  # [B, Q, K]
        flat = scores.reshape(b, q * k)                                                 # [B, Q*K]
        n = torch.sym_min(self.pre_nms_topk, q * k)
        top_scores, top_idx = flat.topk(n, dim=1)                                       # [B, n]
        query = top_idx // k
        label = top_idx - query * k                                                      # idx % K
        candidates = boxes.gather(1, query[..., None].expand(b, n, 4))                  # [B, n, 4]
        valid = top_scores > self.score_threshold
        # One NMS over the batch, a group per (image, class), by moving each group's boxes to their own tile
        # (torchvision's coordinate trick, written without its branch on the symbolic box count). Offsets
        # of label * size, as torchvision's, need ~log2(B * K) of float32's 24 bits (K = 4096 at 1333 px
        # leaves ~0.5 px). Here the classes present among an image's n candidates are ranked densely
        # (< n <= pre_nms_topk) and the rank is split over a 2-D grid of tiles, x by rank % R and y by
        # rank // R + image * R, so offsets stay below (B + 1) * R * size with R = ceil(sqrt(pre_nms_topk)).
        present = torch.zeros_like(scores[:, 0]).scatter(1, label, 1.0)                # [B, K]
        rank = (present.cumsum(1) - 1).gather(1, label).to(torch.int64)                # [B, n] in [0, n)
        grid = math.isqrt(self.pre_nms_topk - 1) + 1
        tile_y = rank // grid
        tile_x = rank - tile_y * grid
        tile_y = tile_y + torch.arange(b, device=label.device)[:, None] * grid          # [B, n]
        side = candidates.max() + 1
        shift = torch.stack([tile_x, tile_y, tile_x, tile_y], dim=-1).to(candidates) * side  # [B, n, 4]
        kept = torchvision.ops.nms((candidates + shift).reshape(-1, 4), top_scores.reshape(-1), self.nms_iou)
        keep = torch.zeros(b * n, dtype=torch.bool, device=kept.device).index_fill(0, kept, True).reshape(b, n)
        ranked = torch.where(keep & valid, top_scores, torch.full_like(top_scores, -1.0))  # [B, n]
        m_avail = torch.sym_min(m, n)
        best, order = ranked.topk(m_avail, dim=1)                                       # [B, m']
        found = best > -1.0
        out_boxes = torch.where(found[..., None], candidates.gather(1, order[..., None].expand(b, m_avail, 4)), 0.0)
        out_scores = torch.where(found, best, 0.0)
        out_labels = torch.where(found, label.gather(1, order), -1)
        pad = m - m_avail
        return (F.pad(out_boxes, (0, 0, 0, pad)), F.pad(out_scores, (0, pad)),
                F.pad(out_labels, (0, pad), value=-1))


class BakedVocabularyCORA(ExportableCORA):
    """ExportableCORA with its text embeddings as a constant:
    forward(images [B, 3, H, W], image_sizes [B, 2] int64 (h, w), class_prior [K])."""

    def forward(self, images: Tensor, image_sizes: Tensor,  # type: ignore[override]
                class_prior: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return super().forward(images, image_sizes, self.baked_text, class_prior)
