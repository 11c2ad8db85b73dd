"""The item order of a training epoch, optionally with LVIS repeat-factor sampling.

    factors = repeat_factors(train, threshold=0.001)            # Tensor[N] float64, >= 1
    order = epoch_indices(len(train), seed, epoch, factors)    # Tensor[M] int64, E[M] = factors.sum()
    order = epoch_indices(len(train), seed, epoch)             # a plain shuffle: Tensor[N], a permutation

Repeat-factor sampling (Gupta, Dollar, Girshick, "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", CVPR 2019; the rule of detectron2's `RepeatFactorTrainingSampler`): with f_c the fraction of
training images that contain category c and a threshold t,

    r_c = max(1, sqrt(t / f_c))          per category
    r_i = max over the categories of image i of r_c      (1 for an image without annotations)

and each epoch holds image i floor(r_i) + Bernoulli(r_i - floor(r_i)) times (stochastic rounding), shuffled.
Images of rare categories (f_c < t) are thus seen more often; CORA trains on LVIS with t = 0.001.
"""

from __future__ import annotations

import torch
from torch import Tensor


def repeat_factors(dataset, threshold: float) -> Tensor:
    """Per-item repeat factors r_i of `dataset` (see the module docstring), from its labels only.

    Args:
        dataset: N items with `image_labels(index) -> Tensor[n] int` (the labels of an item's annotations,
            read without loading the image: cora.data.coco.CocoDetection / LvisDetection). f_c counts the
            images with at least one annotation of c, whatever the number of its instances.
        threshold: t > 0.

    Returns:
        Tensor[N] float64, every value >= 1.
    """
    if not threshold > 0:
        raise ValueError(f"repeat_factors: threshold must be > 0, got {threshold}")
    if not hasattr(dataset, "image_labels"):
        raise TypeError(f"repeat_factors: the dataset ({type(dataset).__name__}) needs an image_labels(index) "
                        "method giving the labels of an item without loading it (as CocoDetection has)")
    num_items = len(dataset)
    per_item = [dataset.image_labels(i).to(torch.int64).reshape(-1) for i in range(num_items)]
    labels = torch.cat(per_item) if per_item else torch.zeros(0, dtype=torch.int64)
    item = torch.repeat_interleave(torch.arange(num_items), torch.tensor([len(v) for v in per_item], dtype=torch.int64))
    factors = torch.ones(num_items, dtype=torch.float64)
    if labels.numel() == 0:
        return factors
    # Distinct (item, category) pairs: an image counts once per category, however many instances it has.
    num_classes = int(labels.max()) + 1
    pairs = torch.unique(item * num_classes + labels)
    item, labels = torch.div(pairs, num_classes, rounding_mode="floor"), pairs % num_classes
    frequency = torch.bincount(labels, minlength=num_classes).to(torch.float64) / num_items       # f_c
    # Categories absent from every image get inf here; they index no pair, so it is never read.
    per_class = (threshold / frequency).sqrt().clamp(min=1.0)                                      # r_c
    # r_i = max(1, max_c r_c): the initial ones are the value of images without annotations.
    return factors.scatter_reduce_(0, item, per_class[labels], reduce="amax", include_self=True)


def epoch_indices(num_items: int, seed: int, epoch: int, factors: Tensor | None = None) -> Tensor:
    """The shuffled item order of one epoch, a function of (seed, epoch) only (a resumed run sees the same).

    Args:
        num_items: N.
        factors: None (every item once) or Tensor[N] float, finite and >= 0: the repeat factors r_i
            (`repeat_factors`); item i then appears floor(r_i) + Bernoulli(r_i - floor(r_i)) times.

    Returns:
        Tensor[M] int64 item indices. With factors=None, exactly
        `torch.randperm(N, generator=torch.Generator().manual_seed(seed * 7919 + epoch))` (the order
        training used before repeat factors existed, so that existing runs keep their data order).
    """
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)
    if factors is None:
        return torch.randperm(num_items, generator=generator)
    factors = torch.as_tensor(factors, dtype=torch.float64).cpu()
    if factors.shape != (num_items,):
        raise ValueError(f"epoch_indices: factors must be Tensor[{num_items}], got shape {list(factors.shape)}")
    if not bool(torch.isfinite(factors).all()) or bool((factors < 0).any()):
        raise ValueError("epoch_indices: factors must be finite and >= 0")
    whole = factors.floor()
    # Stochastic rounding (detectron2's _get_epoch_indices): E[count_i] = r_i.
    counts = whole + (torch.rand(num_items, generator=generator, dtype=torch.float64) < factors - whole)
    items = torch.repeat_interleave(torch.arange(num_items), counts.to(torch.int64))
    return items[torch.randperm(len(items), generator=generator)]


def appearance_keys(order: Tensor, num_items: int) -> Tensor:
    """Tensor[M] int64 item indices (an epoch's order) -> Tensor[M] int64 keys `index + k * num_items`, where
    k counts the earlier appearances of the same item in `order` (0 for its first).

    A key identifies one appearance of an item in an epoch: seeding an item's random transforms by its key
    rather than its index gives the repeats of an image within one epoch different augmentations (as
    detectron2's loader does), and keys equal indices where every item appears once (so seeds are unchanged
    for a plain shuffle). The item is `key % num_items`.
    """
    order = order.to(torch.int64)
    if order.numel() == 0:
        return order.clone()
    sorted_items, position = torch.sort(order, stable=True)  # stable: repeats stay in order of appearance
    _, counts = torch.unique_consecutive(sorted_items, return_counts=True)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(order), device=order.device) - torch.repeat_interleave(starts, counts)  # 0, 1, .. per item
    k = torch.empty_like(order)
    k[position] = rank
    return order + k * num_items
