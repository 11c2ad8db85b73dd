"""What the Python-backend models share (cora.serve.detector_model, cora.serve.text_model): their settings
from config.pbtxt and Triton's arguments, the error response of a refused request, and the bounded cache
of class-name embeddings."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cora.export.triton import Limits


def model_settings(args: dict) -> tuple[dict[str, str], Limits, Path]:
    """Triton's `initialize` arguments -> (config.pbtxt `parameters` as strings, the request limits they
    set, the model's version folder, which holds its files)."""
    config = json.loads(args["model_config"])
    parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    return parameters, Limits.from_parameters(parameters), Path(args["model_repository"]) / args["model_version"]


def error_response(pb, message: str):
    """A response that refuses its request (INVALID_ARG: HTTP 400) with `message`; `pb`: Triton's
    triton_python_backend_utils."""
    return pb.InferenceResponse(error=pb.TritonError(message, pb.TritonError.INVALID_ARG))


class NameCache:
    """names -> [K, D] float32 through `encode` (names -> [K, D]), remembering at most `capacity` names in
    memory (per model process: a look-up per name, no I/O; under it, OnnxTextEncoder's on-disk
    cora.text_cache).

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
        return np.stack([found[n] for n in names]).astype(np.float32, copy=False)
