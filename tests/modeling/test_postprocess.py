"""cora.modeling.postprocess on hand-made examples."""

import math

import pytest
import torch

from torchvision.ops import box_iou

from cora.modeling.postprocess import class_probabilities, per_class_nms, postprocess


def test_class_probabilities_have_a_background_column_and_prior():
    logits = torch.tensor([[math.log(2.0), 0.0]])
    torch.testing.assert_close(class_probabilities(logits), torch.tensor([[0.5, 0.25]]))
    torch.testing.assert_close(class_probabilities(logits, torch.tensor([1.0, 8.0])), torch.tensor([[0.5, 2.0]]))


def test_per_class_nms_threshold_scaling_and_clipping():
    ln2 = math.log(2.0)
    logits = torch.tensor([[[ln2, 0.0], [0.0, ln2], [5.0, 5.0], [ln2, 0.0]]])
    objectness = torch.tensor([[100.0, 100.0, -100.0, 100.0]])
    # Image 100 px high, 200 px wide. Boxes 0 and 1 overlap (IoU 0.9); box 2 is below threshold;
    # box 3 sticks out of the image on the right and gets clipped.
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.95, 0.5, 0.2, 0.2]]])
    (out,) = postprocess(logits, objectness, boxes, torch.tensor([[100, 200]]), max_detections=10)
    got = {(tuple(b.round().tolist()), int(l), round(float(s), 4)) for b, l, s in zip(out["boxes"], out["labels"], out["scores"])}
    expected = {
        ((80.0, 40.0, 120.0, 60.0), 0, 0.5),     # box 0, class 0; box 1's class 0 (0.25) suppressed
        ((82.0, 40.0, 122.0, 60.0), 1, 0.5),     # box 1, class 1; box 0's class 1 (0.25) suppressed
        ((170.0, 40.0, 200.0, 60.0), 0, 0.5),    # box 3 (no overlap with 0/1 above 0.5), clipped at x = 200
        ((170.0, 40.0, 200.0, 60.0), 1, 0.25),
    }
    assert got == expected
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_max_detections_and_empty_result():
    logits, objectness = torch.zeros(2, 5, 3), torch.zeros(2, 5)
    objectness[1] = -100  # image 1: nothing above the threshold
    boxes = torch.rand(2, 5, 4) * 0.5 + 0.25
    out = postprocess(logits, objectness, boxes, torch.tensor([[64, 64], [64, 64]]), nms_iou=1.0, max_detections=4)
    assert len(out[0]["scores"]) == 4
    assert out[1]["boxes"].shape == (0, 4) and out[1]["labels"].dtype == torch.int64


def test_shape_errors():
    with pytest.raises(ValueError, match=r"class_logits must be Tensor\[B, Q, K\]"):
        postprocess(torch.zeros(5, 3), torch.zeros(5), torch.zeros(5, 4), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"expected objectness \[B, Q\] = \[1, 5\]"):
        postprocess(torch.zeros(1, 5, 3), torch.zeros(1, 4), torch.zeros(1, 5, 4), torch.zeros(1, 2))


def test_per_class_nms_is_exact_near_the_threshold_with_large_labels():
    """Pairs of one class (label 4095: offsets of ~5.5e6 px inside batched_nms) whose IoU is within 1e-3 of the
    threshold: kept or suppressed exactly as a float64 IoU says (float32 offsets flipped ~1 in 4 here)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        x, y = (torch.rand(2, generator=g) * 1000 + 10.3).tolist()
        w = 50 + 100 * torch.rand(1, generator=g).item()
        t = 0.5 + (torch.rand(1, generator=g).item() - 0.5) * 2e-3
        shift = w * (1 - t) / (1 + t)  # IoU of a box and its copy shifted right by `shift` is t
        a = torch.tensor([x, y, x + w, y + w], dtype=torch.float64)
        boxes = torch.stack([a, a + torch.tensor([shift, 0, shift, 0], dtype=torch.float64)]).float()
        iou = box_iou(boxes.double(), boxes.double())[0, 1].item()
        kept = per_class_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([4095, 4095]), 0.5)
        assert kept.tolist() == ([0] if iou > 0.5 else [0, 1]), iou
