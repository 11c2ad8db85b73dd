"""cora.export.lint: the static TensorRT-readiness lint, and `cora check lint`."""

import onnx
import pytest
from onnx import TensorProto, helper

from cora.cli.check import main
from cora.export.lint import lint_tensorrt
from tests.export.exported import runtime_vocabulary


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
