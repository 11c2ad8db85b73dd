import pytest
import scipy.optimize
import torch
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from cora.modeling.losses import SetCriterion, average_num_boxes
from cora.modeling.matcher import PerClassHungarianMatcher, focal_objectness_cost
from cora.modeling.scoring import cxcywh_to_xyxy


def random_boxes(n, g):
    cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
    return torch.cat([cxcy, wh], 1)


def make_batch(b=3, q=12, k=4, sizes=(5, 0, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    outputs = {"boxes": random_boxes(b * q, g).view(b, q, 4), "objectness": torch.randn(b, q, generator=g),
               "classes": torch.randint(0, k, (b, q), generator=g)}
    targets = [{"boxes_cxcywh": random_boxes(n, g), "labels": torch.randint(0, k, (n,), generator=g)} for n in sizes]
    return outputs, targets


def brute_force(outputs, targets, matcher):
    """Per (image, class): scipy on the hand-built cost block."""
    result = []
    for i, t in enumerate(targets):
        boxes, obj, cls = outputs["boxes"][i], outputs["objectness"][i], outputs["classes"][i]
        p = obj.double().sigmoid()
        fc = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p ** 2 * -(1 - p + 1e-8).log()
        pairs = []
        for c in set(t["labels"].tolist()):
            qs = (cls == c).nonzero().squeeze(1)
            gs = (t["labels"] == c).nonzero().squeeze(1)
            if len(qs) == 0:
                continue
            l1 = (boxes[qs].double()[:, None] - t["boxes_cxcywh"][gs].double()[None]).abs().sum(-1)
            giou = generalized_box_iou(cxcywh_to_xyxy(boxes[qs].double()), cxcywh_to_xyxy(t["boxes_cxcywh"][gs].double()))
            cost = 2 * fc[qs][:, None] + 5 * l1 - 2 * giou
            r, c_ = scipy.optimize.linear_sum_assignment(cost.numpy())
            pairs += [(int(qs[a]), int(gs[b_]), float(cost[a, b_])) for a, b_ in zip(r, c_)]
        result.append(sorted(pairs))
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matcher_equals_brute_force(seed):
    outputs, targets = make_batch(seed=seed)
    matcher = PerClassHungarianMatcher()
    got = matcher(outputs, targets)
    want = brute_force(outputs, targets, matcher)
    for i, ((qi, gi), ref) in enumerate(zip(got, want)):
        assert qi.dtype == gi.dtype == torch.int64
        assert len(qi) == len(ref)
        assert torch.equal(qi, qi.sort().values)
        cost = matcher.cost_matrix(outputs["boxes"][i], outputs["objectness"][i], targets[i]["boxes_cxcywh"])
        total = float(cost[qi, gi].double().sum()) if len(qi) else 0.0
        assert total == pytest.approx(sum(c for *_, c in ref), abs=1e-4)
        assert [(a, b) for a, b, _ in ref] == sorted(zip(qi.tolist(), gi.tolist()))


def test_matches_never_cross_classes():
    outputs, targets = make_batch(b=2, q=30, k=3, sizes=(10, 20), seed=5)
    for i, (qi, gi) in enumerate(PerClassHungarianMatcher()(outputs, targets)):
        assert torch.equal(outputs["classes"][i][qi], targets[i]["labels"][gi])
        assert len(set(qi.tolist())) == len(qi) and len(set(gi.tolist())) == len(gi)
        # every class gets min(#queries, #gts) pairs
        expect = sum(min(int((outputs["classes"][i] == c).sum()), int((targets[i]["labels"] == c).sum())) for c in range(3))
        assert len(qi) == expect


def test_matcher_empty_targets():
    outputs, targets = make_batch(b=2, sizes=(0, 0))
    got = PerClassHungarianMatcher()(outputs, targets)
    assert [len(q) for q, _ in got] == [0, 0]
    assert all(q.dtype == torch.int64 and g.dtype == torch.int64 for q, g in got)


def test_focal_cost_values():
    x = torch.tensor([-3.0, 0.0, 4.0])
    c = focal_objectness_cost(x)
    p = x.sigmoid()
    ref = 0.25 * (1 - p) ** 2 * -p.log() - 0.75 * p ** 2 * -(1 - p).log()
    torch.testing.assert_close(c, ref, atol=1e-6, rtol=1e-5)


def test_criterion_against_torchvision():
    outputs, targets = make_batch(seed=3)
    layers = 2
    g = torch.Generator().manual_seed(9)
    outputs["boxes"] = torch.stack([outputs["boxes"], random_boxes(36, g).view(3, 12, 4)])
    outputs["objectness"] = torch.stack([outputs["objectness"], torch.randn(3, 12, generator=g)])
    crit = SetCriterion()
    losses = crit(outputs, targets)
    assert set(losses) == {f"loss_{n}_d{i}" for n in ("objectness", "bbox", "giou") for i in range(layers)}
    num_boxes = 14.0
    for i in range(layers):
        idx = crit.matcher({"boxes": outputs["boxes"][i], "objectness": outputs["objectness"][i],
                            "classes": outputs["classes"]}, targets)
        tgt = torch.zeros(3, 12)
        l1, giou = 0.0, 0.0
        for b, (q, j) in enumerate(idx):
            tgt[b, q] = 1
            src, ref = outputs["boxes"][i, b, q], targets[b]["boxes_cxcywh"][j]
            l1 += float((src - ref).abs().sum())
            giou += float((1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(ref)))).sum())
        focal = sigmoid_focal_loss(outputs["objectness"][i], tgt, alpha=0.25, gamma=2, reduction="sum") / num_boxes
        torch.testing.assert_close(losses[f"loss_objectness_d{i}"], focal)
        assert float(losses[f"loss_bbox_d{i}"]) == pytest.approx(l1 / num_boxes, rel=1e-5)
        assert float(losses[f"loss_giou_d{i}"]) == pytest.approx(giou / num_boxes, rel=1e-5)
    total = crit.total(losses)
    want = sum({"objectness": 2, "bbox": 5, "giou": 2}[k.split("_")[1]] * v for k, v in losses.items())
    torch.testing.assert_close(total, want)


def test_criterion_backward_and_empty():
    outputs, targets = make_batch(sizes=(0, 0, 0))
    outputs = {k: (v[None].clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in outputs.items()}
    losses = SetCriterion()(outputs, targets)
    assert losses["loss_bbox_d0"].item() == 0.0
    SetCriterion().total(losses).backward()
    assert outputs["objectness"].grad is not None
    assert average_num_boxes(targets, torch.device("cpu")) == 1.0  # clamped


def test_matcher_one_solver_call(monkeypatch):
    import cora.modeling.matcher as m
    calls = []
    real = m.per_class_blocks
    monkeypatch.setattr(m, "per_class_blocks", lambda *a: calls.append(1) or real(*a))
    outputs, targets = make_batch(b=4, sizes=(3, 4, 0, 7))
    m.PerClassHungarianMatcher()(outputs, targets)
    assert len(calls) == 1
