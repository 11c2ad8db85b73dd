"""export/check.py (the command line), export/parity.py (tie-aware parity, ParityError), export/lint.py (the
TensorRT-readiness lint)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export.check import main
from export.lint import lint_tensorrt
from export.parity import TOLERANCES, ParityCase, ParityError, match_detections, parity_check
from tests.export.exported import runtime_vocabulary


def dets(rows, m=5):
    """[(x1, y1, x2, y2, score, label)] -> padded (boxes [m, 4], scores [m], labels [m])."""
    boxes, scores, labels = np.zeros((m, 4), np.float32), np.zeros(m, np.float32), -np.ones(m, np.int64)
    for i, (*box, s, label) in enumerate(rows):
        boxes[i], scores[i], labels[i] = box, s, label
    return boxes, scores, labels


def test_match_is_by_box_and_score_not_slot_order():
    a = [(0, 0, 10, 10, 0.5, 1), (20, 20, 30, 30, 0.5, 2), (5, 5, 9, 9, 0.2, 1)]
    m = match_detections(dets(a), dets([a[1], a[0], a[2]]), 5, 0.001)
    assert (m["matched"], m["unmatched"], m["top_label_ok"]) == (3, 0, True)


def test_tied_boxes_swapped_by_nms_are_ties_not_failures():
    ref = dets([(0, 0, 10, 10, 0.5, 1), (40, 40, 50, 50, 0.3, 0)])
    got = dets([(2, 0, 12, 10, 0.5, 1), (40, 40, 50, 50, 0.3, 0)])  # the other of two tied, overlapping boxes
    m = match_detections(ref, got, 5, 0.001)
    assert (m["matched"], m["ties"], m["unmatched"]) == (1, 1, 0)


def test_a_tie_swap_cascades_to_the_boxes_it_suppresses():
    tied_a, tied_b = (0, 0, 10, 10, 0.5, 1), (3, 0, 13, 10, 0.5, 1)  # IoU 0.54: NMS keeps one of the two
    below_a = (-2, 0, 8, 10, 0.4, 1)  # IoU 0.67 with tied_a (suppressed where it is kept), 0.33 with tied_b
    m = match_detections(dets([tied_a]), dets([tied_b, below_a]), 5, 0.001)
    assert (m["ties"], m["cascades"], m["unmatched"]) == (1, 1, 0)
    unrelated = (80, 80, 90, 90, 0.4, 1)
    m = match_detections(dets([tied_a]), dets([tied_b, unrelated]), 5, 0.001)
    assert m["unmatched"] == 1


def test_real_differences_are_unmatched():
    ref = dets([(0, 0, 10, 10, 0.5, 1), (40, 40, 50, 50, 0.3, 0)])
    got = dets([(0, 0, 10, 10, 0.5, 2), (40, 40, 50, 50, 0.3, 0)])
    m = match_detections(ref, got, 5, 0.001)
    assert m["unmatched"] == 2 and not m["top_label_ok"]


def test_boundary_swaps_at_the_cut_off_are_tolerated():
    ref = dets([(0, 0, 10, 10, 0.5, 1), (40, 40, 50, 50, 0.3, 0)], m=2)
    got = dets([(0, 0, 10, 10, 0.5, 1), (60, 60, 70, 70, 0.3, 3)], m=2)  # a different 0.3 took the last slot
    m = match_detections(ref, got, 2, 0.001)
    assert (m["boundary"], m["unmatched"]) == (2, 0)


class Shifted(torch.nn.Module):
    """The exported module with 1 px added to boxes and labels rotated: every output differs."""

    def __init__(self, module):
        super().__init__()
        self.inner, self.max_detections, self.score_threshold = module, module.max_detections, module.score_threshold
        self.nms_iou = module.nms_iou

    def forward(self, images, image_sizes, text_embeddings, class_prior):
        boxes, scores, labels = self.inner(images, image_sizes, text_embeddings, class_prior)
        return boxes + 1.0, scores, torch.where(labels >= 0, (labels + 1) % text_embeddings.shape[0], labels)


@pytest.mark.slow
def test_parity_error_collects_every_output(tmp_path_factory):
    exported = runtime_vocabulary(tmp_path_factory)
    text = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    case = ParityCase("shifted", torch.rand(1, 3, 96, 128), torch.tensor([[96, 128]]), text, torch.ones(3))
    with pytest.raises(ParityError) as err:
        parity_check(exported.path, Shifted(exported.module), [case])
    failures = {f["output"]: f for f in err.value.failures}
    assert {"boxes", "labels"} <= set(failures)  # all collected in one error
    assert failures["boxes"]["max_diff"] == pytest.approx(1.0, abs=1e-3)
    assert f"boxes: max diff 1 > tolerance {TOLERANCES['boxes']}" in str(err.value)
    assert err.value.rows[0]["unmatched"] > 0 or not err.value.rows[0]["top_label_ok"]

    class Nudged(Shifted):
        def forward(self, images, image_sizes, text_embeddings, class_prior):
            boxes, scores, labels = self.inner(images, image_sizes, text_embeddings, class_prior)
            return boxes + 0.2, scores + 1e-3 * (labels >= 0), labels

    with pytest.raises(ParityError) as err:
        parity_check(exported.path, Nudged(exported.module), [case])
    failures = {f["output"]: f for f in err.value.failures}
    assert set(failures) == {"boxes", "scores"}
    assert failures["boxes"]["tolerance"] == TOLERANCES["boxes"] and failures["boxes"]["max_diff"] == pytest.approx(0.2, abs=1e-4)
    assert "boxes: max diff 0.2" in str(err.value) and "scores: max diff 0.001" in str(err.value)


@pytest.mark.slow
def test_lint_passes_on_our_exports(tmp_path_factory):
    exported = runtime_vocabulary(tmp_path_factory)
    for path in (exported.path, exported.text_encoder):
        findings = lint_tensorrt(path)
        assert not [f for f in findings if f.severity in ("error", "warning")], [str(f) for f in findings]
    messages = " ".join(str(f) for f in lint_tensorrt(exported.path))
    assert "coordinate_transformation_mode=half_pixel" in messages and "bounded by 3000" in messages
    assert "int64" in messages and "num_classes" in messages
    assert "graph I/O ['image_sizes', 'labels']" in messages  # the padding-mask input is int64, and passes
    assert main(["lint", str(exported.path)]) == 0


def bad_model(path):
    """OneHot with a depth computed from an input's shape, RoiAlign without coordinate_transformation_mode,
    a TopK with k = 5000, an op TensorRT lacks, and a dynamic input axis without a name."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    rois = helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["n", 4])
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [None])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("pooled", "onehot", "top", "uniq")]
    nodes = [
        helper.make_node("Shape", ["idx"], ["idx_shape"]),
        helper.make_node("OneHot", ["idx", "idx_shape", "onehot_values"], ["onehot"]),
        helper.make_node("RoiAlign", ["x", "rois", "batch_idx"], ["pooled"], output_height=2, output_width=2),
        helper.make_node("Flatten", ["x"], ["flat"], axis=0),
        helper.make_node("TopK", ["flat", "k"], ["top", "top_idx"]),
        helper.make_node("Unique", ["flat"], ["uniq"]),
    ]
    inits = [helper.make_tensor("onehot_values", TensorProto.FLOAT, [2], [0.0, 1.0]),
             helper.make_tensor("batch_idx", TensorProto.INT64, [1], [0]),
             helper.make_tensor("k", TensorProto.INT64, [1], [5000])]
    graph = helper.make_graph(nodes, "bad", [x, rois, idx], outs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_lint_flags_the_hand_made_bad_model(tmp_path):
    findings = lint_tensorrt(bad_model(tmp_path / "bad.onnx"))
    errors = {(f.op, f.node.split("/")[-1]) for f in findings if f.severity == "error"}
    text = "\n".join(str(f) for f in findings)
    assert any(op == "OneHot" for op, _ in errors) and "'depth' must be a build-time constant" in text
    assert any(op == "RoiAlign" for op, _ in errors) and "coordinate_transformation_mode is not set" in text
    assert any(op == "TopK" for op, _ in errors) and "5000" in text
    assert any(op == "Unique" for op, _ in errors)
    assert "'idx'" in text and "without a name" in text
    assert main(["lint", str(tmp_path / "bad.onnx")]) == 1
