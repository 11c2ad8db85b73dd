"""Repeat-factor sampling (LVIS paper / detectron2's RepeatFactorTrainingSampler) and the epoch order."""

import json
import math

import pytest
import torch

from cora.data.coco import CocoDetection, build_dataset
from cora.data.sampling import appearance_keys, epoch_indices, repeat_factors
from cora.data.synthetic import write_synthetic


def hand_json(path):
    """Five images (no files needed: repeat factors never read them). Categories 1..4:
    A: 1, 1, 2   B: 1   C: 1, 3   D: 3   E: only a crowd box of 4 (skipped: E has no annotation)."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 100, "width": 100} for i in range(1, 6)]
    boxes = [(1, 1), (1, 1), (1, 2), (2, 1), (3, 1), (3, 3), (4, 3), (5, 4)]
    anns = [{"id": k, "image_id": img, "category_id": cat, "bbox": [10, 10, 20, 20], "area": 400,
             "iscrowd": int(img == 5)} for k, (img, cat) in enumerate(boxes, 1)]
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 5)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_repeat_factors_by_hand(tmp_path):
    ann = hand_json(tmp_path / "hand.json")
    ds = CocoDetection(ann, tmp_path)
    t = 0.8
    # f_1 = 3/5 (A, B, C: A's two instances count once), f_2 = 1/5, f_3 = 2/5; r_c = max(1, sqrt(t / f_c)).
    r1, r2, r3 = math.sqrt(t / 0.6), math.sqrt(t / 0.2), math.sqrt(t / 0.4)
    want = [max(r1, r2), r1, max(r1, r3), r3, 1.0]
    got = repeat_factors(ds, t)
    assert got.dtype == torch.float64 and got.shape == (5,)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    # Frequencies are over the dataset's images: without the empty image E there are four.
    kept = CocoDetection(ann, tmp_path, drop_empty=True)
    r1, r2, r3 = math.sqrt(t / 0.75), math.sqrt(t / 0.25), math.sqrt(t / 0.5)
    assert repeat_factors(kept, t).tolist() == pytest.approx([max(r1, r2), r1, max(r1, r3), r3], rel=1e-12)
    # A threshold below every frequency repeats nothing.
    assert repeat_factors(ds, 0.1).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(ds, 0.0)


def test_repeat_factors_match_the_items_labels(tmp_path):
    """On the synthetic shapes: against detectron2's loop, written over the labels dataset[i] gives."""
    write_synthetic(tmp_path, num_images=12, seed=3, size=(32, 32), val_fraction=0.1)
    ds = build_dataset(tmp_path / "instances_train.json", tmp_path, train=True, split=tmp_path / "split.json",
                       transforms=lambda image, target: (image, target))
    t = 0.9
    per_image = [set(ds[i][1]["labels"].tolist()) for i in range(len(ds))]
    freq = {c: sum(c in s for s in per_image) / len(ds) for c in set().union(*per_image)}
    rep = {c: max(1.0, math.sqrt(t / f)) for c, f in freq.items()}
    want = [max((rep[c] for c in s), default=1.0) for s in per_image]
    got = repeat_factors(ds, t)
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    assert max(want) > 1.0 and min(want) < max(want)  # the threshold makes some, not all, images repeat


@pytest.mark.parametrize("n,seed,epoch", [(0, 0, 0), (1, 3, 2), (17, 0, 0), (17, 0, 1), (100, 5, 34)])
def test_plain_order_is_the_old_randperm(n, seed, epoch):
    old = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    got = epoch_indices(n, seed, epoch)
    assert got.dtype == torch.int64 and torch.equal(got, old)


def test_repeated_order_counts_and_determinism():
    factors = torch.tensor([1.0, 1.5, 2.25, 3.7, 0.4, 1.0, 2.0], dtype=torch.float64)
    n, epochs = len(factors), 1500
    orders = [epoch_indices(n, 7, epoch, factors) for epoch in range(epochs)]
    assert all(o.dtype == torch.int64 for o in orders)
    counts = torch.stack([torch.bincount(o, minlength=n) for o in orders]).double()  # [epochs, n]
    # Stochastic rounding: floor(r_i) or floor(r_i) + 1 appearances, exactly r_i when it is whole.
    assert bool(((counts == factors.floor()) | (counts == factors.floor() + 1)).all())
    frac = factors - factors.floor()
    sigma = (frac * (1 - frac) / epochs).sqrt()
    assert bool(((counts.mean(0) - factors).abs() <= 5 * sigma + 1e-12).all()), counts.mean(0)
    assert not any(bool((o[1:] >= o[:-1]).all()) for o in orders)  # shuffled, not grouped by item
    assert torch.equal(epoch_indices(n, 7, 11, factors), epoch_indices(n, 7, 11, factors))
    assert not torch.equal(epoch_indices(n, 7, 11, factors), epoch_indices(n, 7, 12, factors))
    assert not torch.equal(epoch_indices(n, 7, 11, factors), epoch_indices(n, 8, 11, factors))
    with pytest.raises(ValueError, match="factors"):
        epoch_indices(n + 1, 7, 0, factors)


def test_appearance_keys():
    order = torch.tensor([3, 1, 3, 0, 3, 1])
    assert appearance_keys(order, 4).tolist() == [3, 1, 3 + 4, 0, 3 + 8, 1 + 4]
    perm = epoch_indices(50, 0, 3)
    assert torch.equal(appearance_keys(perm, 50), perm)  # every item once: the keys are the indices
    order = epoch_indices(20, 1, 0, torch.full((20,), 2.5, dtype=torch.float64))
    keys = appearance_keys(order, 20)
    assert torch.equal(keys % 20, order) and len(set(keys.tolist())) == len(keys)
    assert appearance_keys(torch.zeros(0, dtype=torch.int64), 5).shape == (0,)
