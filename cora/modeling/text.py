"""CLIP text embeddings of class names (prompt-ensembled, cached on disk). Names, templates, the tokenizer
and the ensembling rule come from cora.vocabulary.

    embed = TextEmbedder(clip, cora.vocabulary.tokenizer(), model_key="RN50/openai", cache_dir="~/.cache/cora")
    text_embeddings = embed(names)                            # Tensor[K, D], unit rows
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence

import torch
from torch import Tensor

from cora.vocabulary import IMAGENET_TEMPLATES, check_names, ensemble, prompts

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1  # bump when the embedding recipe changes: old cache files are then ignored


class TextEmbedder:
    """Prompt-ensembled CLIP text embeddings of class names, cached on disk.

    For each name: encode every template with `clip_model.encode_text`, then `cora.vocabulary.ensemble`
    (L2-normalise each embedding, average over templates, L2-normalise again; computed in float32).

    Args:
        clip_model: an open_clip CLIP (anything with `encode_text(tokens: Tensor[N, L]) -> Tensor[N, D]`).
        tokenizer: `cora.vocabulary.tokenizer(context_length)`: list[str] -> LongTensor[N, L].
        model_key: identifies the text weights, e.g. "RN50/openai" or a checkpoint hash; part of the cache key,
            so two different weights must never share a key.
        cache_dir: folder for the cache files (created on demand); None disables caching.
        templates: prompt templates, each with one "{}" for the name.
        batch_size: prompts per `encode_text` call.

    The cache file is `text_<sha256(model_key, templates, names)[:32]>.safetensors`, written atomically
    (temporary file + `os.replace`), so concurrent processes never read a half-written file.
    """

    def __init__(self, clip_model, tokenizer, model_key: str, cache_dir: str | None = None,
                 templates: Sequence[str] = IMAGENET_TEMPLATES, batch_size: int = 256):
        if not callable(getattr(clip_model, "encode_text", None)):
            raise TypeError(f"clip_model must have an encode_text method, got {type(clip_model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be callable (list[str] -> Tensor[N, L]), got {type(tokenizer).__name__}")
        if not isinstance(model_key, str) or not model_key:
            raise ValueError(f"model_key must be a non-empty str identifying the weights, got {model_key!r}")
        if isinstance(templates, str) or not templates:
            raise ValueError(f"templates must be a non-empty sequence of str, got {templates!r}")
        for i, template in enumerate(templates):
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(f"templates[{i}] must be a str with exactly one '{{}}', got {template!r}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.model_key = model_key
        self.cache_dir = os.path.expanduser(os.fspath(cache_dir)) if cache_dir is not None else None
        self.templates = tuple(templates)
        self.batch_size = batch_size

    def __call__(self, names: Sequence[str]) -> Tensor:
        """Class names (K) -> Tensor[K, D] float32, unit-norm rows, on the CLIP model's device."""
        names = check_names(names, "names")
        device = self._device()
        path = self.cache_path(names)
        if path is not None:
            cached = self._read_cache(path, names)
            if cached is not None:
                return cached.to(device)
        embeddings = self._encode(names)
        if path is not None:
            self._write_cache(path, names, embeddings)
        return embeddings

    def cache_path(self, names: Sequence[str]) -> str | None:
        """The cache file for these names (None when caching is off)."""
        if self.cache_dir is None:
            return None
        return os.path.join(self.cache_dir, f"text_{self._key(list(names))[:32]}.safetensors")

    def _key(self, names: list[str]) -> str:
        payload = json.dumps({"version": _CACHE_VERSION, "model_key": self.model_key,
                              "templates": list(self.templates), "names": names}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _device(self) -> torch.device:
        params = getattr(self.clip_model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        return first.device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def _encode(self, names: list[str]) -> Tensor:
        texts = prompts(names, self.templates)  # K*T, name-major
        was_training = getattr(self.clip_model, "training", False)
        if was_training:
            self.clip_model.eval()
        try:
            chunks = []
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self._device())
                chunks.append(self.clip_model.encode_text(tokens).float())
        finally:
            if was_training:
                self.clip_model.train()
        return ensemble(torch.cat(chunks), len(names))  # [K*T, D] -> [K, D]

    def _read_cache(self, path: str, names: list[str]) -> Tensor | None:
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                embeddings = f.get_tensor("embeddings")
        except Exception as e:  # unreadable / truncated by something other than us: recompute
            logger.warning("text embedding cache %s is unreadable (%s); recomputing", path, e)
            return None
        if (meta.get("model_key") != self.model_key or meta.get("names") != json.dumps(names, ensure_ascii=False)
                or meta.get("templates") != json.dumps(list(self.templates), ensure_ascii=False)
                or embeddings.shape[0] != len(names)):
            logger.warning("text embedding cache %s does not match its key; recomputing", path)
            return None
        return embeddings.float()

    def _write_cache(self, path: str, names: list[str], embeddings: Tensor) -> None:
        from safetensors.torch import save_file

        os.makedirs(self.cache_dir, exist_ok=True)
        metadata = {"model_key": self.model_key, "names": json.dumps(names, ensure_ascii=False),
                    "templates": json.dumps(list(self.templates), ensure_ascii=False),
                    "version": str(_CACHE_VERSION)}
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".text_", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
