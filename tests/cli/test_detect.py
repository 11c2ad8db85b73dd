"""`cora detect` end to end on generated images (tiny preset, random weights), through cora.cli.main."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cora.checkpoint import load_model
from cora.cli import main


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = {
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)),
        "gray.png": Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (70, 70, 4), dtype=np.uint8), mode="RGBA"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (60, 90), dtype=np.uint16)),
    }
    for name, img in paths.items():
        img.save(tmp_path / name)
    return [str(tmp_path / name) for name in paths]


def test_detect_writes_png_and_json_per_image(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["detect", *images, "--vocab", "cat,dog", "--preset", "tiny", "--random-init", "--out", str(out),
                 "--score-threshold", "0", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for path in images:
        stem = path.rsplit("/", 1)[1].rsplit(".", 1)[0]
        result = json.loads((out / f"{stem}.json").read_text())
        assert result["image"] == path and result["detections"]
        assert {d["name"] for d in result["detections"]} <= {"cat", "dog"}
        with Image.open(out / f"{stem}.png") as png:
            assert png.mode == "RGB" and png.size == Image.open(path).size


def results(out) -> dict[str, list[dict]]:
    """image path -> its detections, from every JSON `cora detect` wrote into `out`."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return {r["image"]: r["detections"] for r in rows}


def test_json_equals_model_detect(images, tmp_path, capsys):
    """The JSON holds model.detect's detections on the same pixels (PIL's RGB conversion here), in original
    pixels, named by the vocabulary, exactly those above --score-threshold."""
    names = ["cat", "dog", "traffic light"]
    model = load_model(preset="tiny", random_init=True, seed=1)
    paths = images[:3]  # RGB, gray, RGBA (alpha dropped)
    refs = []
    for path in paths:
        with Image.open(path) as img:
            pixels = torch.from_numpy(np.asarray(img.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
        refs.append(model.detect([pixels], vocabulary=names)[0])
    threshold = float(refs[0]["scores"].median())  # a threshold that drops about half of them
    assert main(["detect", *paths, "--vocab", ",".join(names), "--preset", "tiny", "--random-init", "--seed", "1",
                 "--out", str(tmp_path / "o"), "--score-threshold", str(threshold), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    got = results(tmp_path / "o")
    for path, ref in zip(paths, refs):
        keep = ref["scores"] > threshold
        dets = got[path]
        assert len(dets) == int(keep.sum()) and (path != paths[0] or 0 < len(dets) < len(ref["scores"]))
        assert [d["label"] for d in dets] == ref["labels"][keep].tolist()
        assert [d["name"] for d in dets] == [names[i] for i in ref["labels"][keep].tolist()]
        torch.testing.assert_close(torch.tensor([d["score"] for d in dets]), ref["scores"][keep], rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor([d["box"] for d in dets]).reshape(-1, 4), ref["boxes"][keep],
                                   rtol=0, atol=0.01)  # the JSON rounds to 2 decimals
    other = load_model(preset="tiny", random_init=True, seed=2)  # negative control: another model differs
    assert other.detect([pixels], vocabulary=names)[0]["scores"].tolist() != refs[-1]["scores"].tolist()


def test_vocab_file_names_the_classes(images, tmp_path):
    """A .txt vocabulary (comments and blank lines skipped) gives the detections of the same names on the
    command line; the JSON names come from the file."""
    vocab = tmp_path / "classes.txt"
    vocab.write_text("cat\n# a comment\n\ntraffic light\n")
    common = [images[0], "--preset", "tiny", "--random-init", "--score-threshold", "0", "--device", "cpu"]
    assert main(["detect", *common, "--vocab-file", str(vocab), "--out", str(tmp_path / "file")]) == 0
    assert main(["detect", *common, "--vocab", "cat,traffic light", "--out", str(tmp_path / "flag")]) == 0
    from_file, from_flag = results(tmp_path / "file")[images[0]], results(tmp_path / "flag")[images[0]]
    assert from_file == from_flag and {d["name"] for d in from_file} == {"cat", "traffic light"}
    assert main(["detect", *common, "--vocab", "cat,# a comment,traffic light", "--out", str(tmp_path / "three")]) == 0
    assert results(tmp_path / "three")[images[0]] != from_file  # negative control: a third class changes them


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--vocab", "cat"], "no CORA weights"),
        (["--vocab", "cat", "--random-init", "--preset", "tiny"], "cannot read image"),
        (["--vocab", " , ", "--random-init", "--preset", "tiny"], "vocabulary"),
        (["--vocab", "cat", "--random-init", "--preset", "rn5O_coco"], "did you mean 'rn50_coco'"),
    ],
)
def test_errors_are_one_line_and_exit_1(images, tmp_path, capsys, extra, message):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    image = str(bad) if message == "cannot read image" else images[0]
    assert main(["detect", image, *extra, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_image(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.jpg"), "--vocab", "cat", "--random-init", "--preset", "tiny"]) == 1
    assert "image not found" in capsys.readouterr().err
