"""cora.vocabulary: names from lists, strings and files, the LVIS naming rule, templates, prompts, ensembling."""

import json

import numpy as np
import pytest
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from cora.vocabulary import IMAGENET_TEMPLATES, category_name, ensemble, load_vocabulary, prompts


# ---- templates ----


def test_imagenet_templates():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert all(isinstance(t, str) and t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert [t.format("cat") for t in IMAGENET_TEMPLATES] == [f("cat") for f in OPENAI_IMAGENET_TEMPLATES]


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


# ---- LVIS naming, prompts, ensembling ----


def test_a_vocabulary_file_is_always_read_as_a_file(tmp_path):
    """A Path (--vocab-file) is read as a file whatever its name: .txt / .json only, never a comma list."""
    from pathlib import Path

    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert load_vocabulary(Path(tmp_path / "names.txt")) == ["cat", "dog"]  # positive control
    for name, message in (("names.csv", r"expected a \.txt file .* got '\.csv'"), ("names", "got no suffix"),
                          ("folder", "is a directory")):
        path = tmp_path / name
        path.mkdir() if name == "folder" else path.write_text("cat,dog\n")
        with pytest.raises(ValueError, match=message):
            load_vocabulary(path)
    assert load_vocabulary(str(tmp_path / "names.csv")) == [str(tmp_path / "names.csv")]  # a str: --vocab's names
    (tmp_path / "bad.json").write_text(json.dumps({"categories": [{"id": 1, "name": ["cat"]}]}))
    with pytest.raises(ValueError, match="'name': <string>"):
        load_vocabulary(tmp_path / "bad.json")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        load_vocabulary(tmp_path / "latin1.txt")


def test_category_name():
    assert category_name({"id": 1, "name": "traffic_light", "synset": "traffic_light.n.01"}) == "traffic light"
    assert category_name({"id": 1, "name": "hair_drier"}) == "hair_drier"  # COCO names are kept as they are


def test_prompts_are_name_major():
    assert prompts(["cat", "dog"], ("a {}.", "{}!")) == ["a cat.", "cat!", "a dog.", "dog!"]
    assert len(prompts(["cat"])) == len(IMAGENET_TEMPLATES)


def reference_ensemble(per_prompt, k):
    """One name at a time, in float64: normalise, mean, normalise."""
    rows = []
    for block in np.split(np.asarray(per_prompt, dtype=np.float64), k):
        unit = block / np.linalg.norm(block, axis=1, keepdims=True)
        rows.append(unit.mean(0) / np.linalg.norm(unit.mean(0)))
    return np.stack(rows)


def test_ensemble_torch_and_numpy_agree_with_reference():
    per_prompt = torch.randn(3 * 4, 8, generator=torch.Generator().manual_seed(0))  # K=3 names, T=4 templates
    want = reference_ensemble(per_prompt.numpy(), 3)
    out_torch = ensemble(per_prompt, 3)
    out_numpy = ensemble(per_prompt.numpy(), 3)
    assert isinstance(out_torch, torch.Tensor) and out_torch.shape == (3, 8) and out_torch.dtype == torch.float32
    assert isinstance(out_numpy, np.ndarray) and out_numpy.shape == (3, 8) and out_numpy.dtype == np.float32
    np.testing.assert_allclose(out_torch.numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_numpy, want, rtol=1e-5, atol=1e-6)


def test_ensemble_errors():
    with pytest.raises(ValueError, match=r"per_prompt must be \[K\*T, D\] with K = 2 names, got shape \[5, 8\]"):
        ensemble(np.zeros((5, 8)), 2)
    with pytest.raises(ValueError, match="K = 0"):
        ensemble(np.zeros((4, 8)), 0)
