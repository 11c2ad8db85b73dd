"""Relaxed per-class matching (CORA on LVIS): a query may match a ground truth of a compatible class."""

import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

import cora.modeling.matcher as matcher_module
from cora.modeling.losses import SetCriterion
from cora.modeling.matcher import PerClassHungarianMatcher, similar_classes
from tests.modeling.test_matcher_losses import make_batch, random_boxes


def image_cost(matcher, outputs, targets, i):
    """Tensor[Q, G_i] float64: image i's matching costs (the matcher's own formula, tested elsewhere)."""
    return matcher.cost_matrix(outputs["boxes"][i], outputs["objectness"][i], targets[i]["boxes_cxcywh"]).double()


def random_compatible(k, g):
    c = torch.rand(k, k, generator=g) < 0.35
    return c | torch.eye(k, dtype=torch.bool)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_compatible_gives_the_per_class_matching(seed):
    outputs, targets = make_batch(seed=seed)
    matcher = PerClassHungarianMatcher()
    strict = matcher(outputs, targets)
    relaxed = matcher(outputs, targets, compatible=torch.eye(4, dtype=torch.bool))
    for i, ((qs, gs), (qr, gr)) in enumerate(zip(strict, relaxed)):
        cost = image_cost(matcher, outputs, targets, i)
        assert qr.dtype == gr.dtype == torch.int64 and torch.equal(qr, qr.sort().values)
        assert len(qr) == len(qs)
        assert torch.equal(outputs["classes"][i][qr], targets[i]["labels"][gr])
        assert float(cost[qr, gr].sum()) == pytest.approx(float(cost[qs, gs].sum()), abs=1e-6)


def test_against_scipy_with_a_large_cost_on_forbidden_pairs():
    g = torch.Generator().manual_seed(0)
    matcher = PerClassHungarianMatcher()
    big = 1e6  # > (cost range) * (pairs): scipy first minimises the number of forbidden pairs it must use
    checked_pairs = 0
    for trial in range(40):
        b, q, k = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 8, (), generator=g)), 4
        sizes = torch.randint(0, 8, (b,), generator=g).tolist()
        outputs = {"boxes": random_boxes(b * q, g).view(b, q, 4), "objectness": torch.randn(b, q, generator=g),
                   "classes": torch.randint(0, k, (b, q), generator=g)}
        targets = [{"boxes_cxcywh": random_boxes(n, g), "labels": torch.randint(0, k, (n,), generator=g)} for n in sizes]
        compatible = random_compatible(k, g)
        got = matcher(outputs, targets, compatible=compatible)
        assert len(got) == b
        for i, (qi, gi) in enumerate(got):
            cost = image_cost(matcher, outputs, targets, i)
            allowed = compatible[outputs["classes"][i][:, None], targets[i]["labels"][None, :]]
            r, c = scipy.optimize.linear_sum_assignment(torch.where(allowed, cost, big).numpy())
            r, c = torch.as_tensor(r), torch.as_tensor(c)
            keep = allowed[r, c]
            assert bool(allowed[qi, gi].all()), (trial, i)  # no forbidden pair
            assert len(set(qi.tolist())) == len(qi) and len(set(gi.tolist())) == len(gi)
            assert len(qi) == int(keep.sum()), (trial, i)  # as many pairs as the allowed pairs permit
            assert float(cost[qi, gi].sum()) == pytest.approx(float(cost[r[keep], c[keep]].sum()), abs=1e-6)
            checked_pairs += len(qi)
    assert checked_pairs > 100


def test_a_compatible_other_class_ground_truth_is_taken_when_cheaper():
    # Query 0 (class 0) sits exactly on ground truth 0 (class 1); ground truth 1 (class 0) is far away.
    # Query 1 (class 2) is compatible with nothing but itself, and there is no class-2 ground truth.
    near, far = torch.tensor([0.3, 0.3, 0.2, 0.2]), torch.tensor([0.8, 0.8, 0.1, 0.1])
    outputs = {"boxes": torch.stack([near, far])[None], "objectness": torch.zeros(1, 2),
               "classes": torch.tensor([[0, 2]])}
    targets = [{"boxes_cxcywh": torch.stack([near, far]), "labels": torch.tensor([1, 0])}]
    matcher = PerClassHungarianMatcher()
    compatible = torch.eye(3, dtype=torch.bool)
    (q, g), = matcher(outputs, targets, compatible=compatible)
    assert (q.tolist(), g.tolist()) == ([0], [1])  # its own class only
    compatible[0, 1] = True
    (q, g), = matcher(outputs, targets, compatible=compatible)
    assert (q.tolist(), g.tolist()) == ([0], [0])  # the cheaper compatible ground truth
    (q, g), = matcher(outputs, targets)
    assert (q.tolist(), g.tolist()) == ([0], [1])
    # Two class-0 queries, ground truths of classes 0 and 1: the relaxed matching covers both.
    outputs["classes"] = torch.tensor([[0, 0]])
    (q, g), = matcher(outputs, targets, compatible=compatible)
    assert sorted(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 1)]
    (q, g), = matcher(outputs, targets)
    assert len(q) == 1


