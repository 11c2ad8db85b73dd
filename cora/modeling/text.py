"""CLIP text embeddings of class names (prompt-ensembled, cached on disk). Names, templates, the tokenizer
and the ensembling rule come from cora.vocabulary; the cache is cora.text_cache.

    embed = TextEmbedder(clip, cora.vocabulary.tokenizer(), model_key="RN50/openai", cache=TextCache.default())
    text_embeddings = embed(names)                            # Tensor[K, D], unit rows
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

from cora.text_cache import TextCache, namespace
from cora.vocabulary import IMAGENET_TEMPLATES, check_names, ensemble, prompts


class TextEmbedder:
    """Prompt-ensembled CLIP text embeddings of class names, cached on disk name by name.

    For each name: encode every template with `clip_model.encode_text`, then `cora.vocabulary.ensemble`
    (L2-normalise each embedding, average over templates, L2-normalise again; computed in float32).

    Args:
        clip_model: an open_clip CLIP (anything with `encode_text(tokens: Tensor[N, L]) -> Tensor[N, D]`).
        tokenizer: `cora.vocabulary.tokenizer(context_length)`: list[str] -> LongTensor[N, L].
        model_key: names the text weights, e.g. "RN50/openai"; part of the cache key.
        cache: a `cora.text_cache.TextCache` (`TextCache.default()`: the user's cache folder), or None.
        templates: prompt templates, each with one "{}" for the name.
        batch_size: prompts per `encode_text` call.
        context_length: the tokenizer's context length (prompts cut at it); part of the cache key.

    Cache key of a name: (model_key, a hash of the text tower's weights, templates, context_length) and
    the name, so a vocabulary reuses every name it shares with an earlier one, and other weights (another
    seed of a random model, fine-tuned weights under the same path) never hit. The weights are hashed
    once, on the first call: the text tower must not change afterwards (CORA keeps CLIP frozen).
    Names not in the cache are encoded with a progress bar (on a terminal) and then stored.
    """

    def __init__(self, clip_model, tokenizer, model_key: str, cache: TextCache | None = None,
                 templates: Sequence[str] = IMAGENET_TEMPLATES, batch_size: int = 256, context_length: int = 77):
        if not callable(getattr(clip_model, "encode_text", None)):
            raise TypeError(f"clip_model must have an encode_text method, got {type(clip_model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be callable (list[str] -> Tensor[N, L]), got {type(tokenizer).__name__}")
        if not isinstance(model_key, str) or not model_key:
            raise ValueError(f"model_key must be a non-empty str identifying the weights, got {model_key!r}")
        if cache is not None and not isinstance(cache, TextCache):
            raise TypeError(f"cache must be a cora.text_cache.TextCache or None, got {type(cache).__name__}")
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
        self.cache = cache
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self.context_length = context_length
        self._namespace: str | None = None

    def __call__(self, names: Sequence[str]) -> Tensor:
        """Class names (K) -> Tensor[K, D] float32, unit-norm rows, on the CLIP model's device."""
        names = check_names(names, "names")
        device = self._device()
        if self.cache is None:
            return self._encode(names)
        embeddings = self.cache.lookup(self.cache_namespace(), names, lambda m: self._encode(m).cpu().numpy())
        return torch.from_numpy(embeddings).to(device)

    def cache_namespace(self) -> str:
        """The cache key of everything but the name (see the class docstring)."""
        if self._namespace is None:
            self._namespace = namespace(model=self.model_key, weights=self._weights_hash(),
                                        templates=list(self.templates), context_length=self.context_length)
        return self._namespace

    def _weights_hash(self) -> str | None:
        """blake2b of the text tower's tensors (every tensor of the CLIP model but the visual tower's)."""
        state_dict = getattr(self.clip_model, "state_dict", None)
        if not callable(state_dict):
            return None
        h = hashlib.blake2b(digest_size=16)
        for key, t in sorted(state_dict().items()):
            if key.startswith("visual.") or not isinstance(t, Tensor):
                continue
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _device(self) -> torch.device:
        params = getattr(self.clip_model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        return first.device if first is not None else torch.device("cpu")

    @torch.inference_mode()
    def _encode(self, names: list[str]) -> Tensor:
        from tqdm import tqdm

        texts = prompts(names, self.templates)  # K*T, name-major
        was_training = getattr(self.clip_model, "training", False)
        if was_training:
            self.clip_model.eval()
        try:
            chunks = []
            # disable=None: a bar on a terminal only (logs and tests stay clean)
            with tqdm(total=len(texts), desc=f"text embeddings ({len(names)} names)", unit="prompt",
                      disable=None, leave=False) as bar:
                for start in range(0, len(texts), self.batch_size):
                    tokens = self.tokenizer(texts[start:start + self.batch_size]).to(self._device())
                    chunks.append(encode_text(self.clip_model, tokens).float())
                    bar.update(len(tokens))
        finally:
            if was_training:
                self.clip_model.train()
        return ensemble(torch.cat(chunks), len(names))  # [K*T, D] -> [K, D]


def encode_text(clip_model, tokens: Tensor) -> Tensor:
    """`clip_model.encode_text(tokens)` (Tensor[N, 77] -> Tensor[N, D]), run on the first L positions only for
    an open_clip CLIP, L = the last end-of-text position + 1 (about 20 for class-name prompts: ~4x less work).

    The same result up to rounding: the text attention is causal (position p reads positions <= p only) and
    the embedding is read at the end-of-text token (argmax pooling: its id is the largest), so positions
    after it never reach the output. Any other model runs its own `encode_text`."""
    import open_clip

    if not (isinstance(clip_model, open_clip.CLIP) and clip_model.text_pool_type == "argmax"
            and isinstance(clip_model.attn_mask, Tensor)):
        return clip_model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast_dtype) + clip_model.positional_embedding[:length].to(cast_dtype)
    x = clip_model.transformer(x, attn_mask=clip_model.attn_mask[:length, :length])   # [N, L, width]
    x = clip_model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]             # [N, width]
    projection = clip_model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
