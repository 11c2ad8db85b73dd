"""Pre- and post-processing shared by the runners of exported models (ONNX Runtime, TensorRT).

Mirrors `CORA.preprocess`: each image is resized (bilinear, antialiased, as torch.nn.functional.interpolate
does it, so the pixels are the same) so that its shorter side is `min_size` and its longer side at most
`max_size`, then the batch is zero-padded at the bottom / right to a multiple of 32. A static-size graph
instead letterboxes every image into its (H, W). The graph gets each image's resized size (before padding)
as `image_sizes`, so it masks the padding as `CORA.forward` does and returns boxes in the pixels of the
resized image; they are mapped back by the resize scale and clipped to each original image.

`ExportedDetector` holds the `detect` API common to the runners; a runner implements `_run`.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

SIZE_DIVISIBILITY = 32  # = cora.modeling.detector.SIZE_DIVISIBILITY (layer4 stride)


def _to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a numpy array or torch Tensor, got {type(x).__name__}")
    return x


def image_list(images) -> list[torch.Tensor]:
    """Tensor / ndarray [B, 3, H, W] or a list of [3, H, W], float RGB in [0, 1] -> list of float32 [3, H, W]."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        images = _to_tensor(images, "images")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] or a list of [3, H, W] (RGB), got shape {list(images.shape)}")
        images = list(images)
    if not isinstance(images, (list, tuple)) or not images:
        raise ValueError(f"images must be [B, 3, H, W] or a non-empty list of [3, H, W], got {type(images).__name__}")
    out = []
    for i, img in enumerate(images):
        img = _to_tensor(img, f"images[{i}]")
        if img.dim() != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1:
            raise ValueError(f"images[{i}] must be [3, H, W] RGB, got shape {list(img.shape)}")
        if not img.is_floating_point():
            raise ValueError(f"images[{i}] must be float in [0, 1], got {img.dtype} (divide uint8 images by 255)")
        out.append(img.float())
    return out


def letterbox(images, min_size: int, max_size: int, fixed_size: tuple[int, int] | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """Resize and pad a batch.

    images: see `image_list`. fixed_size: (H, W) of a static-size graph; None = CORA's rule (shorter side
    min_size, longer <= max_size, padded to a multiple of 32).
    Returns (batch float32 [B, 3, H, W] on `device`, resized (h, w) per image, original (h, w) per image).
    """
    resized, sizes, originals = [], [], []
    for img in image_list(images):
        h, w = img.shape[1:]
        if fixed_size is None:
            scale = min(min_size / min(h, w), max_size / max(h, w))
        else:
            scale = min(fixed_size[0] / h, fixed_size[1] / w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if fixed_size is not None:
            size = (min(size[0], fixed_size[0]), min(size[1], fixed_size[1]))
        r = F.interpolate(img[None].to(device), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        resized.append(r.clamp(0, 1))
        sizes.append(size)
        originals.append((int(h), int(w)))
    if fixed_size is None:
        ph, pw = (-(-max(v) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY for v in zip(*sizes))
    else:
        ph, pw = fixed_size
    batch = torch.zeros(len(resized), 3, ph, pw, device=device)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[1], : r.shape[2]] = r
    return batch, sizes, originals


def to_original(boxes, scores, labels, sizes, originals) -> list[dict[str, torch.Tensor]]:
    """Graph outputs ([B, M, 4] xyxy input pixels, [B, M], [B, M] with -1 in empty slots) -> per image
    {"boxes" [m, 4] xyxy original pixels (clipped), "scores" [m], "labels" [m] int64}, empty slots dropped."""
    boxes, scores, labels = (torch.as_tensor(x) for x in (boxes, scores, labels))
    results = []
    for i, ((rh, rw), (h, w)) in enumerate(zip(sizes, originals)):
        keep = labels[i] >= 0
        scale = boxes.new_tensor([w / rw, h / rh, w / rw, h / rh])
        limit = boxes.new_tensor([w, h, w, h])
        b = torch.minimum((boxes[i][keep] * scale).clamp(min=0), limit)
        results.append({"boxes": b, "scores": scores[i][keep], "labels": labels[i][keep].long()})
    return results


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


def missing_image_sizes(path: str | os.PathLike, inputs: Sequence[str]) -> str:
    """The error message for a detector file without the `image_sizes` input (an export older than it)."""
    return (f"{os.fspath(path)!r} has no 'image_sizes' input (its inputs: {', '.join(inputs)}): it was exported before "
            "the graph took the un-padded image sizes, so it treats the padding as image and differs from "
            "CORA.detect; re-export it with export/to_onnx.py (or `cora export`)")


def read_metadata(path: str | os.PathLike, embedded: str | None = None) -> dict:
    """The export's JSON (sidecar `<path>.json`, else the copy embedded in the model), or {}."""
    side = f"{os.fspath(path)}.json"
    if os.path.isfile(side):
        with open(side) as f:
            return json.load(f)
    return json.loads(embedded) if embedded else {}


class ExportedDetector:
    """`detect(images, vocabulary=None, text_embeddings=None, class_prior=None)` as `CORA.detect`, over an
    exported graph. Subclasses set `embed_dim`, `image_size` (static (H, W) or None), `vocabulary` (baked
    names or None), `min_size` / `max_size`, `device`, and implement `_run(batch, image_sizes, text, prior)`.

    text_encoder: turns class names into [K, D] embeddings: a text-encoder .onnx path
    (`cora.runtime.onnx.OnnxTextEncoder`), or any callable names -> [K, D]. Only needed for `vocabulary`.
    """

    embed_dim: int
    image_size: tuple[int, int] | None
    vocabulary: list[str] | None
    min_size: int
    max_size: int
    device: str = "cpu"
    text_encoder: Callable | None = None

    def _set_text_encoder(self, text_encoder) -> None:
        if isinstance(text_encoder, (str, os.PathLike)):
            from cora.runtime.onnx import OnnxTextEncoder

            text_encoder = OnnxTextEncoder(text_encoder)
        if text_encoder is not None and not callable(text_encoder):
            raise ValueError(f"text_encoder must be a text-encoder .onnx path or a callable names -> [K, D], "
                             f"got {type(text_encoder).__name__}")
        self.text_encoder = text_encoder

    def encode_vocabulary(self, vocabulary: str | Sequence[str]) -> np.ndarray:
        """Class names (list or comma-separated string) -> [K, D] float32 through the text encoder."""
        if self.text_encoder is None:
            raise ValueError("class names need a text encoder: pass text_encoder= (a text-encoder .onnx from "
                             "`export/to_onnx.py --text-encoder` or a callable names -> [K, D]), "
                             "or pass text_embeddings instead of a vocabulary")
        names = [n.strip() for n in vocabulary.split(",")] if isinstance(vocabulary, str) else list(vocabulary)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"vocabulary must be non-empty class names, got {vocabulary!r}")
        return check_text_embeddings(self.text_encoder(names), self.embed_dim)

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
        image_sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)  # [B, 2] (h, w) resized, before padding
        boxes, scores, labels = self._run(batch, image_sizes, text, prior)
        return to_original(boxes, scores, labels, sizes, originals)

    def _run(self, batch: torch.Tensor, image_sizes: np.ndarray, text: np.ndarray | None, prior: np.ndarray):
        """Run the graph. batch: float32 [B, 3, H, W] on `device`; image_sizes: int64 [B, 2] (h, w) of each
        image's un-padded part; text: float32 [K, D] or None (baked vocabulary); prior: float32 [K].
        Returns (boxes [B, M, 4] xyxy pixels of the resized image, scores [B, M], labels [B, M] int64)."""
        raise NotImplementedError