def test_one_solver_call_and_empty_images(monkeypatch):
    calls = []
    real = matcher_module.batched_linear_assignment
    monkeypatch.setattr(matcher_module, "batched_linear_assignment", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(matcher_module, "per_class_blocks", None)  # the per-class path is not taken
    outputs, targets = make_batch(b=4, sizes=(3, 4, 0, 7))
    got = PerClassHungarianMatcher()(outputs, targets, compatible=torch.ones(4, 4, dtype=torch.bool))
    assert len(calls) == 1 and [len(q) for q, _ in got] == [3, 4, 0, 7]  # all compatible: every gt matched
    outputs, targets = make_batch(b=2, sizes=(0, 0))
    got = PerClassHungarianMatcher()(outputs, targets, compatible=torch.eye(4, dtype=torch.bool))
    assert [len(q) for q, _ in got] == [0, 0] and all(q.dtype == g.dtype == torch.int64 for q, g in got)


def test_bad_compatible_matrices():
    outputs, targets = make_batch()
    matcher = PerClassHungarianMatcher()
    no_self = torch.ones(4, 4, dtype=torch.bool)
    no_self[2, 2] = False
    with pytest.raises(ValueError, match=r"compatible.*diagonal.*\[2\]"):
        matcher(outputs, targets, compatible=no_self)
    with pytest.raises(ValueError, match="compatible"):
        matcher(outputs, targets, compatible=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="compatible is \\[3, 3\\]"):
        matcher(outputs, targets, compatible=torch.eye(3, dtype=torch.bool))  # classes reach 3
    with pytest.raises(TypeError, match="bool"):
        matcher(outputs, targets, compatible=torch.eye(4))


def test_similar_classes():
    e = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.0, 0.0]])  # cos(0, 1) = 0.8, cos(1, 2) = 0.6
    e[1] *= 5  # the scale does not matter
    got = similar_classes(e, 0.7)
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert got.dtype == torch.bool and torch.equal(got, want)  # a zero embedding is still its own class
    assert torch.equal(similar_classes(e, 0.8 + 1e-6), torch.eye(4, dtype=torch.bool))  # strictly greater
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 16, generator=g)
    ref = F.cosine_similarity(x[:, None], x[None, :], dim=-1) > 0.2
    ref.fill_diagonal_(True)
    assert torch.equal(similar_classes(x, 0.2), ref) and 12 < int(ref.sum()) < 144


def test_criterion_passes_compatible_to_every_layer():
    seen = []

    class Recording(PerClassHungarianMatcher):
        def forward(self, outputs, targets, compatible=None):
            seen.append(compatible)
            return super().forward(outputs, targets, compatible)

    outputs, targets = make_batch(seed=4)
    g = torch.Generator().manual_seed(2)
    outputs["boxes"] = torch.stack([outputs["boxes"], random_boxes(36, g).view(3, 12, 4)])
    outputs["objectness"] = torch.stack([outputs["objectness"], torch.randn(3, 12, generator=g)])
    crit = SetCriterion(matcher=Recording())
    compatible = torch.ones(4, 4, dtype=torch.bool)
    relaxed = crit(outputs, targets, compatible=compatible)
    assert len(seen) == 2 and all(c is compatible for c in seen)
    strict = crit(outputs, targets)
    assert seen[2:] == [None, None]
    for i in range(2):
        layer = {"boxes": outputs["boxes"][i], "objectness": outputs["objectness"][i], "classes": outputs["classes"]}
        idx = PerClassHungarianMatcher()(layer, targets, compatible)
        want = crit.loss_boxes(outputs["boxes"][i], targets, idx, 14.0)["loss_bbox"]
        torch.testing.assert_close(relaxed[f"loss_bbox_d{i}"], want)
        assert float(relaxed[f"loss_bbox_d{i}"]) != float(strict[f"loss_bbox_d{i}"])


def test_similar_classes_ignores_autocast():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 256, generator=g)
    u, v = F.normalize(x[0], dim=0), x[1] - (x[1] @ F.normalize(x[0], dim=0)) * F.normalize(x[0], dim=0)
    x[1] = 0.7005 * u + (1 - 0.7005 ** 2) ** 0.5 * F.normalize(v, dim=0)  # cosine 0.7005 with x[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 product would put it under 0.7
        got = similar_classes(x, 0.7)
    assert bool(got[0, 1]) and torch.equal(got, similar_classes(x, 0.7))
