"""export/to_onnx.py: one ONNX file for the whole detector, dynamic K, parity with PyTorch (tiny, random init)."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.check import default_cases, format_table, parity_check
from export.to_onnx import ExportError, export_detector, sidecar_path
from tests.export.exported import BAKED_NAMES, BAKED_SIZE, baked_vocabulary, runtime_vocabulary

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
    assert [v.name for v in model.graph.input] == ["images", "text_embeddings", "class_prior"]
    assert [v.name for v in model.graph.output] == ["boxes", "scores", "labels"]
    assert dims(io["images"]) == ["batch", 3, "height", "width"]
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


def test_exportable_module_is_cora_forward(exported):
    """The export wrapper computes what CORA.forward does on an un-padded batch."""
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    text = torch.nn.functional.normalize(torch.randn(5, 64), dim=-1)
    with torch.no_grad():
        ref = exported.detector(images, torch.tensor([[96, 128]] * 2), text)
        raw = exported.module.raw_outputs(images, text, torch.ones(5))
    torch.testing.assert_close(raw["class_logits"], ref["class_logits"])
    torch.testing.assert_close(raw["objectness"], ref["objectness"][-1])


@pytest.mark.parametrize("ks", [(1, 2, 7), (65, 1203)])
def test_onnxruntime_matches_pytorch_for_any_k_two_sizes_batch_2(exported, ks):
    cases = default_cases(exported.meta, ks=ks, batch=2, sizes=[(128, 160), (96, 64)])
    rows = parity_check(exported.path, exported.module, cases)
    print(format_table(rows))
    assert len(rows) == 2 * len(ks) and all(r["got"] > 0 for r in rows)


def test_image_without_detections(exported):
    """K = 1 and a text embedding opposite to every region embedding: all scores ~ exp(-100) < threshold."""
    images = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        raw = exported.module.raw_outputs(images, torch.eye(64), torch.ones(64))  # logits = 100 * embedding
        regions = torch.nn.functional.normalize(raw["class_logits"].reshape(-1, 64), dim=-1)
        text = -torch.nn.functional.normalize(regions.mean(0), dim=0)[None]
        ref = exported.module(images, text, torch.ones(1))
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": images.numpy(), "text_embeddings": text.numpy(),
                                               "class_prior": np.ones(1, np.float32)})
    for out in (ref, (boxes, scores, labels)):
        assert (np.asarray(out[2]) == -1).all() and (np.asarray(out[1]) == 0).all() and (np.asarray(out[0]) == 0).all()
    assert labels.shape == (2, 100) and labels.dtype == np.int64


def test_baked_vocabulary_static_size_via_cora_export(baked):
    model = onnx.load(str(baked.path))
    io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    assert [v.name for v in model.graph.input] == ["images", "class_prior"]
    assert dims(io["images"]) == ["batch", 3, *BAKED_SIZE] and dims(io["class_prior"]) == [len(BAKED_NAMES)]
    assert dims(io["scores"]) == ["batch", 10]
    assert baked.meta["vocabulary"] == BAKED_NAMES and baked.meta["image_size"] == list(BAKED_SIZE)
    rows = parity_check(baked.path, baked.module, default_cases(baked.meta, batch=2))
    assert all(r["unmatched"] == 0 for r in rows)


def test_bad_image_size_is_a_clear_error(exported, tmp_path):
    with pytest.raises(ExportError, match="multiples of 32"):
        export_detector(exported.detector, exported.detector.cfg, tmp_path / "x.onnx", source={}, image_size=(100, 128))
    assert not (tmp_path / "x.onnx").exists()
