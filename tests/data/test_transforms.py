"""Transforms keep boxes on the pixels they describe: filled rectangles of unique colours, transformed,
must still be tightly covered by their (transformed) boxes."""

import pytest
import torch

from cora.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    RandomSelect,
    RandomSizeCrop,
    Resize,
    crop,
    eval_transforms,
    resize,
    scaled_train_transforms,
    train_transforms,
    with_cxcywh,
)
from cora.preprocess import letterbox

COLOURS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
BOXES = torch.tensor([[4, 6, 30, 20], [40, 10, 52, 60], [70, 30, 99, 75], [10, 50, 30, 78], [0, 0, 3, 4]], dtype=torch.float)


def painted(h=80, w=100):
    """Image Tensor[3, h, w] with BOXES filled in COLOURS on black; labels = colour index."""
    image = torch.zeros(3, h, w)
    for (x1, y1, x2, y2), colour in zip(BOXES.long().tolist(), COLOURS):
        image[:, y1:y2, x1:x2] = colour[:, None, None]
    target = {"boxes": BOXES.clone(), "labels": torch.arange(len(BOXES)), "size": torch.tensor([h, w]), "image_id": 7}
    return image, target


def colour_box(image, label):
    """Tight xyxy box (pixel edges) of the pixels closest to COLOURS[label], or None."""
    close = (image - COLOURS[label][:, None, None]).abs().amax(0) < 0.5
    if not close.any():
        return None
    ys, xs = torch.nonzero(close, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)


def assert_aligned(image, target, tol):
    assert list(target["size"]) == list(image.shape[-2:])
    assert len(target["boxes"]) == len(target["labels"])
    for box, label in zip(target["boxes"], target["labels"].tolist()):
        found = colour_box(image, label)
        assert found is not None, f"box {box.tolist()} of colour {label} has no pixels"
        assert (found - box).abs().max() <= tol, (label, found.tolist(), box.tolist())
    for label in set(range(len(COLOURS))) - set(target["labels"].tolist()):  # dropped boxes left no trace
        found = colour_box(image, label)
        assert found is None or (found[2:] - found[:2]).prod() <= 2 * tol * max(image.shape[-2:]), label
    assert target["image_id"] == 7


def test_flip():
    image, target = painted()
    out, t = RandomHorizontalFlip(p=1.0)(image, target)
    assert_aligned(out, t, tol=0)
    assert torch.equal(RandomHorizontalFlip(p=0.0)(image, target)[0], image)


@pytest.mark.parametrize("size, max_size", [(160, None), (50, None), (123, 140), (800, 1333)])
def test_resize(size, max_size):
    image, target = painted()
    out, t = resize(image, target, size, max_size)
    h, w = out.shape[-2:]
    assert min(h, w) == size or max(h, w) <= max_size
    assert max_size is None or max(h, w) <= max_size
    assert_aligned(out, t, tol=1.0)


@pytest.mark.parametrize("h, w, size, max_size", [(80, 100, 96, 1333), (100, 80, 50, 60), (33, 333, 40, 200), (80, 100, 80, None)])
def test_resize_is_the_detectors(h, w, size, max_size):
    """The training / evaluation resize gives the pixels `CORA.detect` feeds the model (cora.preprocess):
    same size (round, not DETR's int truncation) and same values."""
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h + w))
    out, t = resize(image, {"boxes": BOXES.clone()}, size, max_size)
    batch, sizes, _ = letterbox([image], size, max_size if max_size is not None else 10**6)
    nh, nw = sizes[0].tolist()
    assert tuple(out.shape[-2:]) == (nh, nw) == tuple(t["size"].tolist())
    torch.testing.assert_close(out, batch[0, :, :nh, :nw], rtol=0, atol=0)
    torch.testing.assert_close(t["boxes"], BOXES * torch.tensor([nw / w, nh / h, nw / w, nh / h]))


@pytest.mark.parametrize("top, left, height, width", [(0, 0, 80, 100), (5, 35, 40, 40), (25, 60, 55, 40), (70, 0, 10, 30)])
def test_crop(top, left, height, width):
    image, target = painted()
    out, t = crop(image, target, top, left, height, width)
    assert out.shape[-2:] == (height, width)
    assert_aligned(out, t, tol=0)


