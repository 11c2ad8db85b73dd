"""Checks of what a client sends to the served detector: every bad input becomes one UserError naming the
input and the expected form, which the model turns into that request's error response (the server and the
other requests of its batch carry on).

Limits (cora.export.triton.Limits: the model's config.pbtxt parameters): an encoded image of at most
`max_image_bytes`, an image side of at most `max_image_side` pixels (checked from the file header, before
the pixels are decoded), at most `max_classes` classes per vocabulary.
"""

from __future__ import annotations

import io

import numpy as np

from cora.errors import UserError
from cora.export.triton import Limits
from cora.preprocess import check_class_prior, check_text_embeddings, image_list


def decode_image(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """An encoded image (JPEG, PNG or anything Pillow reads) -> float32 [3, h, w] RGB in [0, 1]."""
    from PIL import Image

    if not isinstance(data, bytes) or not data:
        raise UserError(f"{name} must be the bytes of an encoded image (JPEG / PNG), got an empty value")
    if len(data) > limits.max_image_bytes:
        raise UserError(f"{name} is {len(data)} bytes, over the limit of {limits.max_image_bytes} bytes")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size  # from the header: the limit holds before the pixels are decoded
        if max(w, h) > limits.max_image_side:
            raise UserError(f"{name} is {w} x {h} pixels, over the limit of {limits.max_image_side} pixels a side")
        rgb = np.asarray(image.convert("RGB"))  # [h, w, 3] uint8
    except UserError:
        raise
    except Exception as e:  # Pillow raises many types for a broken file; the request gets one line
        raise UserError(f"{name} cannot be decoded as an image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


def _checked(check, name: str, *args):
    """cora.preprocess's check (the one every detector input goes through), its ValueError as a UserError
    naming the request input `name`."""
    try:
        return check(*args)
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None


def check_float_image(image: np.ndarray, limits: Limits, name: str = "image_float") -> np.ndarray:
    """[3, h, w] float32 (Triton has checked dtype and rank): RGB in [0, 1], sides in [1, max_image_side]."""
    if max(image.shape[1:]) > limits.max_image_side:
        raise UserError(f"{name} is {list(image.shape)}, over the limit of {limits.max_image_side} pixels a side")
    image = np.array(image)  # a copy: Triton's input buffer is read-only and reused
    _checked(image_list, name, [image])
    return image


def check_names(values: np.ndarray, limits: Limits, name: str = "class_names") -> list[str]:
    """BYTES [K] -> K class names: UTF-8, none empty, 1 <= K <= max_classes."""
    k = values.size
    if not 1 <= k <= limits.max_classes:
        raise UserError(f"{name} must hold 1 to {limits.max_classes} class names, got {k}")
    names = []
    for i, v in enumerate(values.reshape(-1)):
        try:
            text = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        except UnicodeDecodeError:
            raise UserError(f"{name}[{i}] is not UTF-8 text") from None
        if not text.strip():
            raise UserError(f"{name}[{i}] is empty (every class needs a name)")
        names.append(text.strip())
    return names


def check_embeddings(values: np.ndarray, embed_dim: int, limits: Limits, name: str = "text_embeddings") -> np.ndarray:
    """float32 [K, D]: D = the model's, 1 <= K <= max_classes, finite."""
    if values.shape[0] > limits.max_classes:
        raise UserError(f"{name} holds {values.shape[0]} classes, over the limit of {limits.max_classes}")
    _checked(check_text_embeddings, name, values, embed_dim)
    return values


def check_prior(values: np.ndarray | None, k: int, name: str = "class_prior") -> np.ndarray:
    """float32 [K] of finite weights >= 0, or None (all ones)."""
    if values is None:
        return np.ones(k, np.float32)
    _checked(check_class_prior, name, values, k)
    return values
