"""cora.modeling.exportable: the export-time post-processing is CORA's postprocess, as tensor code."""

import pytest
import torch

from cora.config import get_preset
from cora.modeling.detector import CORA
from cora.modeling.exportable import MAX_TOPK, ExportableCORA
from cora.modeling.postprocess import cxcywh_to_xyxy, postprocess
from export.parity import match_detections


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return ExportableCORA.from_detector(CORA.from_config(get_preset("tiny"), random_init=True)).eval()


@pytest.mark.parametrize("b, q, k", [(2, 50, 300), (3, 40, 1), (1, 200, 64)])
def test_detections_equal_postprocess(module, b, q, k):
    g = torch.Generator().manual_seed(k)
    logits, objectness = torch.randn(b, q, k, generator=g) * 5, torch.randn(b, q, generator=g)
    cxcywh = torch.rand(b, q, 4, generator=g) * 0.5 + 0.25
    ref = postprocess(logits, objectness, cxcywh, torch.tensor([[100, 150]] * b), 0.001, 0.5, 100, 3000)
    scale = torch.tensor([150, 100, 150, 100.0])
    boxes, scores, labels = module.detections(logits, objectness, torch.minimum((cxcywh_to_xyxy(cxcywh) * scale).clamp(min=0), scale))
    assert boxes.shape == (b, 100, 4) and labels.dtype == torch.int64
    for i in range(b):
        r = tuple(ref[i][key].numpy() for key in ("boxes", "scores", "labels"))
        m = match_detections(r, (boxes[i].numpy(), scores[i].numpy(), labels[i].numpy()), 100, 0.001)
        assert m["ref"] == m["got"] == m["matched"] and m["box_diff"] == 0 and m["score_diff"] == 0
    assert (labels[scores == 0] == -1).all()


@pytest.mark.parametrize("iou, kept", [(0.505, 1), (0.495, 2)])
def test_nms_is_exact_for_small_boxes_of_a_late_class_in_a_large_vocabulary(module, iou, kept):
    """Offsets of label * image size (torchvision's trick) round these boxes by ~0.1 px and keep both at 0.505."""
    k, side = 5000, 1344.0
    w = 10.0 * (1 - iou) / (1 + iou)  # two 10x10 boxes shifted by w along x have IoU (10 - w) / (10 + w)
    boxes = torch.tensor([[[side - 20, side - 20, side - 10, side - 10], [side - 20 + w, side - 20, side - 10 + w, side - 10],
                           [0, 0, side, side]]])
    logits = torch.full((1, 3, k), -100.0)
    logits[0, :2, k - 1] = 10.0
    _, scores, labels = module.detections(logits, torch.tensor([[3.0, 2.0, -20.0]]), boxes)
    assert int((labels == k - 1).sum()) == kept


def test_topk_limits_are_enforced():
    detector = CORA.from_config(get_preset("tiny"), random_init=True)
    with pytest.raises(ValueError, match="max_detections must be an int in \\[1, 3840\\)"):
        ExportableCORA.from_detector(detector, max_detections=MAX_TOPK)
    assert ExportableCORA.from_detector(detector, pre_nms_topk=None).pre_nms_topk == 3000
