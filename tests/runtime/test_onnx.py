"""cora.runtime.onnx: OnnxDetector (CORA.detect's API over ONNX Runtime) and OnnxTextEncoder."""

import numpy as np
import pytest
import torch

from cora.errors import UserError
from cora.export.graph import TextEncoderGraph
from cora.export.parity import TOLERANCES, text_encoder_parity
from cora.runtime.onnx import OnnxDetector, OnnxTextEncoder, default_providers
from tests.export.exported import BAKED_NAMES, baked_vocabulary, runtime_vocabulary, without_image_sizes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return runtime_vocabulary(tmp_path_factory)


@pytest.fixture(scope="module")
def detector(exported):
    return OnnxDetector(exported.path, text_encoder=exported.text_encoder)


def text(k, seed=0):
    return torch.nn.functional.normalize(torch.randn(k, 64, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_providers_default_to_cpu_here(detector):
    assert default_providers()[-1] == "CPUExecutionProvider"
    assert detector.image_size is None and detector.embed_dim == 64 and (detector.min_size, detector.max_size) == (128, 192)


def assert_same_detections(got, ref):
    """Index for index: the same labels in the same order, boxes (original pixels) and scores within tolerance."""
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert len(g["scores"]) == len(r["scores"]) > 0
        assert torch.equal(g["labels"], r["labels"])
        torch.testing.assert_close(g["boxes"], r["boxes"], rtol=0, atol=TOLERANCES["boxes"] * 4)  # resize scale <= 4
        torch.testing.assert_close(g["scores"], r["scores"], rtol=0, atol=TOLERANCES["scores"])


def test_detect_equals_cora_detect_when_no_padding_is_needed(exported, detector):
    images = [torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    t = text(7)
    prior = torch.linspace(0.5, 2, 7)
    got = detector.detect(images, text_embeddings=t.numpy(), class_prior=prior)
    assert_same_detections(got, exported.detector.detect(images, text_embeddings=t, class_prior=prior))


@pytest.mark.parametrize("shapes", [[(100, 130), (90, 170)], [(77, 61)]])
def test_detect_equals_cora_detect_on_padded_images(exported, detector, shapes):
    """Resized sizes that are not multiples of 32 (tiny: 100 x 130 -> 128 x 166, 90 x 170 -> 102 x 192,
    77 x 61 -> 162 x 128), batched with different sizes: the same resize, padding and padding mask."""
    images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(h)) for h, w in shapes]
    _, sizes, _ = exported.detector.preprocess(images)
    assert (sizes % 32 != 0).any(dim=1).all(), sizes  # every image is padded
    t = text(7, seed=1)
    prior = torch.linspace(0.5, 2, 7)
    got = detector.detect(images, text_embeddings=t.numpy(), class_prior=prior)
    assert_same_detections(got, exported.detector.detect(images, text_embeddings=t, class_prior=prior))


def test_an_old_or_foreign_export_is_refused(exported, tmp_path):
    """No cora metadata (a foreign .onnx) or another format version (an export older than image_sizes)."""
    old = without_image_sizes(exported.path, tmp_path / "old.onnx")
    with pytest.raises(UserError, match=r"old.onnx has no cora metadata .*export it with `cora export`"):
        OnnxDetector(old)
    (tmp_path / "old.onnx.json").write_text('{"format": "onnx", "graph": "detector"}')
    with pytest.raises(UserError, match="export format version None; this cora reads 2: re-export"):
        OnnxDetector(old)


@pytest.mark.parametrize("sidecar, match", [
    ('{"format": "onnx", "format_version": 3, "graph": "detector"}', "format version 3; this cora reads 2"),
    ('{"format": "onnx", "format_version": "2", "graph": "detector"}', "format version '2'; this cora reads 2"),
    ('{"format": "engine", "format_version": 2, "graph": "detector"}', "says format 'engine', expected 'onnx'"),
    ('{"format": "onnx", "format_version": 2, "graph": "text_encoder"}', "says graph 'text_encoder', expected 'detector'"),
    ('["format", "onnx"]', "must be a JSON object .*got list"),
    ('{"format": "onnx",', "not valid JSON"),
])
def test_unknown_metadata_is_refused(exported, tmp_path, sidecar, match):
    """The sidecar wins over the embedded copy: each wrong field of it alone refuses the file."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.path.read_bytes())
    OnnxDetector(path)  # negative control: the embedded metadata (no sidecar yet) opens
    (tmp_path / "model.onnx.json").write_text(sidecar)
    with pytest.raises(UserError, match=match):
        OnnxDetector(path)


def test_a_detector_is_not_a_text_encoder(exported):
    with pytest.raises(UserError, match="says graph 'detector', expected 'text_encoder'"):
        OnnxTextEncoder(exported.path)


def _graph_never_runs(*args):
    raise AssertionError("a bad input reached ONNX Runtime")


@pytest.mark.parametrize("kwargs, match", [
    (dict(class_prior=np.array([1, np.nan, 1], np.float32)), r"class_prior must hold finite weights >= 0, got .*nan"),
    (dict(class_prior=torch.tensor([1.0, float("inf"), 1.0])), r"class_prior must hold finite weights >= 0"),
    (dict(text_embeddings=np.full((3, 64), np.nan, np.float32)), r"text_embeddings must be finite: 3 of 3 rows"),
    (dict(images=[torch.rand(3, 64, 64) * 255]), r"images\[0\] must be float RGB in \[0, 1\], .*divide 0..255 images by 255"),
    (dict(images=[torch.full((3, 64, 64), float("nan"))]), r"images\[0\] must be float RGB in \[0, 1\]"),
])
def test_bad_values_are_refused_before_the_graph(detector, monkeypatch, kwargs, match):
    good = dict(images=[torch.rand(3, 64, 64)], text_embeddings=text(3).numpy(), class_prior=np.ones(3, np.float32))
    assert len(detector.detect(**good)) == 1  # negative control: the same call with good values runs
    monkeypatch.setattr(detector, "_run", _graph_never_runs)
    with pytest.raises(ValueError, match=match):
        detector.detect(**{**good, **kwargs})


@pytest.mark.parametrize("sizes, match", [
    ([[0, 64]], r"image_sizes must be \(h, w\) with 1 <= h <= 64 and 1 <= w <= 64 .*got \[\[0, 64\]\]"),
    ([[64, -3]], r"got \[\[64, -3\]\]"),
    ([[64, 65]], r"got \[\[64, 65\]\]"),
])
def test_run_checks_image_sizes_before_the_graph(exported, detector, monkeypatch, sizes, match):
    batch = torch.rand(1, 3, 64, 64)
    boxes, scores, labels = detector.run(batch, np.array([[64, 48]]), text(3))
    assert boxes.shape[:2] == scores.shape == labels.shape  # negative control: valid sizes run
    monkeypatch.setattr(detector, "_run", _graph_never_runs)
    with pytest.raises(ValueError, match=match):
        detector.run(batch, np.array(sizes), text(3))
    with pytest.raises(ValueError, match="min_size must be an integer >= 1 \\(pixels\\), got 0"):
        OnnxDetector(exported.path, min_size=0)  # 0 or less would resize every image to 1 x 1


def test_any_sizes_boxes_in_original_pixels_and_names(detector):
    images = [np.random.rand(3, 300, 200).astype(np.float32), torch.rand(3, 64, 500)]
    results = detector.detect(images, vocabulary="cat, dog, traffic light")
    for img, det in zip(images, results):
        h, w = img.shape[1:]
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 100
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, [0, 2]] <= w).all() and (det["boxes"][:, [1, 3]] <= h).all()
        assert det["labels"].dtype == torch.int64 and ((det["labels"] >= 0) & (det["labels"] < 3)).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(text_embeddings=np.zeros((0, 64), np.float32)), r"K >= 1"),
    (dict(text_embeddings=np.zeros((3, 32), np.float32)), r"\[K, 64\]"),
    (dict(text_embeddings=np.zeros((3, 64), np.float32), vocabulary="cat"), "exactly one"),
    (dict(), "exactly one"),
    (dict(text_embeddings=np.ones((3, 64), np.float32), class_prior=np.ones(2, np.float32)), r"class_prior"),
])
def test_bad_inputs_are_clear_errors(detector, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detector.detect([torch.rand(3, 64, 64)], **kwargs)


def test_bad_image_rank_and_dtype(detector):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        detector.detect(np.zeros((3, 64, 64), np.float32), text_embeddings=text(2))
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((1, 3, 64, 64), np.uint8), text_embeddings=text(2))


def test_names_without_a_text_encoder_is_a_clear_error(exported):
    with pytest.raises(ValueError, match="need a text encoder"):
        OnnxDetector(exported.path).detect([torch.rand(3, 64, 64)], vocabulary=["cat"])
    with pytest.raises(ValueError, match="text_encoder must be"):
        OnnxDetector(exported.path, text_encoder=42)
    with pytest.raises(FileNotFoundError):
        OnnxDetector(exported.path.parent / "missing.onnx")


def test_callable_text_encoder(exported):
    det = OnnxDetector(exported.path, text_encoder=lambda names: text(len(names)))
    assert len(det.detect([torch.rand(3, 96, 96)], vocabulary=["a", "b"])) == 1


def test_text_encoder_matches_open_clip_and_text_embedder(exported):
    tokens = exported.detector.text_embedder.tokenizer(["a photo of a cat.", "traffic light", "x" * 200])
    graph = TextEncoderGraph(exported.detector.text_embedder.clip_model)
    assert text_encoder_parity(exported.text_encoder, graph, tokens) < 1e-5
    names = ["cat", "dog", "traffic light"]
    got = OnnxTextEncoder(exported.text_encoder)(names)
    ref = exported.detector.encode_vocabulary(names).numpy()  # TextEmbedder: 80 templates averaged
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_text_encoder_cache(exported, tmp_path):
    """Names come back from the cache (the session is not run again) equal to a fresh encoding; a name not
    yet cached is encoded alone, and the order of the request is kept."""
    from cora.text_cache import TextCache

    cache = TextCache(str(tmp_path / "cache.sqlite3"))
    uncached = OnnxTextEncoder(exported.text_encoder, cache=False)(["cat", "dog", "traffic light"])
    encoder = OnnxTextEncoder(exported.text_encoder, cache=cache)
    np.testing.assert_array_equal(encoder(["cat", "dog"]), uncached[:2])
    runs = []
    real_run = encoder.session.run
    encoder.session = type("Counting", (), {"run": lambda self, *a: runs.append(a[1]["tokens"].shape[0]) or real_run(*a)})()
    np.testing.assert_array_equal(encoder(["dog", "cat"]), uncached[[1, 0]])
    assert runs == []  # both from the cache
    np.testing.assert_allclose(encoder(["traffic light", "cat"]), uncached[[2, 0]], atol=1e-6, rtol=0)
    assert sum(runs) == len(encoder.templates)  # only the new name's prompts ran


def test_baked_vocabulary_model(tmp_path_factory):
    baked = baked_vocabulary(tmp_path_factory)
    det = OnnxDetector(baked.path)
    assert det.vocabulary == BAKED_NAMES and det.image_size == (96, 128)
    (res,) = det.detect([torch.rand(3, 200, 120)])
    assert len(res["scores"]) <= 10 and (res["boxes"][:, [0, 2]] <= 120).all()
    with pytest.raises(ValueError, match="baked vocabulary of 3 classes"):
        det.detect([torch.rand(3, 64, 64)], vocabulary=["cat"])
