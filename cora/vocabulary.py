"""Vocabularies: class names from lists, strings and files, the LVIS naming rule, the prompt templates, the
tokenizer, and prompt ensembling.

A leaf module (no model code): the detector (cora.modeling.text), evaluation, relabel, the data sets and the
runtimes of exported models all read names and build prompts here, so they agree.

    names = load_vocabulary("instances_val2017.json")        # or "cat, dog", ["cat", "dog"], names.txt
    texts = prompts(names)                                   # K * T strings, name-major
    per_name = ensemble(encode(texts), len(names))           # [K*T, D] -> [K, D] unit rows (torch or numpy)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

# The 80 prompt templates of OpenAI's ImageNet zero-shot evaluation (open_clip's OPENAI_IMAGENET_TEMPLATES, in
# its order), "{}" standing for the class name. Written out so that reading names does not import open_clip.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

# The tokenizer of every CLIP ResNet (OpenAI's BPE): the open_clip name it is fetched under.
TOKENIZER = "RN50"


VOCABULARY_FILES = (".txt", ".json")  # the suffixes a vocabulary file may have


def load_vocabulary(source: str | os.PathLike | Sequence[str]) -> list[str]:
    """Class names, in order, from one of:

    - a sequence of names, e.g. `["cat", "dog"]`;
    - a comma-separated string, e.g. `"cat, dog"`;
    - a file (an os.PathLike, or a string ending in .txt / .json): see `read_vocabulary_file`.

    Names are stripped of surrounding whitespace. An empty vocabulary, an empty name or a duplicated name is
    a ValueError (the class index is the row of the text embeddings).
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and source.lower().endswith(VOCABULARY_FILES)):
        return read_vocabulary_file(source)
    if isinstance(source, str):
        names = [part.strip() for part in source.split(",")]
        names = [n for n in names if n] if source.strip() else []
    elif isinstance(source, Sequence):
        names = list(source)
    else:
        raise TypeError(f"source must be a list of names, a comma-separated string or a .txt / .json path, "
                        f"got {type(source).__name__}")
    return check_names(names, "source")


def read_vocabulary_file(path: str | os.PathLike) -> list[str]:
    """Class names from a file, never from its name (`--vocab-file`):

    - `.txt`: one name per line; blank lines and lines starting with `#` are skipped;
    - `.json` in COCO / LVIS format: `categories` sorted by `id`, their `name` field (a bare list of
      category dicts works too). LVIS names (categories with a `synset`) get underscores replaced by spaces
      ("traffic_light" -> "traffic light"), as CLIP prompts need.

    Any other suffix, a folder, a missing or unreadable file is a ValueError (FileNotFoundError when
    missing) naming the file; names are checked as in `load_vocabulary`.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    expected = "a .txt file (one class name per line) or a COCO / LVIS .json file"
    if os.path.isdir(path):
        raise ValueError(f"vocabulary file {path} is a directory; expected {expected}")
    if suffix not in VOCABULARY_FILES:
        raise ValueError(f"vocabulary file {path}: expected {expected}, got {repr(suffix) if suffix else 'no suffix'}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    try:
        names = _names_from_json(path) if suffix == ".json" else _names_from_txt(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        kind = "JSON" if suffix == ".json" else "UTF-8 text"
        raise ValueError(f"vocabulary file {path} is not {kind} ({e})") from None
    return check_names(names, f"vocabulary file {path}")


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
    if not isinstance(categories, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                   and _is_number(c.get("id")) for c in categories):
        raise ValueError(f"vocabulary file {path} must be a COCO / LVIS json with a 'categories' list of "
                         "{'id': <number>, 'name': <string>} entries")
    return [category_name(c) for c in sorted(categories, key=lambda c: c["id"])]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def category_name(category: dict) -> str:
    """The prompt-ready name of a COCO / LVIS category dict: LVIS names (categories with a `synset`) get
    underscores replaced by spaces ("traffic_light" -> "traffic light"), as CLIP prompts need; COCO names
    are kept as they are."""
    name = category["name"]
    return name.replace("_", " ") if "synset" in category else name


def prompts(names: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """The K * T prompts of K names in T templates (each with one "{}"), name-major: prompt k * T + t is
    name k in template t, the row order `ensemble` expects."""
    return [template.format(name) for name in names for template in templates]


def ensemble(per_prompt, k: int):
    """Prompt ensembling (OpenAI's zero-shot recipe): Tensor or ndarray [K*T, D] embeddings of `prompts(names)`
    (name-major) -> [K, D]: each row L2-normalised, averaged over a name's T templates, normalised again.

    Works on torch tensors and numpy arrays alike (the result has the input's type, dtype and device); a zero
    row stays zero (norms are clamped at 1e-12, as torch.nn.functional.normalize does)."""
    if not isinstance(k, int) or k < 1 or per_prompt.ndim != 2 or per_prompt.shape[0] % k:
        raise ValueError(f"per_prompt must be [K*T, D] with K = {k!r} names, got shape {list(per_prompt.shape)}")
    t, d = per_prompt.shape[0] // k, per_prompt.shape[1]
    per_name = _unit(per_prompt).reshape(k, t, d).mean(1)  # [K*T, D] -> [K, T, D] -> [K, D]
    return _unit(per_name)


def _unit(x):
    """Rows of x divided by their L2 norm (at least 1e-12)."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    import torch.nn.functional as F

    return F.normalize(x, dim=-1)


def tokenizer(context_length: int = 77):
    """CLIP's tokenizer (open_clip's TOKENIZER, OpenAI's BPE) truncating prompts at `context_length` tokens:
    list[str] -> LongTensor[N, 77].

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
