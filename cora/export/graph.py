"""The exported graphs: CORA's own forward (padded pixels + valid sizes + text embeddings in, padded
detections out) and the CLIP text tower, with their inputs and outputs declared once.

    module = export_module(detector)                    # runtime vocabulary: the detector itself
    module = export_module(detector, text_embeddings)   # baked vocabulary (the embeddings are a constant)

There is no sibling "exportable" model: `CORA.forward` is the graph (backbone, pre-matching, localizer,
region classifier, cora.modeling.scoring), written once for eager inference, evaluation and export. Its
`image_sizes` input gives each image's valid top-left region (cora.preprocess.letterbox returns it): the
pre-matcher scales the anchors by it, the padding mask hides the padded cells from the localizer and the
boxes are scaled and clipped by it. The graph cannot raise: sizes must be positive and fit in (H, W) (the
eager pre-matcher checks this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from cora.preprocess import SIZE_DIVISIBILITY


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


# The text encoder graph (cora.runtime.onnx.OnnxTextEncoder); 77 = CLIP's context length: token ids -> unit-norm embeddings.
TEXT_IO_SPECS: tuple[TensorSpec, ...] = (
    TensorSpec("tokens", "input", "int64", ("num_prompts", 77),
               "open_clip BPE token ids, zero-padded to CLIP's context length"),
    TensorSpec("embeddings", "output", "float32", ("num_prompts", "D"), "L2-normalised text embeddings"),
)


class TextEncoderGraph(nn.Module):
    """forward(tokens: Tensor[N, 77] int64) -> Tensor[N, D] = normalize(clip.encode_text(tokens)).

    One embedding per prompt; averaging a class's prompt templates happens outside the graph
    (cora.vocabulary.ensemble), as in `cora.modeling.text.TextEmbedder`."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)


class BakedVocabulary(nn.Module):
    """The detector with its text embeddings as a constant: forward(images [B, 3, H, W], image_sizes [B, 2]
    int64, class_prior [K]) = detector(images, image_sizes, text_embeddings, class_prior)."""

    def __init__(self, detector: nn.Module, text_embeddings: Tensor):
        super().__init__()
        self.detector = detector
        self.register_buffer("text_embeddings", text_embeddings.detach().float().clone())

    def forward(self, images: Tensor, image_sizes: Tensor, class_prior: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.detector(images, image_sizes, self.text_embeddings, class_prior)


def export_module(detector: nn.Module, text_embeddings: Tensor | None = None) -> nn.Module:
    """The module whose forward is exported (and which parity checks run): the detector itself for a
    runtime vocabulary, `BakedVocabulary` for baked text_embeddings Tensor[K, D]."""
    if text_embeddings is None:
        return detector
    dim = int(detector.backbone.embed_dim)
    if text_embeddings.dim() != 2 or text_embeddings.shape[1] != dim or text_embeddings.shape[0] < 1:
        raise ValueError(f"text_embeddings must be Tensor[K, {dim}] with K >= 1, got {list(text_embeddings.shape)}")
    return BakedVocabulary(detector, text_embeddings)


def default_image_size(cfg) -> tuple[int, int]:
    """The example size when none is given: the resize target rounded up to 32, wider than high."""
    side = -(-cfg.inference.min_size // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY
    return side, side + SIZE_DIVISIBILITY
