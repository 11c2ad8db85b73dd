"""Parity of a served detector (`cora serve`) with ONNX Runtime on the same export, through the detect API.

    rows = served_parity("model.onnx", "127.0.0.1:8001", cases)    # cases: cora.export.parity.default_cases

`cora check parity model.onnx --served HOST:PORT` runs it after the graph parity (PyTorch == ONNX Runtime), so
one run shows PyTorch == ONNX Runtime == Triton. The server letterboxes images itself, so each image of a
case goes in as the image it stands for (its valid region, `image_sizes`), alone; the reference is
`OnnxDetector.detect` on that image alone, with the case's vocabulary and prior. cora.export.parity's
parity_check compares the two slot by slot (boxes in original pixels, float32 tolerances).
"""

from __future__ import annotations

import os
from typing import Callable

import torch

from cora.export.parity import parity_check


def per_image(detector, m: int) -> Callable:
    """A graph-like callable (images [B, 3, H, W], image_sizes [B, 2], text_embeddings [K, D], class_prior [K])
    -> padded (boxes [B, m, 4], scores [B, m], labels [B, m], -1 when empty) that runs `detector.detect` on
    each image's valid region alone."""
    def run(images, image_sizes, text_embeddings, class_prior):
        images, sizes = torch.as_tensor(images), torch.as_tensor(image_sizes).tolist()
        count = len(sizes)
        boxes, scores, labels = torch.zeros(count, m, 4), torch.zeros(count, m), torch.full((count, m), -1)
        for b, (h, w) in enumerate(sizes):
            (r,) = detector.detect([images[b, :, :h, :w]], text_embeddings=text_embeddings, class_prior=class_prior)
            n = len(r["labels"])
            boxes[b, :n], scores[b, :n], labels[b, :n] = r["boxes"], r["scores"], r["labels"]
        return boxes, scores, labels
    return run


def served_parity(onnx_path: str | os.PathLike, url: str, cases: list, protocol: str = "grpc",
                  model: str = "cora", reference=None) -> list[dict]:
    """Every image of every case through the served model at `url` and through ONNX Runtime on `onnx_path`
    (or `reference`, an OnnxDetector); one row per case (cora.export.parity.format_table), or ParityError
    listing every failure."""
    from cora.runtime.onnx import OnnxDetector
    from cora.runtime.triton import TritonDetector

    reference = reference or OnnxDetector(onnx_path)
    m = int(reference.meta["postprocess"]["max_detections"])
    served = per_image(TritonDetector(url, protocol=protocol, model=model), m)

    def run(feed: dict) -> tuple:
        return tuple(t.numpy() for t in served(**feed))

    return parity_check(onnx_path, per_image(reference, m), cases, run=run)