def test_crop_drops_vanished_boxes():
    image, target = painted()
    _, t = crop(image, target, 15, 45, 30, 40)  # rows 15..45, columns 45..85: parts of green and blue only
    assert t["labels"].tolist() == [1, 2]
    assert t["boxes"].tolist() == [[0.0, 0.0, 7.0, 30.0], [25.0, 15.0, 40.0, 30.0]]


@pytest.mark.parametrize("seed", range(12))
def test_random_size_crop(seed):
    image, target = painted()
    out, t = RandomSizeCrop(20, 60, generator=torch.Generator().manual_seed(seed))(image, target)
    assert 20 <= out.shape[-2] <= 60 and 20 <= out.shape[-1] <= 60
    assert_aligned(out, t, tol=0)


@pytest.mark.parametrize("seed", range(8))
def test_train_recipe_keeps_boxes_aligned(seed):
    image, target = painted()
    transform = train_transforms(scales=(90, 100, 120), max_size=200, crop_resize=(80, 100), crop_size=(40, 70),
                                 generator=torch.Generator().manual_seed(seed))
    out, t = transform(image, target)
    assert_aligned(out, t, tol=2.0)
    assert min(out.shape[-2:]) in (90, 100, 120) or max(out.shape[-2:]) <= 200


def test_scaled_recipe():
    full, small = scaled_train_transforms(800, 1333), scaled_train_transforms(128, 192)
    assert full.transforms[1].first.sizes == list(range(480, 801, 32))
    assert small.transforms[1].first.sizes == [77, 82, 87, 92, 97, 102, 108, 113, 118, 123, 128]
    assert small.transforms[1].second.transforms[1].min_size == 61
    image, target = painted()
    out, t = scaled_train_transforms(64, 96, torch.Generator().manual_seed(1))(image, target)
    assert max(out.shape[-2:]) <= 96
    assert_aligned(out, t, tol=2.0)


def test_seeded_randomness():
    image, target = painted()

    def run(generator):
        return train_transforms(scales=(60, 90, 120), crop_resize=(80,), crop_size=(30, 60), generator=generator)(image, target)

    a, b = run(torch.Generator().manual_seed(3)), run(torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    outs = {tuple(run(torch.Generator().manual_seed(s))[0].shape) for s in range(10)}
    assert len(outs) > 1
    torch.manual_seed(5)
    c = run(None)
    torch.manual_seed(5)
    d = run(None)
    assert torch.equal(c[0], d[0])


def test_eval_transforms_and_resize_are_deterministic():
    image, target = painted()
    out, t = eval_transforms(min_size=160, max_size=300)(image, target)
    assert out.shape[-2:] == (160, 200) and t["size"].tolist() == [160, 200]
    assert torch.equal(t["boxes"], BOXES * 2)
    assert repr(Resize(800, 1333)) == "Resize(800, max_size=1333)"


def test_select_and_compose():
    image, target = painted()
    flip = RandomHorizontalFlip(1.0)
    out, _ = RandomSelect(flip, Compose([]), p=1.0)(image, target)
    assert torch.equal(out, image.flip(-1))
    out, _ = RandomSelect(flip, Compose([]), p=0.0)(image, target)
    assert torch.equal(out, image)


def test_with_cxcywh():
    t = with_cxcywh({"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "size": torch.tensor([80, 100])})
    assert torch.allclose(t["boxes_cxcywh"], torch.tensor([[0.2, 0.5, 0.2, 0.5]]))


def test_empty_targets():
    image = torch.zeros(3, 40, 50)
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "size": torch.tensor([40, 50])}
    out, t = train_transforms(scales=(32, 48), crop_resize=(40,), crop_size=(20, 30),
                              generator=torch.Generator().manual_seed(0))(image, target)
    assert out.dtype == torch.float32 and t["boxes"].shape == (0, 4) and list(t["size"]) == list(out.shape[-2:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive ints"):
        RandomResize([])
    with pytest.raises(ValueError, match="min_size <= max_size"):
        RandomSizeCrop(50, 20)
    with pytest.raises(ValueError, match="Tensor\\[C, H, W\\]"):
        resize(torch.zeros(10, 10), {"size": torch.tensor([10, 10])}, 5)
