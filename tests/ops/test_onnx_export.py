"""cora.ops.onnx_export: cora ops export to standard ONNX and ONNX Runtime agrees with PyTorch."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cora.ops import roi_align
from cora.ops.onnx_export import ONNX_OPSET, ONNX_TRANSLATIONS
from tests.ops.test_roi_align import make_input, make_rois


class Pool(torch.nn.Module):
    def __init__(self, aligned, sampling_ratio):
        super().__init__()
        self.aligned, self.sampling_ratio = aligned, sampling_ratio

    def forward(self, x, rois):
        return roi_align(x, rois, (7, 5), 0.25, self.sampling_ratio, self.aligned)


def export(module, args, path):
    program = torch.onnx.export(
        module.eval(), args, dynamo=True, opset_version=ONNX_OPSET,
        custom_translation_table=ONNX_TRANSLATIONS,
        dynamic_shapes={"x": {0: "batch", 2: "height", 3: "width"}, "rois": {0: "num_rois"}},
    )
    program.save(str(path))
    return onnx.load(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("aligned, mode", [(True, "half_pixel"), (False, "output_half_pixel")])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_roi_align_exports_to_roialign_and_matches_onnxruntime(tmp_path, aligned, mode, sampling_ratio):
    x = make_input(2, 8, 20, 30, torch.float32, "cpu", "contiguous")
    rois = make_rois(30, 2, 20, 30, 0.25, "cpu").float()
    model = export(Pool(aligned, sampling_ratio), (x, rois), tmp_path / "roi_align.onnx")

    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node), "a custom op reached the file"
    (node,) = [n for n in model.graph.node if n.op_type == "RoiAlign"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["coordinate_transformation_mode"].decode() == mode
    assert attrs["sampling_ratio"] == max(sampling_ratio, 0)

    session = ort.InferenceSession(str(tmp_path / "roi_align.onnx"), providers=["CPUExecutionProvider"])
    # Other sizes than at export time: batch, map size and the number of boxes are dynamic.
    for n, h, w, k in [(2, 20, 30, 30), (3, 17, 23, 1), (1, 9, 40, 64)]:
        x = make_input(n, 8, h, w, torch.float32, "cpu", "contiguous", seed=k)
        rois = make_rois(k, n, h, w, 0.25, "cpu", seed=k).float()
        (got,) = session.run(None, {"x": x.numpy(), "rois": rois.numpy()})
        expected = Pool(aligned, sampling_ratio)(x, rois).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("with_prompt", [False, True])
def test_prompted_attn_pool_exports_to_plain_nodes_and_matches_onnxruntime(tmp_path, with_prompt):
    from open_clip.modified_resnet import AttentionPool2d

    from cora.ops import PromptedAttentionPool

    torch.manual_seed(0)
    module = PromptedAttentionPool(AttentionPool2d(5, 32, 4, 16)).eval()
    if with_prompt:
        with torch.no_grad():
            module.prompt.normal_()
    x = torch.randn(3, 32, 5, 5)
    path = tmp_path / "attn_pool.onnx"
    program = torch.onnx.export(
        module, (x,), dynamo=True, opset_version=ONNX_OPSET, custom_translation_table=ONNX_TRANSLATIONS,
        dynamic_shapes={"x": {0: "regions"}},
    )
    program.save(str(path))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Softmax" in ops and "MatMul" in ops
    assert all(node.domain in ("", "ai.onnx") for node in onnx.load(str(path)).graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (3, 1, 17):
        x = torch.randn(n, 32, 5, 5)
        (got,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), rtol=1e-4, atol=1e-5)
