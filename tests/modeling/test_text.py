"""cora.modeling.text.TextEmbedder: prompt-ensembled CLIP text embeddings and their disk cache."""

import logging
import os

import numpy as np
import pytest
import torch

from cora.errors import UserError
from cora.modeling.backbone import build_clip
from cora.modeling.text import TextEmbedder, encode_text
from cora.text_cache import TextCache
from cora.vocabulary import IMAGENET_TEMPLATES, tokenizer as cora_tokenizer

SHORT_TEMPLATES = ("a photo of a {}.", "a drawing of the {}.", "{}")


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    logging.getLogger("cora.modeling.backbone").disabled = True  # the random-init warning is tested elsewhere
    try:
        return build_clip("tiny")
    finally:
        logging.getLogger("cora.modeling.backbone").disabled = False


@pytest.fixture(scope="module")
def tokenizer():
    return cora_tokenizer()


def reference(clip, tokenizer, names, templates):
    """OpenAI's zero-shot recipe, one name at a time."""
    rows = []
    with torch.no_grad():
        for name in names:
            e = clip.encode_text(tokenizer([t.format(name) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            mean = e.mean(dim=0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


# ---- embeddings ----


@pytest.mark.parametrize("batch_size", [1, 4, 256])
def test_embeddings_equal_loop(clip, tokenizer, batch_size):
    names = ["cat", "traffic light", "hair drier"]
    embed = TextEmbedder(clip, tokenizer, "tiny/random", templates=SHORT_TEMPLATES, batch_size=batch_size)
    out = embed(names)
    assert out.shape == (3, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out, reference(clip, tokenizer, names, SHORT_TEMPLATES), rtol=1e-5, atol=1e-6)


def test_embeddings_equal_loop_80_templates(clip, tokenizer):
    names = ["person", "bicycle"]
    out = TextEmbedder(clip, tokenizer, "tiny/random")(names)
    torch.testing.assert_close(out, reference(clip, tokenizer, names, IMAGENET_TEMPLATES), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context_length", [77, 15])
def test_encode_text_on_the_first_positions_equals_open_clip(clip, context_length):
    """encode_text runs up to the last end-of-text token only: the same embeddings as open_clip's 77 positions,
    for short batches, batches with a prompt cut at the context length, and mixed lengths."""
    tok = cora_tokenizer(context_length)
    batches = [["a photo of a cat.", "dog"], ["a photo of a cat.", "a long name " * 40], ["x"]]
    with torch.no_grad():
        for texts in batches:
            tokens = tok(texts)
            torch.testing.assert_close(encode_text(clip, tokens), clip.encode_text(tokens), rtol=1e-5, atol=1e-6)
        # negative control: one position fewer drops the end-of-text token of the longest prompt
        tokens = tok(["a photo of a cat.", "dog"])
        short = tokens.clone()
        last = int(tokens.argmax(-1).max())
        short[:, last:] = 0
        assert not torch.allclose(encode_text(clip, short)[0], clip.encode_text(tokens)[0], atol=1e-3)


def test_training_mode_restored(clip, tokenizer):
    clip.train()
    try:
        TextEmbedder(clip, tokenizer, "tiny/random", templates=SHORT_TEMPLATES)(["cat"])
        assert clip.training
    finally:
        clip.eval()


class Counting:
    """The CLIP model with a count of the prompts it encodes."""

    def __init__(self, clip):
        self.clip, self.prompts = clip, 0

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def encode_text(self, tokens):
        self.prompts += len(tokens)
        return self.clip.encode_text(tokens)


def embedder(clip, tokenizer, cache, key="tiny/random", **kwargs):
    return TextEmbedder(clip, tokenizer, key, cache=cache, templates=kwargs.pop("templates", SHORT_TEMPLATES),
                        **kwargs)


def test_cache_hits_name_by_name(clip, tokenizer, tmp_path):
    cache = TextCache(str(tmp_path / "cache" / "text.sqlite3"))
    counting = Counting(clip)
    first = embedder(counting, tokenizer, cache)(["cat", "dog"])
    assert counting.prompts == 2 * len(SHORT_TEMPLATES)
    torch.testing.assert_close(first, reference(clip, tokenizer, ["cat", "dog"], SHORT_TEMPLATES), rtol=1e-5, atol=1e-6)

    # a fresh embedder (another process) with the same weights: "dog" and "cat" are hits, only "cow" is encoded
    again = embedder(counting, tokenizer, cache)(["dog", "cow", "cat"])
    assert counting.prompts == 3 * len(SHORT_TEMPLATES)
    torch.testing.assert_close(again[[2, 0]], first, rtol=0, atol=0)  # rows follow the given order
    torch.testing.assert_close(again[1], reference(clip, tokenizer, ["cow"], SHORT_TEMPLATES)[0], rtol=1e-5, atol=1e-6)


def test_cache_key_holds_weights_templates_context_length_and_model_key(clip, tokenizer, tmp_path):
    cache = TextCache(str(tmp_path / "text.sqlite3"))
    counting = Counting(clip)
    embedder(counting, tokenizer, cache)(["cat"])
    torch.manual_seed(1)
    other_weights = build_clip("tiny")  # the same architecture and model_key, other random weights
    misses = [
        embedder(other_weights, tokenizer, cache),
        embedder(counting, tokenizer, cache, templates=SHORT_TEMPLATES[:2]),
        embedder(counting, cora_tokenizer(15), cache, context_length=15),
        embedder(counting, tokenizer, cache, key="tiny/other"),
    ]
    namespaces = {e.cache_namespace() for e in misses} | {embedder(counting, tokenizer, cache).cache_namespace()}
    assert len(namespaces) == 5
    for e in misses[1:]:
        before = counting.prompts
        e(["cat"])
        assert counting.prompts > before  # a miss: encoded again
    before = counting.prompts
    embedder(counting, tokenizer, cache)(["cat"])
    assert counting.prompts == before  # negative control: the original key still hits


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    cache = TextCache(str(tmp_path / "text.sqlite3"), max_bytes=10 * 64 * 4)  # ten 64-d embeddings
    vectors = {f"n{i}": np.full(64, i, dtype=np.float32) for i in range(10)}
    cache.put("ns", vectors)
    assert cache.total_bytes() == 10 * 64 * 4
    assert set(cache.get("ns", ["n0", "n1"])) == {"n0", "n1"}  # used: now the most recent
    cache.put("ns", {"new": np.zeros(64, dtype=np.float32)})  # over the bound: down to 90% = 9 entries
    assert cache.total_bytes() <= 9 * 64 * 4
    left = cache.get("ns", list(vectors) + ["new"])
    assert {"n0", "n1", "new"} <= set(left) and "n2" not in left and "n3" not in left
    np.testing.assert_array_equal(left["n5"], vectors["n5"])
    assert cache.get("other namespace", ["n5"]) == {}


def test_corrupt_cache_file_is_set_aside_with_a_warning(clip, tokenizer, tmp_path, caplog):
    path = tmp_path / "text.sqlite3"
    path.write_bytes(b"not a database, truncated")
    want = reference(clip, tokenizer, ["cat"], SHORT_TEMPLATES)
    counting = Counting(clip)
    with caplog.at_level(logging.WARNING, logger="cora.text_cache"):
        got = embedder(counting, tokenizer, TextCache(str(path)))(["cat"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert "text embedding cache" in caplog.text and "not a database" in caplog.text
    assert (tmp_path / "text.sqlite3.corrupt").read_bytes() == b"not a database, truncated"
    before = counting.prompts
    torch.testing.assert_close(embedder(counting, tokenizer, TextCache(str(path)))(["cat"]), got, rtol=0, atol=0)
    assert counting.prompts == before  # the new cache file works: a hit


def test_unwritable_cache_computes_with_one_warning(clip, tokenizer, tmp_path, caplog):
    (tmp_path / "file").write_text("")
    cache = TextCache(str(tmp_path / "file" / "text.sqlite3"))  # its folder is a file: nothing can be written
    with caplog.at_level(logging.WARNING, logger="cora.text_cache"):
        e = embedder(clip, tokenizer, cache)
        got = [e(["cat"]), e(["cat"])]
    want = reference(clip, tokenizer, ["cat"], SHORT_TEMPLATES)
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-6)
    assert caplog.text.count("not used") == 1


def test_default_cache_location_and_switch(monkeypatch, tmp_path):
    monkeypatch.delenv("CORA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CORA_TEXT_CACHE_MB", raising=False)
    cache = TextCache.default()
    assert cache.path == str(tmp_path / "xdg" / "cora" / "text_embeddings.sqlite3")
    assert cache.max_bytes == 256 << 20
    monkeypatch.setenv("CORA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("CORA_TEXT_CACHE_MB", "1.5")
    cache = TextCache.default()
    assert cache.path == str(tmp_path / "mine" / "text_embeddings.sqlite3") and cache.max_bytes == 3 << 19
    monkeypatch.setenv("CORA_TEXT_CACHE_MB", "0")
    assert TextCache.default() is None
    for bad in ("-1", "nan", "lots"):
        monkeypatch.setenv("CORA_TEXT_CACHE_MB", bad)
        with pytest.raises(UserError, match=f"CORA_TEXT_CACHE_MB must be a number of megabytes >= 0 .*got '{bad}'"):
            TextCache.default()


def test_no_cache_writes_nothing(clip, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORA_CACHE_DIR", str(tmp_path))
    embedder(clip, tokenizer, None)(["cat"])
    assert os.listdir(tmp_path) == []


def test_embedder_argument_errors(clip, tokenizer):
    with pytest.raises(ValueError, match="model_key must be a non-empty str"):
        TextEmbedder(clip, tokenizer, "")
    with pytest.raises(ValueError, match=r"templates\[1\] must be a str with exactly one '\{\}'"):
        TextEmbedder(clip, tokenizer, "k", templates=("a {}", "no slot"))
    with pytest.raises(ValueError, match="templates must be a non-empty sequence"):
        TextEmbedder(clip, tokenizer, "k", templates=())
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        TextEmbedder(clip, tokenizer, "k", batch_size=0)
    with pytest.raises(TypeError, match="clip_model must have an encode_text"):
        TextEmbedder(object(), tokenizer, "k")
    with pytest.raises(TypeError, match="cache must be a cora.text_cache.TextCache or None, got str"):
        TextEmbedder(clip, tokenizer, "k", cache="~/.cache")
    embed = TextEmbedder(clip, tokenizer, "k", templates=SHORT_TEMPLATES)
    with pytest.raises(ValueError, match="names gives an empty vocabulary"):
        embed([])
    with pytest.raises(ValueError, match=r"names has duplicated class names: \['cat'\]"):
        embed(["cat", "dog", "cat"])
    with pytest.raises(TypeError, match="names must be a sequence of class names, got str"):
        embed("cat")


def test_cache_lookup_encodes_each_missing_name_once(tmp_path):
    """TextCache.lookup (used by TextEmbedder and OnnxTextEncoder): repeats are encoded once, cached names never
    again, and rows come back in the request's order."""
    import numpy as np

    from cora.text_cache import TextCache

    calls = []

    def encode(names):
        calls.append(list(names))
        return np.array([[len(n), ord(n[0])] for n in names], dtype=np.float32)

    cache = TextCache(str(tmp_path / "c.sqlite3"))
    got = cache.lookup("ns", ["ab", "c", "ab"], encode)
    np.testing.assert_array_equal(got, [[2, 97], [1, 99], [2, 97]])
    assert calls == [["ab", "c"]]
    np.testing.assert_array_equal(cache.lookup("ns", ["c", "ddd"], encode), [[1, 99], [3, 100]])
    assert calls == [["ab", "c"], ["ddd"]]
    cache.lookup("other", ["c"], encode)  # another namespace (other weights) encodes again
    assert calls[-1] == ["c"]
