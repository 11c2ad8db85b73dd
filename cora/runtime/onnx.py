"""Run exported CORA graphs with ONNX Runtime, no PyTorch model needed.

    det = OnnxDetector("cora.onnx", text_encoder="text.onnx")
    results = det.detect(images, vocabulary="cat, dog, traffic light")    # like CORA.detect
    results = det.detect(images, text_embeddings=emb)                     # emb: [K, D]

    encode = OnnxTextEncoder("text.onnx")
    emb = encode(["cat", "dog"])                                          # [K, D], 80 templates averaged

Tokenizing uses open_clip's tokenizer: OpenAI's byte-pair encoding written in pure Python (ftfy + regex;
the open_clip package itself imports torch). It is fast enough for vocabularies (tens of thousands of
prompts per second) and keeps the tokens identical to those the model was trained with.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch

from cora.errors import UserError, first_line
from cora.runtime.base import ExportedDetector, read_metadata
from cora.text_cache import TextCache, namespace
from cora.vocabulary import IMAGENET_TEMPLATES, ensemble, prompts, tokenizer


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(path, providers, graph: str):
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    try:
        session = ort.InferenceSession(os.fspath(path), providers=providers or default_providers())
    except Exception as e:  # noqa: BLE001  onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
        raise UserError(f"{os.fspath(path)} is not an ONNX model ONNX Runtime can load ({first_line(e)[:200]})") from None
    meta = read_metadata(path, session.get_modelmeta().custom_metadata_map.get("cora"), fmt="onnx", graph=graph)
    return session, meta


class OnnxDetector(ExportedDetector):
    """An exported detector (`cora export`) under ONNX Runtime, with `CORA.detect`'s API.

    Args:
        path: the .onnx file (its `<path>.json` sidecar, or the copy in the model's metadata, gives the
            resize sizes and a baked vocabulary).
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        text_encoder: a text-encoder .onnx path or a callable names -> [K, D], for `vocabulary=` names
            (default: the text encoder exported with it, named in its metadata, if any).
        min_size, max_size: override the export's resize sizes (dynamic-size graphs only).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, text_encoder=None,
                 min_size: int | None = None, max_size: int | None = None):
        self.session, self.meta = _session(path, providers, "detector")
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "images" not in inputs or "class_prior" not in inputs:
            raise ValueError(f"{path!r} is not a CORA detector export: inputs {sorted(inputs)}, expected images, "
                             "image_sizes, [text_embeddings,] class_prior")
        self.input_names = list(inputs)
        h, w = inputs["images"].shape[2:]
        self.image_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        if "text_embeddings" in inputs:
            self.embed_dim = int(inputs["text_embeddings"].shape[1])
            self.vocabulary = None
        else:
            self.embed_dim = int(self.meta.get("embed_dim", 0))
            k = inputs["class_prior"].shape[0]
            self.vocabulary = list(self.meta.get("vocabulary") or [f"class_{i}" for i in range(k)])
        self._set_resize_sizes(min_size, max_size, self.meta["preprocess"])
        self.device = "cpu"
        self._set_text_encoder(open_text_encoder(text_encoder, path, self.meta))

    def _run(self, batch: torch.Tensor, image_sizes: np.ndarray, text: np.ndarray | None, prior: np.ndarray):
        feed = {"images": batch.cpu().numpy(), "image_sizes": image_sizes, "class_prior": prior}
        if text is not None:
            feed["text_embeddings"] = text
        return self.session.run(["boxes", "scores", "labels"], feed)


def open_text_encoder(text_encoder, model_path: str | os.PathLike, meta: dict):
    """A detector's text encoder: `text_encoder` as given (a callable names -> [K, D], or a text-encoder .onnx
    path, opened as OnnxTextEncoder), else the one exported with the model (`cora export --text-encoder`),
    named in its metadata relative to the model's folder, else None."""
    if text_encoder is None and meta.get("text_encoder"):
        text_encoder = os.path.join(os.path.dirname(os.fspath(model_path)), meta["text_encoder"])
    if isinstance(text_encoder, (str, os.PathLike)):
        return OnnxTextEncoder(text_encoder)
    return text_encoder


class OnnxTextEncoder:
    """Class names -> [K, D] text embeddings with an exported CLIP text encoder, as
    `cora.modeling.text.TextEmbedder`: each name in the 80 ImageNet templates, each prompt embedded and
    L2-normalised (in the graph), averaged over templates, re-normalised.

    Args:
        path: the text-encoder .onnx (`cora export --text-encoder`).
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        templates: prompt templates with one "{}" (default: the export's, else OpenAI's 80 ImageNet ones).
        batch_size: prompts per run.
        cache: True (the user's cache, `cora.text_cache.TextCache.default()`), a TextCache, or False. Keyed by
            the file's bytes, the templates and the context length, so a re-export never reads stale rows.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 templates: Sequence[str] | None = None, batch_size: int = 256, cache: TextCache | bool = True):
        self.session, meta = _session(path, providers, "text_encoder")
        self.cache = TextCache.default() if cache is True else (cache or None)
        self.path = os.fspath(path)
        self._namespace: str | None = None
        if [i.name for i in self.session.get_inputs()] != ["tokens"]:
            raise ValueError(f"{path!r} is not a CORA text-encoder export (expected one input 'tokens')")
        if templates is None:
            templates = meta.get("templates") or IMAGENET_TEMPLATES
        self.templates = list(templates)
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError("templates must be a non-empty list of strings with one '{}' each")
        self.context_length = int(meta.get("text_context_length", 77))
        self.tokenizer = tokenizer(self.context_length)
        self.batch_size = int(batch_size)

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts (N) -> [N, D] unit-norm embeddings."""
        chunks = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(list(prompts[start:start + self.batch_size])).numpy().astype(np.int64)
            chunks.append(self.session.run(["embeddings"], {"tokens": tokens})[0])
        return np.concatenate(chunks)

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        if isinstance(names, str) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"names must be a non-empty list of class names, got {names!r}")
        if self.cache is None:
            return self._encode(list(names))
        if self._namespace is None:
            with open(self.path, "rb") as f:
                digest = hashlib.file_digest(f, "blake2b").hexdigest()
            self._namespace = namespace(model="onnx", weights=digest, templates=self.templates,
                                        context_length=self.context_length)
        return self.cache.lookup(self._namespace, list(names), self._encode)

    def _encode(self, names: list[str]) -> np.ndarray:
        per_prompt = self.embed_prompts(prompts(names, self.templates))  # [K*T, D]
        return ensemble(per_prompt, len(names)).astype(np.float32)      # [K, D]
