"""The CORA detector: CLIP backbone, anchor pre-matching, DAB-DETR localizer, region classifier.

Data flow for a batch of padded images [B, 3, H, W] (RGB in [0, 1]) and a vocabulary of K classes:

    layer3 = CLIP stem..layer3 (stride 16)                [B, C3, H/16, W/16]
    layer4 = CLIP layer4 on the whole map (stride 32)     [B, C4, H/32, W/32]
    pre-matching: each of the Q anchors is pooled from layer4 (RoIAlign + prompted attention pool),
        matched to its most similar class, content query = MLP(text embedding of that class)
    localizer: one decoder pass for all classes         boxes [L, B, Q, 4], objectness [L, B, Q]
    region classifier on the final boxes                 class logits [B, Q, K]
    scoring (cora.modeling.scoring): every box x every class, per-class NMS, top M per image

Cost is flat in K apart from the two cosine products (see benchmarks/vocab_scaling.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from cora.config import CORAConfig
from cora.modeling.backbone import build_backbone
from cora.modeling.localizer import DABLocalizer
from cora.modeling.scoring import boxes_to_pixels, detections
from cora.modeling.prematch import AnchorPreMatcher
from cora.modeling.region_classifier import RegionClassifier
from cora.modeling.text import TextEmbedder
from cora.preprocess import check_class_prior, check_text_embeddings, letterbox, to_original
from cora.text_cache import TextCache
from cora.vocabulary import load_vocabulary

class CORA(nn.Module):
    """forward(images, image_sizes, text_embeddings, class_prior=None) -> padded detections (the exported graph);
    predict_raw(same) -> the raw outputs; forward_train (training); detect(images, vocabulary or
    text_embeddings, class_prior=None) -> detections per image in original pixels (inference)."""

    def __init__(self, cfg: CORAConfig, backbone, clip_model, text_embedder: TextEmbedder | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.region_classifier = RegionClassifier(backbone, temperature=cfg.temperature)
        self.prematcher = AnchorPreMatcher(
            backbone, self.region_classifier.pool, text_dim=backbone.embed_dim,
            hidden_dim=cfg.localizer.hidden_dim, temperature=cfg.temperature,
        )
        lc = cfg.localizer
        self.localizer = DABLocalizer(
            backbone.layer3_channels, hidden_dim=lc.hidden_dim, num_queries=lc.num_queries, num_heads=lc.num_heads,
            num_encoder_layers=lc.num_encoder_layers, num_decoder_layers=lc.num_decoder_layers,
            dim_feedforward=lc.dim_feedforward, dropout=lc.dropout,
        )
        # The text tower is used, never trained: kept out of the module tree (and out of checkpoints).
        self._clip_model = [clip_model]
        self.text_embedder = text_embedder

    @classmethod
    def from_config(cls, cfg: CORAConfig, clip_weights: str | None = None, random_init: bool = False,
                    text_cache: TextCache | None | bool = True) -> "CORA":
        """CLIP weights: `clip_weights` (a local file), else the config's open_clip tag, else (with
        `random_init`) random. Learned CORA weights are loaded separately (cora.checkpoint).
        Text embeddings are cached in `text_cache`; True: the user's cache (`TextCache.default()`)."""
        from cora.vocabulary import tokenizer

        pretrained = None if (random_init or clip_weights) else cfg.backbone.pretrained
        backbone, clip_model = build_backbone(cfg.backbone.clip_model, pretrained=pretrained, weights_path=clip_weights)
        model_key = f"{cfg.backbone.clip_model}/{clip_weights or pretrained or 'random'}"
        if text_cache is True:
            text_cache = TextCache.default()
        embedder = TextEmbedder(clip_model, tokenizer(cfg.text_context_length), model_key,
                                cache=text_cache or None, context_length=cfg.text_context_length)
        return cls(cfg, backbone, clip_model, embedder)

    def learned_state_dict(self) -> dict[str, Tensor]:
        """What training changes (prompt, localizer, text projection), without the frozen CLIP weights."""
        seen = {t.data_ptr() for t in self._clip_model[0].state_dict().values()}
        learned = {}
        for k, v in self.state_dict().items():  # a tensor shared by two modules is kept once
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                learned[k] = v
        return learned

    def encode_vocabulary(self, vocabulary: str | Sequence[str]) -> Tensor:
        """Class names (list, comma-separated string, .txt or COCO/LVIS json) -> Tensor[K, D]."""
        if self.text_embedder is None:
            raise ValueError("this model has no text encoder: pass text_embeddings instead of a vocabulary")
        return self.text_embedder(load_vocabulary(vocabulary)).to(self.device)

    @property
    def device(self) -> torch.device:
        return self.localizer.anchors().device

    def forward(self, images: Tensor, image_sizes: Tensor, text_embeddings: Tensor,
                class_prior: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The detection graph: what `detect`, evaluation, the ONNX / TensorRT export and the runtimes run.

        Args:
            images: Tensor[B, 3, H, W] RGB in [0, 1], zero-padded at the bottom / right (cora.preprocess).
            image_sizes: Tensor[B, 2] int64 (h, w) of each un-padded image in pixels, 1 <= h <= H, 1 <= w <= W.
            text_embeddings: Tensor[K, D] L2-normalised class embeddings (K >= 1).
            class_prior: optional Tensor[K] multiplying the pre-matching probabilities (None: ones).
        Returns (M = cfg.inference.max_detections):
            boxes Tensor[B, M, 4] xyxy pixels of the un-padded image (clipped to it), scores Tensor[B, M]
            descending, labels Tensor[B, M] int64 class indices; empty slots: box 0, score 0, label -1.
        """
        out = self.predict_raw(images, image_sizes, text_embeddings, class_prior)
        ic = self.cfg.inference
        boxes = boxes_to_pixels(out["boxes"][-1], image_sizes)                       # [B, Q, 4] clipped
        return detections(out["class_logits"], out["objectness"][-1], boxes, score_threshold=ic.score_threshold,
                          nms_iou=ic.nms_iou, max_detections=ic.max_detections, pre_nms_topk=ic.pre_nms_topk)

    def predict_raw(self, images: Tensor, image_sizes: Tensor, text_embeddings: Tensor,
                    class_prior: Tensor | None = None) -> dict[str, Tensor]:
        """`forward` before scoring (arguments as there).

        Returns a dict:
            "boxes": Tensor[L, B, Q, 4] normalised cxcywh (relative to the un-padded image), per decoder layer;
            "objectness": Tensor[L, B, Q] logits; "classes": Tensor[B, Q] pre-matched class per query;
            "class_logits": Tensor[B, Q, K] region-classifier logits of the last layer's boxes.
        """
        layer3, out = self._localize(images, image_sizes, [text_embeddings], class_prior)
        # The region classifier sees the decoded boxes unclipped (RoIAlign zero-fills outside the map).
        boxes_px = boxes_to_pixels(out["boxes"][-1], image_sizes, clip=False)        # [B, Q, 4] pixels
        logits = self.region_classifier(layer3, boxes_px.detach(), text_embeddings)
        return {**out, "class_logits": logits.view(images.shape[0], -1, text_embeddings.shape[0])}

    def forward_train(self, images: Tensor, image_sizes: Tensor, text_groups: Sequence[Tensor]) -> dict[str, Tensor]:
        """What training needs, for G vocabularies of one batch (class dropout: G = 2 complementary groups):
        CLIP and the localizer's encoder run once, pre-matching and the decoder once per group (batched).
        No region classification (training does not use it).

        text_groups: G tensors [K_g, D]. Returns "boxes" Tensor[L, G*B, Q, 4], "objectness" Tensor[L, G*B, Q] and
        "classes" Tensor[G*B, Q] (indices into the row's group), group g of image b at row g * B + b; with G = 1,
        forward's entries of the same names."""
        return self._localize(images, image_sizes, text_groups)[1]

    def _localize(self, images: Tensor, image_sizes: Tensor, text_groups: Sequence[Tensor],
                  class_prior: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Backbone, pre-matching per vocabulary group, localizer (encoder once, one batched decoder pass):
        layer3 Tensor[B, C3, H/16, W/16] and {"boxes", "objectness", "classes"} with G*B rows (forward_train)."""
        _, _, h, w = images.shape
        layer3 = self.backbone.features(self.backbone.normalize(images))              # [B, C3, H/16, W/16]
        layer4 = self.backbone.layer4_map(layer3)                                     # [B, C4, H/32, W/32]
        anchors = self.localizer.anchors()
        matched = [self.prematcher(layer4, anchors, image_sizes, (h, w), text, class_prior) for text in text_groups]
        mask = padding_mask(image_sizes, layer3.shape[-2:], self.backbone.stride)     # [B, H/16, W/16]
        out = self.localizer(layer3, mask, torch.cat([m["content_queries"] for m in matched]))
        return layer3, {**out, "classes": torch.cat([m["classes"] for m in matched])}

    @torch.no_grad()
    def detect(self, images, vocabulary: str | Sequence[str] | None = None, text_embeddings: Tensor | None = None,
               class_prior: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Detections per image, boxes xyxy in the input images' pixels.

        images: Tensor[B, 3, H, W] or a list of Tensor[3, H_i, W_i], RGB float in [0, 1] (numpy works too).
        Give the vocabulary (names) or its text_embeddings [K, D]. Returns B dicts with "boxes" [M, 4],
        "scores" [M], "labels" [M] (indices into the vocabulary), by decreasing score.
        """
        if (vocabulary is None) == (text_embeddings is None):
            raise ValueError("give exactly one of vocabulary (class names) and text_embeddings [K, D]")
        if text_embeddings is None:
            text_embeddings = self.encode_vocabulary(vocabulary)
        text_embeddings = check_text_embeddings(text_embeddings, self.backbone.embed_dim)
        prior = check_class_prior(class_prior, text_embeddings.shape[0])
        batch, sizes, originals = self.preprocess(images)
        prior = None if prior is None else prior.to(batch)
        boxes, scores, labels = self.forward(batch, sizes, text_embeddings.to(batch), prior)
        return to_original(boxes, scores, labels, sizes, originals)

    def preprocess(self, images) -> tuple[Tensor, Tensor, Tensor]:
        """`cora.preprocess.letterbox` with this model's resize sizes, on its device: the batch [B, 3, H, W],
        the resized sizes [B, 2] and the original sizes [B, 2] (h, w)."""
        ic = self.cfg.inference
        return letterbox(images, ic.min_size, ic.max_size, device=self.device)


def padding_mask(image_sizes: Tensor, map_size: tuple[int, int], stride: int) -> Tensor:
    """Tensor[B, h, w] bool, True where a feature-map cell lies in the padding (DETR convention)."""
    h, w = map_size
    ys = torch.arange(h, device=image_sizes.device) * stride
    xs = torch.arange(w, device=image_sizes.device) * stride
    return (ys[None, :, None] >= image_sizes[:, 0, None, None]) | (xs[None, None, :] >= image_sizes[:, 1, None, None])
