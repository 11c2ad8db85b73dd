"""Vocabularies: class names from lists, strings and files, the LVIS naming rule, the prompt templates.

A leaf module (no model code): the detector (cora.modeling.text), the runtimes and relabel read names here.

    names = load_vocabulary("instances_val2017.json")        # or "cat, dog", ["cat", "dog"], names.txt
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

# The 80 prompt templates of OpenAI's ImageNet zero-shot evaluation, "{}" standing for the class name.
IMAGENET_TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)

# The tokenizer of every CLIP ResNet (OpenAI's BPE): the open_clip name it is fetched under.
TOKENIZER = "RN50"


def load_vocabulary(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names, in order, from one of:

    - a sequence of names, e.g. `["cat", "dog"]`;
    - a comma-separated string, e.g. `"cat, dog"`;
    - a `.txt` file: one name per line; blank lines and lines starting with `#` are skipped;
    - a `.json` file in COCO / LVIS format: `categories` sorted by `id`, their `name` field (a bare list of
      category dicts works too). LVIS names (categories with a `synset`) get underscores replaced by spaces
      ("traffic_light" -> "traffic light"), as CLIP prompts need.

    Names are stripped of surrounding whitespace. An empty vocabulary, an empty name or a duplicated name is
    a ValueError (the class index is the row of the text embeddings).
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.lower().endswith((".txt", ".json"))):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"source {path!r} looks like a vocabulary file but does not exist")
        names = _names_from_json(path) if path.lower().endswith(".json") else _names_from_txt(path)
    elif isinstance(source, str):
        names = [part.strip() for part in source.split(",")]
        names = [n for n in names if n] if source.strip() else []
    elif isinstance(source, Sequence):
        names = list(source)
    else:
        raise TypeError(f"source must be a list of names, a comma-separated string or a .txt / .json path, "
                        f"got {type(source).__name__}")
    return check_names(names, "source")


def check_names(names: Sequence[str], argument: str = "names") -> list[str]:
    """Validate a vocabulary: non-empty, non-empty str names, no duplicates. Returns the stripped names."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{argument} must be a sequence of class names, got {type(names).__name__}")
    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"{argument}[{i}] must be a str, got {type(name).__name__}")
        if not name.strip():
            raise ValueError(f"{argument}[{i}] is an empty class name")
        out.append(name.strip())
    if not out:
        raise ValueError(f"{argument} gives an empty vocabulary: at least one class name is needed")
    duplicates = sorted(name for name, count in Counter(out).items() if count > 1)
    if duplicates:
        raise ValueError(f"{argument} has duplicated class names: {duplicates}")
    return out


def _names_from_txt(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def _names_from_json(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    categories = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "name" in c and "id" in c
                                                   for c in categories):
        raise ValueError(f"source {path!r} must be a COCO / LVIS json with a 'categories' list of "
                         "{'id': ..., 'name': ...} entries")
    categories = sorted(categories, key=lambda c: c["id"])
    return [c["name"].replace("_", " ") if "synset" in c else c["name"] for c in categories]


def tokenizer(context_length: int = 77):
    """CLIP's tokenizer (open_clip, OpenAI's BPE) truncating prompts at `context_length` tokens: list[str] ->
    LongTensor[N, 77].

    The official CORA evaluation encodes prompts with 15 tokens (`--text_len 15`). CLIP's text tower always
    takes 77 positions, but its attention is causal and it reads the end-of-text token's output, so prompts
    cut at `context_length` (end token kept) and zero-padded to 77 give the truncated model's embedding."""
    import open_clip
    import torch.nn.functional as F

    base = open_clip.get_tokenizer(TOKENIZER)
    if not isinstance(context_length, int) or not 2 <= context_length <= 77:
        raise ValueError(f"text context length must be an int in [2, 77], got {context_length!r}")
    if context_length == 77:
        return base
    return lambda texts: F.pad(base(texts, context_length=context_length), (0, 77 - context_length))
