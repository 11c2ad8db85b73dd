"""The `detect` API shared by the runners of exported models (ONNX Runtime, TensorRT, Triton).

Images go through cora.preprocess (the resize rule, padding and letterbox of `CORA.detect`; a static-size
graph letterboxes every image into its (H, W)); the graph gets each image's resized size as `image_sizes`
and returns boxes in resized pixels, which cora.preprocess.to_original maps back to each original image.
`ExportedDetector` holds the API; a runner implements `_run`.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
import torch

from cora.errors import UserError
from cora.preprocess import (as_tensor, check_class_prior, check_image_sizes, check_text_embeddings, image_list,
                             letterbox, to_original)
from cora.vocabulary import load_vocabulary

# The export metadata versions this runtime reads (cora.export.onnx.FORMAT_VERSION).
FORMAT_VERSIONS = (2,)


def _float32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().contiguous().numpy()


def read_metadata(path: str | os.PathLike, embedded: str | None = None, *, fmt: str = "onnx",
                  graph: str = "detector") -> dict:
    """The export's metadata: the sidecar `<path>.json`, else the copy embedded in the model (key "cora").

    fmt: the file format the caller opens ("onnx", "engine"); graph: the graph it expects ("detector",
    "text_encoder"). Raises UserError when there is none (a file not exported by cora), it is not a JSON
    object, or its format, format_version or graph is not the expected one."""
    name, side = os.fspath(path), f"{os.fspath(path)}.json"
    has_side = os.path.isfile(side)
    where = side if has_side else f"{name} (its embedded 'cora' metadata)"
    if not has_side and not embedded:
        raise UserError(f"{name} has no cora metadata (no {os.path.basename(side)} beside it and none "
                        "embedded): export it with `cora export`")
    try:
        if has_side:
            with open(side, encoding="utf-8") as f:
                meta = json.load(f)
        else:
            meta = json.loads(embedded)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{where} is not valid JSON ({str(e).splitlines()[0]}): re-export with `cora export`") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where} must be a JSON object (cora export metadata), got {type(meta).__name__}")
    version = meta.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise UserError(f"{name} has export format version {version!r}; this cora reads "
                        f"{', '.join(map(str, FORMAT_VERSIONS))}: re-export it with `cora export`")
    for key, expected in (("format", fmt), ("graph", graph)):
        if meta.get(key) != expected:
            raise UserError(f"{where} says {key} {meta.get(key)!r}, expected {expected!r}: open a cora {expected} "
                            f"export with the matching runner")
    return meta


class ExportedDetector:
    """`detect(images, vocabulary=None, text_embeddings=None, class_prior=None)` as `CORA.detect`, over an
    exported graph. Subclasses set `embed_dim`, `image_size` (static (H, W) or None), `vocabulary` (baked
    names or None), `min_size` / `max_size`, `device`, and implement `_run(batch, image_sizes, text, prior)`.

    text_encoder: a callable names -> [K, D] (e.g. `cora.runtime.onnx.OnnxTextEncoder`, which subclasses open
    from a path). Only needed for `vocabulary`.
    """

    embed_dim: int
    image_size: tuple[int, int] | None
    vocabulary: list[str] | None
    min_size: int
    max_size: int
    device: str = "cpu"
    text_encoder: Callable | None = None

    def _set_resize_sizes(self, min_size: int | None, max_size: int | None, preprocess: dict) -> None:
        """min_size / max_size: the caller's override, else the export's (its metadata's "preprocess")."""
        for name, value in (("min_size", min_size), ("max_size", max_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 (pixels), got {value!r}")
        self.min_size = int(min_size if min_size is not None else preprocess["min_size"])
        self.max_size = int(max_size if max_size is not None else preprocess["max_size"])

    def _set_text_encoder(self, text_encoder) -> None:
        if text_encoder is not None and not callable(text_encoder):
            raise ValueError(f"text_encoder must be a text-encoder .onnx path or a callable names -> [K, D], "
                             f"got {type(text_encoder).__name__}")
        self.text_encoder = text_encoder

    def encode_vocabulary(self, vocabulary: str | Sequence[str]) -> np.ndarray:
        """Class names (see cora.vocabulary.load_vocabulary) -> [K, D] float32 through the text encoder."""
        if self.text_encoder is None:
            raise ValueError("class names need a text encoder: pass text_encoder= (a text-encoder .onnx from "
                             "`export/to_onnx.py --text-encoder` or a callable names -> [K, D]), "
                             "or pass text_embeddings instead of a vocabulary")
        return _float32(check_text_embeddings(self.text_encoder(load_vocabulary(vocabulary)), self.embed_dim))

    def detect(self, images, vocabulary: str | Sequence[str] | None = None, text_embeddings=None,
               class_prior=None) -> list[dict[str, torch.Tensor]]:
        """images: [B, 3, H, W] or a list of [3, H, W] float RGB in [0, 1] (numpy or torch).
        Give the vocabulary (names) or its text_embeddings [K, D] (neither for a baked vocabulary).
        Returns B dicts with "boxes" [M, 4] xyxy original pixels, "scores" [M], "labels" [M] int64."""
        if self.vocabulary is not None:
            if vocabulary is not None or text_embeddings is not None:
                raise ValueError(f"this model has a baked vocabulary of {len(self.vocabulary)} classes "
                                 f"({', '.join(self.vocabulary[:5])}{', ...' if len(self.vocabulary) > 5 else ''}): "
                                 "pass neither vocabulary nor text_embeddings")
            text = None
        else:
            if (vocabulary is None) == (text_embeddings is None):
                raise ValueError("give exactly one of vocabulary (class names) and text_embeddings [K, D]")
            text = self.encode_vocabulary(vocabulary) if text_embeddings is None else text_embeddings
        batch, sizes, originals = letterbox(images, self.min_size, self.max_size, self.image_size, self.device)
        boxes, scores, labels = self.run(batch, sizes, text, class_prior)
        return to_original(boxes, scores, labels, sizes, originals)

    def run(self, images, image_sizes, text_embeddings=None, class_prior=None):
        """The exported graph on a batch the caller letterboxed (`detect` does it for you), its inputs checked
        first: images [B, 3, H, W] float RGB in [0, 1]; image_sizes [B, 2] int (h, w) of each image's valid
        top-left region, 1 <= h <= H, 1 <= w <= W; text_embeddings [K, D] finite (None for a baked
        vocabulary); class_prior [K] finite >= 0 (None: ones). numpy or torch.
        Returns (boxes [B, M, 4] xyxy pixels of the batch, scores [B, M], labels [B, M] int64, -1 = empty)."""
        batch = as_tensor(images, "images")
        image_list(batch)  # the [B, 3, H, W] float RGB in [0, 1] checks
        sizes = check_image_sizes(image_sizes, batch.shape)
        if self.vocabulary is not None:
            if text_embeddings is not None:
                raise ValueError(f"this model has a baked vocabulary of {len(self.vocabulary)} classes: "
                                 "pass no text_embeddings")
            text, k = None, len(self.vocabulary)
        else:
            if text_embeddings is None:
                raise ValueError("text_embeddings [K, D] are required (this model has no baked vocabulary)")
            text = _float32(check_text_embeddings(text_embeddings, self.embed_dim))
            k = text.shape[0]
        prior = check_class_prior(class_prior, k)
        prior = np.ones(k, np.float32) if prior is None else _float32(prior)
        batch = batch.to(device=self.device, dtype=torch.float32)
        return self._run(batch, sizes.to(torch.int64).cpu().numpy(), text, prior)

    def _run(self, batch: torch.Tensor, image_sizes: np.ndarray, text: np.ndarray | None, prior: np.ndarray):
        """Run the graph. batch: float32 [B, 3, H, W] on `device`; image_sizes: int64 [B, 2] (h, w) of each
        image's un-padded part; text: float32 [K, D] or None (baked vocabulary); prior: float32 [K].
        Returns (boxes [B, M, 4] xyxy pixels of the resized image, scores [B, M], labels [B, M] int64)."""
        raise NotImplementedError
