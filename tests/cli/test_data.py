"""`cora data make-synthetic` and `cora data make-ovd-json`, through cora.cli.data's parser and run function."""

import argparse
import json
import os

import pytest

from cora.cli.data import add_parser
from cora.data.splits import COCO_BASE_CLASSES
from cora.errors import UserError
from tests.data.test_splits import OFFICIAL_NOVEL_IDS, small_instances


def run(argv):
    parser = argparse.ArgumentParser(prog="cora")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


def test_make_synthetic(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert run(["data", "make-synthetic", str(out), "--images", "6", "--seed", "1", "--size", "64", "96"]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    train = json.loads((out / "instances_train.json").read_text())
    assert len(train["images"]) + len(json.loads((out / "instances_val.json").read_text())["images"]) == 6
    assert (train["images"][0]["height"], train["images"][0]["width"]) == (64, 96)
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert run(["data", "make-synthetic", str(out), "--images", "6", "--seed", "1", "--size", "64", "96"]) == 0
    assert first == {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_make_synthetic_bad_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # the flag's type refuses it (a usage error)
        run(["data", "make-synthetic", str(tmp_path), "--images", "2", "--size", "8", "8"])
    assert e.value.code == 2 and "argument --size: expected an integer >= 32, got '8'" in capsys.readouterr().err
    from cora.data.synthetic import write_synthetic

    with pytest.raises(ValueError, match="at least 32 x 32"):  # the library's own check, for API callers
        write_synthetic(tmp_path, num_images=2, size=(8, 8))


@pytest.fixture
def instances(tmp_path):
    path = tmp_path / "instances_train2017.json"
    path.write_text(json.dumps(small_instances()))
    return path


def test_make_ovd_json_train(instances, tmp_path, capsys):
    out = tmp_path / "out" / "train_base.json"
    assert run(["data", "make-ovd-json", "--instances", str(instances), "--split", "train", "--out", str(out)]) == 0
    assert "48 categories, 1 images, 2 annotations" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == [
        c["name"] for c in small_instances()["categories"] if c["name"] in COCO_BASE_CLASSES]
    assert [img["id"] for img in data["images"]] == [2]
    assert {a["category_id"] for a in data["annotations"]} == {1, 3}
    assert os.listdir(out.parent) == ["train_base.json"]  # no temporary file left behind


def test_make_ovd_json_val(instances, tmp_path):
    out = tmp_path / "val.json"
    assert run(["data", "make-ovd-json", "--instances", str(instances), "--split", "val", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["categories"]) == 65 and len(data["images"]) == 4
    assert {a["category_id"] for a in data["annotations"]} == {1, 3, 17, 18}
    assert set(OFFICIAL_NOVEL_IDS) <= {c["id"] for c in data["categories"]}


def test_make_ovd_json_with_a_split_file(tmp_path):
    shapes, out = tmp_path / "s", tmp_path / "base.json"
    run(["data", "make-synthetic", str(shapes), "--images", "4"])
    assert run(["data", "make-ovd-json", "--instances", str(shapes / "instances_train.json"), "--split", "train",
                "--out", str(out), "--classes", str(shapes / "split.json")]) == 0
    names = [c["name"] for c in json.loads(out.read_text())["categories"]]
    assert names == ["circle", "square", "triangle", "star", "cross"]


def test_make_ovd_json_errors(instances, tmp_path):
    base = ["data", "make-ovd-json", "--split", "train", "--out", str(tmp_path / "o.json")]
    with pytest.raises(UserError, match="No such file"):
        run([*base, "--instances", str(tmp_path / "missing.json")])
    data = small_instances()
    next(c for c in data["categories"] if c["name"] == "tv")["name"] = "tvmonitor"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(data))
    with pytest.raises(UserError, match="'tv' \\(did you mean 'tvmonitor'\\?\\)"):
        run([*base, "--instances", str(renamed)])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UserError, match="broken.json"):
        run([*base, "--instances", str(broken)])
    with pytest.raises(UserError, match="has no 'categories'"):
        broken.write_text("{}")
        run([*base, "--instances", str(broken)])
    with pytest.raises(UserError, match="would overwrite"):
        run(["data", "make-ovd-json", "--split", "val", "--instances", str(instances), "--out", str(instances)])
    with pytest.raises(SystemExit):
        run([*base, "--instances", str(instances), "--split", "test"])
    assert not (tmp_path / "o.json").exists()
