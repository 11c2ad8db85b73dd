"""cora.modeling.text.TextEmbedder: prompt-ensembled CLIP text embeddings and their disk cache."""

import logging
import os
from pathlib import Path

import pytest
import torch

from cora.modeling.backbone import build_clip
from cora.modeling.text import TextEmbedder
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


def fail(*args, **kwargs):
    raise AssertionError("encode_text called: the cache was missed")


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


def test_training_mode_restored(clip, tokenizer):
    clip.train()
    try:
        TextEmbedder(clip, tokenizer, "tiny/random", templates=SHORT_TEMPLATES)(["cat"])
        assert clip.training
    finally:
        clip.eval()


def test_cache_hit_and_keys(clip, tokenizer, tmp_path, monkeypatch):
    names = ["cat", "dog"]
    embed = TextEmbedder(clip, tokenizer, "tiny/random", cache_dir=str(tmp_path / "cache"), templates=SHORT_TEMPLATES)
    first = embed(names)
    path = embed.cache_path(names)
    assert os.path.isfile(path) and os.listdir(tmp_path / "cache") == [os.path.basename(path)]  # no temp file left

    monkeypatch.setattr(clip, "encode_text", fail)
    torch.testing.assert_close(embed(names), first, rtol=0, atol=0)
    again = TextEmbedder(clip, tokenizer, "tiny/random", cache_dir=str(tmp_path / "cache"), templates=SHORT_TEMPLATES)
    torch.testing.assert_close(again(names), first, rtol=0, atol=0)  # a fresh instance (another process) hits too

    misses = [
        (embed, ["dog", "cat"]),  # order is the class index
        (embed, ["cat", "dog", "cow"]),
        (TextEmbedder(clip, tokenizer, "tiny/other", cache_dir=str(tmp_path / "cache"), templates=SHORT_TEMPLATES),
         names),
        (TextEmbedder(clip, tokenizer, "tiny/random", cache_dir=str(tmp_path / "cache"),
                      templates=SHORT_TEMPLATES[:2]), names),
    ]
    for embedder, vocab in misses:
        assert embedder.cache_path(vocab) != path
        with pytest.raises(AssertionError, match="cache was missed"):
            embedder(vocab)


def test_cache_recomputes_corrupt_file(clip, tokenizer, tmp_path):
    embed = TextEmbedder(clip, tokenizer, "tiny/random", cache_dir=str(tmp_path), templates=SHORT_TEMPLATES)
    want = embed(["cat"])
    Path(embed.cache_path(["cat"])).write_bytes(b"truncated")
    torch.testing.assert_close(embed(["cat"]), want, rtol=0, atol=0)
    torch.testing.assert_close(embed(["cat"]), want, rtol=0, atol=0)  # rewritten, readable again


def test_no_cache_dir_writes_nothing(clip, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    embed = TextEmbedder(clip, tokenizer, "tiny/random", templates=SHORT_TEMPLATES)
    embed(["cat"])
    assert embed.cache_path(["cat"]) is None and os.listdir(tmp_path) == []


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
    embed = TextEmbedder(clip, tokenizer, "k", templates=SHORT_TEMPLATES)
    with pytest.raises(ValueError, match="names gives an empty vocabulary"):
        embed([])
    with pytest.raises(ValueError, match=r"names has duplicated class names: \['cat'\]"):
        embed(["cat", "dog", "cat"])
    with pytest.raises(TypeError, match="names must be a sequence of class names, got str"):
        embed("cat")
