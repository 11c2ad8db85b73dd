"""cora.modeling.scoring against a float64 brute force: ranking, per-(image, class) NMS, top M, padding."""

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cora.modeling.scoring import SCORE_STEP, boxes_to_pixels, class_probabilities, detections, ordered_topk


def brute_force(logits, objectness, boxes, score_threshold, nms_iou, m, pre_nms_topk):
    """One image at a time, float64 NMS class by class, a plain loop: (boxes, scores, labels) lists."""
    out = []
    for i in range(logits.shape[0]):
        scores = (class_probabilities(logits[i]) * objectness[i].sigmoid()[:, None]).flatten()  # [Q*K]
        k = logits.shape[2]
        key = [(-math.floor(float(s) / SCORE_STEP), j) for j, s in enumerate(scores.tolist())]
        order = [j for _, j in sorted(key)][: pre_nms_topk or len(key)]
        kept = []
        for j in order:
            if scores[j] <= score_threshold:
                continue
            q, label = divmod(j, k)
            box = boxes[i, q].double()
            if all(lab != label or box_iou(box[None], b[None]).item() <= nms_iou for b, lab, _ in kept):
                kept.append((box, label, float(scores[j])))
        out.append(kept[:m])
    return out


@pytest.mark.parametrize("b, q, k, topk", [(2, 50, 300, 3000), (3, 40, 1, 3000), (1, 200, 64, 0), (2, 30, 4096, 500)])
def test_detections_equal_a_float64_brute_force(b, q, k, topk):
    g = torch.Generator().manual_seed(k)
    logits, objectness = torch.randn(b, q, k, generator=g) * 5, torch.randn(b, q, generator=g)
    boxes = boxes_to_pixels(torch.rand(b, q, 4, generator=g) * 0.5 + 0.25, torch.tensor([[100, 150]] * b))
    out = detections(logits, objectness, boxes, score_threshold=0.001, nms_iou=0.5, max_detections=100,
                     pre_nms_topk=topk)
    assert out[0].shape == (b, 100, 4) and out[2].dtype == torch.int64
    for i, ref in enumerate(brute_force(logits, objectness, boxes, 0.001, 0.5, 100, topk)):
        n = len(ref)
        assert n > 0 and (out[2][i, n:] == -1).all() and (out[1][i, n:] == 0).all() and (out[0][i, n:] == 0).all()
        assert out[2][i, :n].tolist() == [lab for _, lab, _ in ref]
        torch.testing.assert_close(out[0][i, :n].double(), torch.stack([bx for bx, _, _ in ref]))
        assert out[1][i, :n].tolist() == pytest.approx([s for _, _, s in ref], rel=1e-6)


def test_ties_go_to_the_lower_index_as_onnx_topk():
    x = torch.tensor([[0.5, 1.0, 0.5, 1.0, 0.25, 0.5, -1.0, -1.0]])
    values, idx = ordered_topk(x, 6)
    assert idx.tolist() == [[1, 3, 0, 2, 5, 4]] and values.tolist() == [[1.0, 1.0, 0.5, 0.5, 0.5, 0.25]]
    y = torch.randint(0, 4, (3, 1000), generator=torch.Generator().manual_seed(0)).float() - 1.5
    _, idx = ordered_topk(y, 1000)
    ref = np.lexsort((np.arange(1000)[None].repeat(3, 0), -y.numpy()), axis=-1)  # by value desc, then index
    assert np.array_equal(idx.numpy(), ref)


def test_tied_boxes_keep_the_lower_query():
    """Two overlapping boxes with exactly equal scores: NMS keeps the one of the lower query on both sides."""
    logits = torch.zeros(1, 2, 1)
    boxes = torch.tensor([[[10.0, 10, 50, 50], [12.0, 10, 52, 50]]])
    for order in ([0, 1], [1, 0]):
        b, _, labels = detections(logits, torch.zeros(1, 2), boxes[:, order], score_threshold=0.001, nms_iou=0.5,
                                  max_detections=5, pre_nms_topk=100)
        assert labels[0].tolist() == [0, -1, -1, -1, -1] and b[0, 0].tolist() == boxes[0, order[0]].tolist()


@pytest.mark.parametrize("iou, kept", [(0.505, 1), (0.495, 2)])
def test_nms_is_exact_for_small_boxes_of_a_late_class_in_a_large_vocabulary(iou, kept):
    """Offsets of label * image size (torchvision's trick) round these boxes by ~0.1 px and keep both at 0.505."""
    k, side = 5000, 1344.0
    w = 10.0 * (1 - iou) / (1 + iou)  # two 10x10 boxes shifted by w along x have IoU (10 - w) / (10 + w)
    one = [[side - 20, side - 20, side - 10, side - 10], [side - 20 + w, side - 20, side - 10 + w, side - 10],
           [0, 0, side, side]]
    boxes = torch.tensor([one, one])
    logits = torch.full((2, 3, k), -100.0)
    logits[:, :2, k - 1] = 10.0
    logits[0, 2, :1000] = 10.0  # image 0: many classes present on the big box, so this class is ranked late
    _, _, labels = detections(logits, torch.tensor([[3.0, 2.0, 1.0]] * 2), boxes, score_threshold=0.001,
                              nms_iou=0.5, max_detections=100, pre_nms_topk=3000)
    assert [int((labels[i] == k - 1).sum()) for i in range(2)] == [kept, kept]


def test_class_probabilities_have_a_background_column_and_prior():
    logits = torch.tensor([[math.log(2.0), 0.0]])
    torch.testing.assert_close(class_probabilities(logits), torch.tensor([[0.5, 0.25]]))
    torch.testing.assert_close(class_probabilities(logits, torch.tensor([1.0, 8.0])), torch.tensor([[0.5, 2.0]]))


def test_hand_made_example_threshold_and_clipping():
    ln2 = math.log(2.0)
    logits = torch.tensor([[[ln2, 0.0], [0.0, ln2], [5.0, 5.0], [ln2, 0.0]]])
    objectness = torch.tensor([[100.0, 100.0, -100.0, 100.0]])
    # Image 100 px high, 200 px wide. Boxes 0 and 1 overlap (IoU 0.9); box 2 is below threshold;
    # box 3 sticks out of the image on the right and gets clipped.
    cxcywh = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.95, 0.5, 0.2, 0.2]]])
    boxes = boxes_to_pixels(cxcywh, torch.tensor([[100, 200]]))
    b, s, lab = detections(logits, objectness, boxes, score_threshold=0.001, nms_iou=0.5, max_detections=10,
                           pre_nms_topk=3000)
    got = [(tuple(x.round().tolist()), int(y), round(float(z), 4)) for x, y, z in zip(b[0], lab[0], s[0]) if y >= 0]
    assert got == [
        ((80.0, 40.0, 120.0, 60.0), 0, 0.5),     # box 0, class 0; box 1's class 0 (0.25) suppressed
        ((82.0, 40.0, 122.0, 60.0), 1, 0.5),     # box 1, class 1; box 0's class 1 (0.25) suppressed
        ((170.0, 40.0, 200.0, 60.0), 0, 0.5),    # box 3 (no overlap with 0/1 above 0.5), clipped at x = 200
        ((170.0, 40.0, 200.0, 60.0), 1, 0.25),
    ]
