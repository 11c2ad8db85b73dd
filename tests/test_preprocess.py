"""cora.preprocess: the resize rule, padding, letterbox and boxes back to original pixels (all paths use it)."""

import numpy as np
import pytest
import torch

from PIL import Image

from cora.preprocess import (check_class_prior, check_image_sizes, check_text_embeddings, letterbox, resized_size,
                             to_original)


@pytest.mark.parametrize("h, w, expected", [(300, 200, (192, 128)), (64, 500, (25, 192)), (333, 500, (128, 192)),
                                            (1, 1, (128, 128)), (480, 640, (128, 171))])
def test_resize_rule_rounds(h, w, expected):
    """Shorter side 128, longer <= 192, round(side * scale): e.g. 480 x 640 -> 128 x 170.67 -> 171 (DETR's int
    truncation would give 170)."""
    assert resized_size(h, w, 128, 192) == expected


def test_letterbox_pads_bottom_right_to_multiples_of_32_with_antialiased_pixels():
    images = [torch.rand(3, 300, 200), torch.rand(3, 64, 500)]
    batch, sizes, originals = letterbox(images, 128, 192)
    assert batch.shape == (2, 3, 192, 192) and sizes.tolist() == [[192, 128], [25, 192]]
    assert originals.tolist() == [[300, 200], [64, 500]] and (batch[0, :, :, 128:] == 0).all()
    # independent reference for the pixels: PIL's antialiased bilinear resize of the same image
    ref = Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize((128, 192), Image.BILINEAR)
    got = (batch[0, :, :192, :128].permute(1, 2, 0).numpy() * 255)
    assert np.abs(got - np.asarray(ref, np.float32)).mean() < 1.5


def test_numpy_batch_and_fixed_size():
    batch, sizes, originals = letterbox(np.random.rand(2, 3, 50, 100).astype(np.float32), 128, 192, fixed_size=(96, 128))
    assert batch.shape == (2, 3, 96, 128) and sizes.tolist() == [[64, 128]] * 2 and originals.tolist() == [[50, 100]] * 2
    assert (batch[:, :, 64:] == 0).all()  # padding at the bottom


def test_to_original_rescales_clips_and_drops_empty_slots():
    boxes = torch.tensor([[[10.0, 20.0, 64.0, 200.0], [0, 0, 0, 0]]])
    out = to_original(boxes, torch.tensor([[0.9, 0.0]]), torch.tensor([[3, -1]]), [[64, 128]], [[32, 64]])
    assert out[0]["boxes"].tolist() == [[5.0, 10.0, 32.0, 32.0]]
    assert out[0]["labels"].tolist() == [3] and out[0]["labels"].dtype == torch.int64


@pytest.mark.parametrize("images, match", [
    (np.zeros((3, 64, 64), np.float32), r"\[B, 3, H, W\]"),
    (np.zeros((1, 4, 64, 64), np.float32), r"\[B, 3, H, W\]"),
    (np.zeros((1, 3, 64, 64), np.uint8), "float in \\[0, 1\\], got torch.uint8"),
    ([torch.rand(64, 64)], r"images\[0\] must be \[3, H, W\]"),
    ([], "non-empty"),
    ("image.png", "non-empty list"),
    (np.full((1, 3, 8, 8), 200.0, np.float32), r"images\[0\] must be float RGB in \[0, 1\], got values in \[200, 200\] "
                                                r"\(divide 0..255 images by 255\)"),
    ([torch.rand(3, 8, 8), torch.rand(3, 8, 8) - 0.5], r"images\[1\] must be float RGB in \[0, 1\], got values in \[-0"),
    ([torch.full((3, 8, 8), float("nan"))], r"images\[0\] must be float RGB in \[0, 1\], got values in \[nan, nan\]$"),
    ([torch.tensor([0.0, 1.0, float("inf")]).repeat(3, 3, 1)], r"got values in \[0, inf\]$"),
])
def test_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        letterbox(images, 128, 192)


def test_text_and_prior_checks():
    with pytest.raises(ValueError, match=r"\[K, 64\] with K >= 1, got shape \[0, 64\]"):
        check_text_embeddings(np.zeros((0, 64), np.float32), 64)
    with pytest.raises(ValueError, match=r"\[K, 64\] with K >= 1, got shape \[3, 32\]"):
        check_text_embeddings(torch.zeros(3, 32), 64)
    with pytest.raises(ValueError, match="floating point"):
        check_text_embeddings(torch.zeros(3, 64, dtype=torch.int64), 64)
    with pytest.raises(ValueError, match=r"class_prior must be a float \[K\] = \[3\]"):
        check_class_prior(np.ones(4, np.float32), 3)
    assert check_class_prior(None, 2) is None  # all ones


def test_images_in_range_pass_and_padding_stays_zero():
    """The negative control of the range check: 0 and 1 exactly are valid pixels."""
    batch, _, _ = letterbox([torch.tensor([0.0, 1.0]).repeat(3, 4, 2)], 8, 8)
    assert batch.min() == 0 and batch.max() == 1


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([1.0, float("nan"), 1.0]), r"class_prior must hold finite weights >= 0, got values in \[nan"),
    (np.array([1.0, np.inf, 1.0], np.float32), r"finite weights >= 0, got values in \[1.0, inf\]"),
    (torch.tensor([1.0, -0.5, 1.0]), r"finite weights >= 0, got values in \[-0.5, 1.0\]"),
])
def test_non_finite_or_negative_class_prior(bad, match):
    with pytest.raises(ValueError, match=match):
        check_class_prior(bad, 3)
    assert check_class_prior(torch.tensor([0.0, 8.0, 1.0]), 3).tolist() == [0.0, 8.0, 1.0]  # 0 switches a class off


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_text_embeddings(value):
    t = torch.randn(4, 64)
    check_text_embeddings(t, 64)
    t[2, 5] = value
    with pytest.raises(ValueError, match=r"text_embeddings must be finite: 1 of 4 rows hold NaN or Inf"):
        check_text_embeddings(t.numpy(), 64)


@pytest.mark.parametrize("sizes, match", [
    ([[0, 32]], r"1 <= h <= 64 and 1 <= w <= 96 .*got \[\[0, 32\]\]"),
    ([[64, -1]], r"got \[\[64, -1\]\]"),
    ([[65, 96]], r"got \[\[65, 96\]\]"),
    ([[64.0, 96.0]], r"integer \[B, 2\] = \[1, 2\]"),
    ([[64, 96], [64, 96]], r"integer \[B, 2\] = \[1, 2\] of \(h, w\), got torch.int64 \[2, 2\]"),
])
def test_image_sizes(sizes, match):
    assert check_image_sizes(np.array([[64, 96]]), (1, 3, 64, 96)).tolist() == [[64, 96]]
    with pytest.raises(ValueError, match=match):
        check_image_sizes(torch.tensor(sizes), (1, 3, 64, 96))
