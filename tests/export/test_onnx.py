"""cora.export.onnx: one ONNX file for the whole detector (CORA.forward traced), dynamic K, parity with PyTorch
slot by slot (tiny, random init)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cora.errors import UserError
from cora.export.onnx import export_detector, sidecar_path
from cora.export.parity import ParityCase, ParityError, default_cases, format_table, parity_check, synthetic_images
from cora.modeling.detector import padding_mask
from tests.export.exported import BAKED_NAMES, BAKED_SIZE, baked_vocabulary, runtime_vocabulary, without_image_sizes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return runtime_vocabulary(tmp_path_factory)


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    return baked_vocabulary(tmp_path_factory)


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_inputs_outputs_and_ops(exported):
    model = onnx.load(str(exported.path))
    io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    assert [v.name for v in model.graph.input] == ["images", "image_sizes", "text_embeddings", "class_prior"]
    assert [v.name for v in model.graph.output] == ["boxes", "scores", "labels"]
    assert dims(io["images"]) == ["batch", 3, "height", "width"]
    assert dims(io["image_sizes"]) == ["batch", 2]
    assert io["image_sizes"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(io["text_embeddings"]) == ["num_classes", 64]
    assert dims(io["class_prior"]) == ["num_classes"]
    assert dims(io["boxes"]) == ["batch", 100, 4] and dims(io["labels"]) == ["batch", 100]
    assert io["labels"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    ops = {n.op_type for n in model.graph.node}
    assert {"RoiAlign", "NonMaxSuppression", "TopK", "Softmax"} <= ops
    assert "OneHot" not in ops
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), "a custom op reached the file"


def test_sidecar_and_metadata_hold_the_resolved_config(exported):
    side = json.loads(sidecar_path(exported.path).read_text())
    assert side["config"]["name"] == "tiny" and side["source"]["random_init"] is True
    assert side["postprocess"]["max_detections"] == 100 and side["vocabulary"] is None
    embedded = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert json.loads(embedded["cora"]) == side
    assert not [p for p in exported.path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


# Two images of different sizes letterboxed into one 128 x 192 batch, as the tiny preset resizes 100 x 130 and
# 90 x 170 images (shorter side 128, longer <= 192): neither valid size is a multiple of 32.
PADDED_SIZES = [(128, 166), (102, 192)]


def padded_batch(sizes=PADDED_SIZES, height=128, width=192, seed=1):
    images = torch.from_numpy(synthetic_images(len(sizes), height, width, seed))
    for b, (h, w) in enumerate(sizes):
        images[b, :, h:] = 0
        images[b, :, :, w:] = 0
    return images, torch.tensor(sizes, dtype=torch.int64)


def test_the_graph_is_cora_forward_with_the_padding_mask(exported):
    """The exported function is CORA.forward; image_sizes changes it (so the letterboxed parity means something)."""
    images, sizes = padded_batch()
    text = torch.nn.functional.normalize(torch.randn(5, 64, generator=torch.Generator().manual_seed(2)), dim=-1)
    prior = torch.linspace(0.5, 2, 5)
    assert padding_mask(sizes, (8, 12), 16).any(), "the batch must have padded cells"
    with torch.no_grad():
        boxes, scores, labels = exported.detector(images, sizes, text, prior)
        whole = exported.detector(images, torch.tensor([[128, 192]] * 2), text, prior)
    assert (boxes[..., 2] <= sizes[:, 1, None]).all() and (boxes[..., 3] <= sizes[:, 0, None]).all()
    assert (labels >= 0).any()
    assert not torch.equal(whole[0], boxes)


def assert_slot_by_slot(rows):
    """Index for index: every filled slot holds the same label, box and score (within TOLERANCES)."""
    assert rows and all(r["slots"] > 0 and r["same"] == r["slots"] and r["ties"] == 0 for r in rows), format_table(rows)


@pytest.mark.parametrize("ks", [(1, 80), (1203,)])
def test_onnxruntime_equals_cora_slot_by_slot_for_any_k_whole_and_letterboxed(exported, ks):
    """ONNX Runtime fp32 vs CORA.forward, index for index: whole images at two sizes and letterboxed batches
    at both sizes (valid sizes not multiples of 32, different per image)."""
    cases = default_cases(exported.meta, ks=ks, batch=2, sizes=[(128, 160), (96, 64)])
    assert sum(c.name.startswith("letterboxed") for c in cases) == 2 * len(ks)
    rows = parity_check(exported.path, exported.module, cases)
    print(format_table(rows))
    assert len(rows) == 4 * len(ks)
    assert_slot_by_slot(rows)


def letterboxed_case(k=7):
    images, sizes = padded_batch()
    text = torch.nn.functional.normalize(torch.randn(k, 64, generator=torch.Generator().manual_seed(3)), dim=-1)
    return ParityCase("two sizes letterboxed", images, sizes, text, torch.linspace(0.5, 2, k))


def test_onnxruntime_equals_cora_on_two_different_letterboxed_images(exported):
    """A batch of two images of different sizes, neither a multiple of 32, as the tiny preset resizes them."""
    assert_slot_by_slot(parity_check(exported.path, exported.module, [letterboxed_case()]))


def test_a_graph_without_image_sizes_fails_that_parity(exported, tmp_path):
    """The graph as exported before image_sizes (the input size as the un-padded size) differs from CORA on
    letterboxed images: the parity check above catches it."""
    old = without_image_sizes(exported.path, tmp_path / "old.onnx")
    assert "image_sizes" not in [i.name for i in ort.InferenceSession(str(old)).get_inputs()]
    with pytest.raises(ParityError) as err:
        parity_check(old, exported.module, [letterboxed_case()])
    assert {f["output"] for f in err.value.failures} & {"boxes", "labels"}
    # ... and equals it on whole images, so the rewrite itself is faithful.
    whole = [c for c in default_cases(exported.meta, ks=(7,), batch=2, sizes=[(128, 160)]) if c.name.startswith("random")]
    parity_check(old, exported.module, whole)


def test_image_without_detections(exported):
    """K = 1 and a text embedding opposite to every region embedding: all scores ~ exp(-100) < threshold."""
    images = torch.rand(2, 3, 96, 128)
    sizes = torch.tensor([[96, 128], [70, 100]])
    with torch.no_grad():
        raw = exported.detector.predict_raw(images, sizes, torch.eye(64), torch.ones(64))  # logits = 100 * embedding
        regions = torch.nn.functional.normalize(raw["class_logits"].reshape(-1, 64), dim=-1)
        text = -torch.nn.functional.normalize(regions.mean(0), dim=0)[None]
        ref = exported.detector(images, sizes, text, torch.ones(1))
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy(),
                                               "text_embeddings": text.numpy(), "class_prior": np.ones(1, np.float32)})
    for out in (ref, (boxes, scores, labels)):
        assert (np.asarray(out[2]) == -1).all() and (np.asarray(out[1]) == 0).all() and (np.asarray(out[0]) == 0).all()
    assert labels.shape == (2, 100) and labels.dtype == np.int64


def test_baked_vocabulary_static_size_via_cora_export(baked):
    model = onnx.load(str(baked.path))
    io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    assert [v.name for v in model.graph.input] == ["images", "image_sizes", "class_prior"]
    assert dims(io["images"]) == ["batch", 3, *BAKED_SIZE] and dims(io["class_prior"]) == [len(BAKED_NAMES)]
    assert dims(io["image_sizes"]) == ["batch", 2] and dims(io["scores"]) == ["batch", 10]
    assert baked.meta["vocabulary"] == BAKED_NAMES and baked.meta["image_size"] == list(BAKED_SIZE)
    rows = parity_check(baked.path, baked.module, default_cases(baked.meta, batch=2))
    assert len(rows) == 3  # whole, whole, letterboxed at the one static size
    assert_slot_by_slot(rows)


def test_bad_image_size_is_a_clear_error(exported, tmp_path):
    with pytest.raises(UserError, match="multiples of 32"):
        export_detector(exported.detector, tmp_path / "x.onnx", source={}, image_size=(100, 128))
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_parity_check_leaves_the_existing_file(exported, tmp_path, monkeypatch):
    """The new file replaces `out` only after its check: a failure keeps the old export, and no temporary."""
    import cora.export.parity as parity

    out = tmp_path / "x.onnx"
    out.write_bytes(b"the previous export")

    def failing(*args, **kwargs):
        raise ParityError([{"output": "boxes", "max_diff": 1.0, "tolerance": 1e-4, "cases": ["c"]}], [])

    monkeypatch.setattr(parity, "parity_check", failing)
    with pytest.raises(ParityError):
        export_detector(exported.detector, out, source={})
    assert out.read_bytes() == b"the previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]
