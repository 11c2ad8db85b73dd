import json
import logging
import os
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from cora.modeling.backbone import build_clip
from cora.modeling.text import IMAGENET_TEMPLATES, TextEmbedder, load_vocabulary

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
    return open_clip.get_tokenizer("RN50")


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


# ---- templates ----


def test_imagenet_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert all(isinstance(t, str) and t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert [t.format("cat") for t in IMAGENET_TEMPLATES] == [f("cat") for f in OPENAI_IMAGENET_TEMPLATES]


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


# ---- vocabularies ----


def test_vocabulary_from_list_and_string():
    assert load_vocabulary(["cat", " dog "]) == ["cat", "dog"]
    assert load_vocabulary(("cat",)) == ["cat"]
    assert load_vocabulary(" cat, dog ,traffic light,") == ["cat", "dog", "traffic light"]
    assert load_vocabulary("cat") == ["cat"]


def test_vocabulary_from_txt(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# my classes\ncat\n\n  traffic light  \n#dog\nhair drier\n", encoding="utf-8")
    assert load_vocabulary(str(path)) == ["cat", "traffic light", "hair drier"]
    assert load_vocabulary(path) == ["cat", "traffic light", "hair drier"]


def test_vocabulary_from_coco_json(tmp_path):
    path = tmp_path / "instances.json"
    categories = [{"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 10, "name": "traffic light", "supercategory": "outdoor"}]
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    assert load_vocabulary(str(path)) == ["person", "car", "traffic light"]
    bare = tmp_path / "categories.json"
    bare.write_text(json.dumps(categories))
    assert load_vocabulary(bare) == ["person", "car", "traffic light"]


def test_vocabulary_from_lvis_json(tmp_path):
    path = tmp_path / "lvis_v1_val.json"
    categories = [{"id": 2, "name": "aerosol_can", "synset": "aerosol.n.02", "frequency": "c"},
                  {"id": 1, "name": "bow_(weapon)", "synset": "bow.n.04", "frequency": "r"}]
    path.write_text(json.dumps({"categories": categories}))
    assert load_vocabulary(str(path)) == ["bow (weapon)", "aerosol can"]


def test_vocabulary_errors(tmp_path):
    for empty in ([], "", " , ,"):
        with pytest.raises(ValueError, match="source gives an empty vocabulary"):
            load_vocabulary(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="empty vocabulary"):
        load_vocabulary(str(blank))
    with pytest.raises(ValueError, match=r"duplicated class names: \['cat'\]"):
        load_vocabulary(["cat", "dog", " cat"])
    dup = tmp_path / "dup.txt"
    dup.write_text("dog\ncat\ndog\n")
    with pytest.raises(ValueError, match=r"duplicated class names: \['dog'\]"):
        load_vocabulary(str(dup))
    with pytest.raises(ValueError, match=r"source\[1\] is an empty class name"):
        load_vocabulary(["cat", "  "])
    with pytest.raises(TypeError, match=r"source\[0\] must be a str, got int"):
        load_vocabulary([1, 2])
    with pytest.raises(TypeError, match="source must be a list of names"):
        load_vocabulary(3)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_vocabulary(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="must be a COCO / LVIS json with a 'categories' list"):
        load_vocabulary(str(bad))
