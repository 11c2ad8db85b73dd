"""cora.export.triton: the model repository (`cora export --format triton`)."""

import json
import shutil

import numpy as np
import pytest

from cora.cli import main
from cora.errors import UserError
from cora.export.triton import DETECTOR_MODEL, TEXT_MODEL, Limits, write_repository
from cora.runtime.onnx import OnnxDetector, OnnxTextEncoder
from tests.export.exported import runtime_vocabulary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return runtime_vocabulary(tmp_path_factory)


def test_layout_configs_and_the_detector_finds_its_text_encoder(exported, tmp_path):
    repo = write_repository(tmp_path / "repo", exported.path, exported.text_encoder, limits=Limits(max_classes=7),
                            dynamic_batching=False, cache_names=5)
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == ["README.md", "cora/1/detector.onnx", "cora/1/detector.onnx.json", "cora/1/model.py",
                     "cora/config.pbtxt", "cora_text/1/model.py", "cora_text/1/text.onnx",
                     "cora_text/1/text.onnx.json", "cora_text/config.pbtxt"]
    config = (repo / DETECTOR_MODEL / "config.pbtxt").read_text()
    assert 'dims: [ -1, 64 ]' in config and 'string_value: "7"' in config and "dynamic_batching" not in config
    assert 'string_value: "5"' in (repo / TEXT_MODEL / "config.pbtxt").read_text()
    assert (repo / "cora/1/detector.onnx").read_bytes() == exported.path.read_bytes()
    # the copied detector names the repository's text encoder: names work without being told where it is
    detector = OnnxDetector(repo / "cora/1/detector.onnx")
    np.testing.assert_array_equal(detector.encode_vocabulary(["cat"]), OnnxTextEncoder(exported.text_encoder)(["cat"]))
    # written again: replaced whole, now with dynamic batching
    write_repository(repo, exported.path, exported.text_encoder)
    assert "dynamic_batching" in (repo / DETECTOR_MODEL / "config.pbtxt").read_text()
    assert not list(tmp_path.glob(".repo*"))  # no temporary folder left


def test_refuses_a_baked_vocabulary_and_a_foreign_folder(exported, tmp_path):
    baked = tmp_path / "baked.onnx"
    shutil.copyfile(exported.path, baked)
    meta = json.loads(exported.path.with_name(exported.path.name + ".json").read_text())
    (tmp_path / "baked.onnx.json").write_text(json.dumps({**meta, "vocabulary": ["cat"]}))
    with pytest.raises(UserError, match="baked vocabulary"):
        write_repository(tmp_path / "repo", baked, exported.text_encoder)
    assert not (tmp_path / "repo").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="is not a cora model repository"):
        write_repository(tmp_path / "mine", exported.path, exported.text_encoder)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cora_export_format_triton(tmp_path, capsys):
    assert main(["export", "--format", "triton", "--vocab", "cat", "--preset", "tiny", "--random-init",
                 "--out", str(tmp_path / "r")]) == 1
    assert "--vocab: not for --format triton" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["export", "--format", "triton", "--preset", "tiny", "--random-init", "--no-check",
                 "--max-detections", "9", "--out", str(tmp_path / "repo")]) == 0
    meta = json.loads((tmp_path / "repo/cora/1/detector.onnx.json").read_text())
    assert meta["postprocess"]["max_detections"] == 9 and meta["text_encoder"] == "../../cora_text/1/text.onnx"
    assert OnnxDetector(tmp_path / "repo/cora/1/detector.onnx").encode_vocabulary(["cat"]).shape == (1, 64)
