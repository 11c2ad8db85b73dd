"""`cora detect` end to end on generated images (tiny preset, random weights), through cora.cli.main."""

import json

import numpy as np
import pytest
from PIL import Image

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


def test_vocab_file(images, tmp_path):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("cat\n# a comment\n\ntraffic light\n")
    assert main(["detect", images[0], "--vocab-file", str(vocab), "--preset", "tiny", "--random-init",
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0


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
