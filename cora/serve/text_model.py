"""The served text side: the Triton Python-backend model `cora_text` (class names in, embeddings out), used
by the detector model through BLS and by clients directly.

    class_names      BYTES [K]      ->  text_embeddings  FP32 [K, D]

Embeddings come from the exported CLIP text encoder (cora.runtime.onnx.OnnxTextEncoder: the export's
templates and tokenizer), through a bounded least-recently-used cache of one embedding per class name, so
a repeated vocabulary, or one that shares names with recent ones, costs look-ups only, and memory stays
bounded however many vocabularies clients send. The cache belongs to one encoder and its templates, so the
name is the whole key.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cora.errors import UserError
from cora.export.triton import Limits
from cora.serve.requests import check_names


class TextCache:
    """names -> [K, D] float32 through `encode` (names -> [K, D]), remembering at most `capacity` names.

    Names missing from the cache are encoded in one call; the least recently used names are dropped once
    the cache holds more than `capacity`."""

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 name, got {capacity}")
        self.encode = encode
        self.capacity = capacity
        self.entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0  # names encoded so far (misses)

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        found = {n: self.entries[n] for n in names if n in self.entries}
        missing = list(dict.fromkeys(n for n in names if n not in found))
        if missing:
            found.update(zip(missing, self.encode(missing)))
            self.encoded += len(missing)
        for n in names:  # most recently used last
            self.entries[n] = found[n]
            self.entries.move_to_end(n)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return np.stack([found[n] for n in names]).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from cora.runtime.onnx import OnnxTextEncoder

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.limits = Limits.from_parameters(parameters)
        folder = Path(args["model_repository"]) / args["model_version"]
        encoder = OnnxTextEncoder(folder / parameters["text_encoder_file"])
        self.cache = TextCache(encoder, int(parameters["cache_names"]))

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses = []
        for request in requests:
            try:
                names = check_names(pb.get_input_tensor_by_name(request, "class_names").as_numpy(), self.limits)
                embeddings = self.cache(names)
            except UserError as e:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG)))
                continue
            responses.append(pb.InferenceResponse([pb.Tensor("text_embeddings", embeddings)]))
        return responses
