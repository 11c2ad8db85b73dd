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
from cora.preprocess import letterbox, to_original
from cora.vocabulary import load_vocabulary

# The export metadata versions this runtime reads (cora.export.onnx.FORMAT_VERSION).
FORMAT_VERSIONS = (2,)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch Tensor, got {type(x).__name__}")
    return x


def check_text_embeddings(text_embeddings, embed_dim: int) -> np.ndarray:
    """[K, D] float (numpy or torch), K >= 1, D = embed_dim -> float32 numpy."""
    t = _to_tensor(text_embeddings, "text_embeddings")
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] != embed_dim:
        raise ValueError(f"text_embeddings must be [K, {embed_dim}] with K >= 1, got shape {list(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"text_embeddings must be floating point, got {t.dtype}")
    return t.detach().float().cpu().contiguous().numpy()


def check_class_prior(class_prior, k: int) -> np.ndarray:
    """[K] float or None (all ones) -> float32 numpy."""
    if class_prior is None:
        return np.ones(k, np.float32)
    p = _to_tensor(class_prior, "class_prior")
    if tuple(p.shape) != (k,) or not p.is_floating_point():
        raise ValueError(f"class_prior must be a float [K] = [{k}] (one weight per class), got {p.dtype} {list(p.shape)}")
    return p.detach().float().cpu().contiguous().numpy()


def read_metadata(path: str | os.PathLike, embedded: str | None = None) -> dict:
    """The export's metadata: the sidecar `<path>.json`, else the copy embedded in the model (key "cora").

    Raises UserError when there is none (a file not exported by cora) or its format_version is unknown."""
    side = f"{os.fspath(path)}.json"
    if os.path.isfile(side):
        with open(side, encoding="utf-8") as f:
            meta = json.load(f)
    elif embedded:
        meta = json.loads(embedded)
    else:
        raise UserError(f"{os.fspath(path)} has no cora metadata (no {os.path.basename(side)} beside it and none "
                        "embedded): export it with `cora export`")
    version = meta.get("format_version")
    if version not in FORMAT_VERSIONS:
        raise UserError(f"{os.fspath(path)} has export format version {version!r}; this cora reads "
                        f"{', '.join(map(str, FORMAT_VERSIONS))}: re-export it with `cora export`")
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
        return check_text_embeddings(self.text_encoder(load_vocabulary(vocabulary)), self.embed_dim)

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
            text, k = None, len(self.vocabulary)
        else:
            if (vocabulary is None) == (text_embeddings is None):
                raise ValueError("give exactly one of vocabulary (class names) and text_embeddings [K, D]")
            text = self.encode_vocabulary(vocabulary) if text_embeddings is None \
                else check_text_embeddings(text_embeddings, self.embed_dim)
            k = text.shape[0]
        prior = check_class_prior(class_prior, k)
        batch, sizes, originals = letterbox(images, self.min_size, self.max_size, self.image_size, self.device)
        boxes, scores, labels = self._run(batch, sizes.cpu().numpy(), text, prior)
        return to_original(boxes, scores, labels, sizes, originals)

    def _run(self, batch: torch.Tensor, image_sizes: np.ndarray, text: np.ndarray | None, prior: np.ndarray):
        """Run the graph. batch: float32 [B, 3, H, W] on `device`; image_sizes: int64 [B, 2] (h, w) of each
        image's un-padded part; text: float32 [K, D] or None (baked vocabulary); prior: float32 [K].
        Returns (boxes [B, M, 4] xyxy pixels of the resized image, scores [B, M], labels [B, M] int64)."""
        raise NotImplementedError
