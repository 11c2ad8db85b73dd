"""cora.export.parity: slot-by-slot comparison, ParityError, and the negative controls it must catch."""

import numpy as np
import pytest
import torch

from cora.export.parity import (
    REDUCED_TOLERANCES, TOLERANCES, ParityError, compare_detections, default_cases, parity_check,
)
from tests.export.exported import runtime_vocabulary


def dets(rows, m=5):
    """[(x1, y1, x2, y2, score, label)] -> padded (boxes [m, 4], scores [m], labels [m])."""
    boxes, scores, labels = np.zeros((m, 4), np.float32), np.zeros(m, np.float32), -np.ones(m, np.int64)
    for i, (*box, s, label) in enumerate(rows):
        boxes[i], scores[i], labels[i] = box, s, label
    return boxes, scores, labels


A, B = (0, 0, 10, 10, 0.5, 1), (40, 40, 50, 50, 0.5, 1)


def test_equal_detections_pair_in_place():
    m = compare_detections(dets([A, B]), dets([A, B]))
    assert (m["slots"], m["same"], m["ties"], m["unmatched"], m["box_diff"]) == (2, 2, 0, 0, 0.0)


def test_float32_order_counts_even_for_equal_scores():
    """Two tied detections in swapped slots: a box difference in fp32 (both sides break ties alike)."""
    m = compare_detections(dets([A, B]), dets([B, A]))
    assert m["same"] == 0 and m["box_diff"] == 40.0


def test_reduced_precision_pairs_a_tie_swap_only_where_the_boxes_overlap():
    near = (2, 0, 12, 10, 0.5, 1)  # IoU 0.67 with A: NMS kept the other of two near-equal boxes
    m = compare_detections(dets([A]), dets([near]), REDUCED_TOLERANCES, reduced_precision=True)
    assert (m["ties"], m["unmatched"], m["box_diff"]) == (1, 0, 2.0)
    m = compare_detections(dets([A, B]), dets([B, A]), REDUCED_TOLERANCES, reduced_precision=True)
    assert (m["ties"], m["unmatched"], m["box_diff"]) == (2, 0, 0.0), "the same boxes in another order pair up"
    m = compare_detections(dets([A]), dets([B]), REDUCED_TOLERANCES, reduced_precision=True)
    assert m["unmatched"] == 2, "equal label and score but a box elsewhere is no tie"


def crossing(g_score=101.00025, r_box=(31.8, 36.1, 91.5, 93.5)):
    """What ONNX Runtime and PyTorch gave for a random K = 1203 case (scores in SCORE_STEPs): G's score sits on
    the step 101, so ORT ranks it in key 101 and PyTorch in key 100; ORT's G then suppressed R (IoU 0.51)
    in NMS while PyTorch's R suppressed its G, and X1..X3 shift by one slot."""
    from cora.modeling.scoring import SCORE_STEP

    x1, x2, x3 = (4.5, 28.3, 69.8, 83.7), (57.4, 66.8, 81.4, 128.0), (5.1, 45.2, 118.1, 127.4)
    g = (29.3, 0.0, 84.2, 89.8)
    ref = dets([(*x1, 101.52 * SCORE_STEP, 7), (*x2, 101.32 * SCORE_STEP, 7), (*x3, 101.37 * SCORE_STEP, 7),
                (*r_box, 101.18 * SCORE_STEP, 7)])
    got = dets([(*g, g_score * SCORE_STEP, 7), (*x1, 101.52 * SCORE_STEP, 7), (*x2, 101.32 * SCORE_STEP, 7),
                (*x3, 101.37 * SCORE_STEP, 7)])
    return ref, got


def test_float32_accepts_a_score_crossing_a_step_and_nothing_else():
    m = compare_detections(*crossing())
    assert (m["same"], m["boundary"], m["unmatched"], m["box_diff"]) == (0, 4, 0, 0.0)
    # Slot by slot again (box differences) when G is not on a step or R is far from G (NMS cannot explain it).
    for m in (compare_detections(*crossing(g_score=101.3)), compare_detections(*crossing(r_box=(100, 100, 120, 120)))):
        assert m["boundary"] == 0 and m["box_diff"] > 10


def test_a_wrong_label_is_unmatched():
    m = compare_detections(dets([A]), dets([(0, 0, 10, 10, 0.5, 2)]))
    assert m["unmatched"] == 1


def halved(boxes, scores, labels):
    return boxes / 2, scores, labels


def swapped(boxes, scores, labels):
    return boxes[..., [1, 0, 3, 2]], scores, labels


def shifted(boxes, scores, labels):
    return boxes + 1.0, scores, labels


def relabelled(boxes, scores, labels):
    return boxes, scores, torch.where(labels >= 0, (labels + 1) % 7, labels)


class Altered(torch.nn.Module):
    """The exported module with its detections changed by `change`."""

    def __init__(self, module, change):
        super().__init__()
        self.inner, self.change = module, change

    def forward(self, *inputs):
        return self.change(*self.inner(*inputs))


@pytest.mark.slow
@pytest.mark.parametrize("reduced_precision", [False, True])
@pytest.mark.parametrize("change, output", [(halved, "boxes"), (swapped, "boxes"), (shifted, "boxes"),
                                            (relabelled, "labels")])
def test_negative_controls_fail(tmp_path_factory, change, output, reduced_precision):
    """Reference boxes halved, x and y swapped, shifted by 1 px, or labels rotated: the check fails, in both
    the float32 and the reduced-precision (tie-tolerant) mode, on the real export's default cases."""
    exported = runtime_vocabulary(tmp_path_factory)
    cases = default_cases(exported.meta, ks=(7,), batch=2)
    parity_check(exported.path, exported.module, cases, reduced_precision=reduced_precision)  # the control
    with pytest.raises(ParityError) as err:
        parity_check(exported.path, Altered(exported.module, change), cases, reduced_precision=reduced_precision)
    # in the tie-tolerant mode a moved box finds no partner: it shows as an unmatched slot
    expected = {output, "labels"} if reduced_precision else {output}
    assert expected & {f["output"] for f in err.value.failures}, str(err.value)


@pytest.mark.slow
def test_parity_error_collects_every_output(tmp_path_factory):
    exported = runtime_vocabulary(tmp_path_factory)
    cases = default_cases(exported.meta, ks=(7,), batch=2)[:1]

    def nudged(boxes, scores, labels):
        return boxes + 0.2 * (labels[..., None] >= 0), scores + 1e-3 * (labels >= 0), labels

    with pytest.raises(ParityError) as err:
        parity_check(exported.path, Altered(exported.module, nudged), cases)
    failures = {f["output"]: f for f in err.value.failures}
    assert set(failures) == {"boxes", "scores"}
    assert failures["boxes"]["tolerance"] == TOLERANCES["boxes"]
    assert failures["boxes"]["max_diff"] == pytest.approx(0.2, abs=1e-4)
    assert "boxes: max diff 0.2" in str(err.value) and "scores: max diff 0.001" in str(err.value)
