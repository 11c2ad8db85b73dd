"""cora.runtime.preprocess: resize / pad as CORA.preprocess, boxes back to original pixels."""

import numpy as np
import pytest
import torch

from cora.config import get_preset
from cora.modeling.detector import CORA
from cora.runtime.preprocess import check_class_prior, check_text_embeddings, letterbox, to_original


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CORA.from_config(get_preset("tiny"), random_init=True).eval()


def test_letterbox_mirrors_cora_preprocess(tiny):
    images = [torch.rand(3, 300, 200), torch.rand(3, 64, 500)]
    batch, sizes, originals = letterbox(images, 128, 192)
    ref_batch, ref_sizes, ref_originals = tiny.preprocess(images)
    torch.testing.assert_close(batch, ref_batch)
    assert sizes == [tuple(s) for s in ref_sizes.tolist()] and originals == [tuple(s) for s in ref_originals.tolist()]


def test_numpy_batch_and_fixed_size():
    batch, sizes, originals = letterbox(np.random.rand(2, 3, 50, 100).astype(np.float32), 128, 192, fixed_size=(96, 128))
    assert batch.shape == (2, 3, 96, 128) and sizes == [(64, 128)] * 2 and originals == [(50, 100)] * 2
    assert (batch[:, :, 64:] == 0).all()  # padding at the bottom


def test_to_original_rescales_clips_and_drops_empty_slots():
    boxes = torch.tensor([[[10.0, 20.0, 64.0, 200.0], [0, 0, 0, 0]]])
    out = to_original(boxes, torch.tensor([[0.9, 0.0]]), torch.tensor([[3, -1]]), [(64, 128)], [(32, 64)])
    assert out[0]["boxes"].tolist() == [[5.0, 10.0, 32.0, 32.0]]
    assert out[0]["labels"].tolist() == [3] and out[0]["labels"].dtype == torch.int64


@pytest.mark.parametrize("images, match", [
    (np.zeros((3, 64, 64), np.float32), r"\[B, 3, H, W\]"),
    (np.zeros((1, 4, 64, 64), np.float32), r"\[B, 3, H, W\]"),
    (np.zeros((1, 3, 64, 64), np.uint8), "float in \\[0, 1\\], got torch.uint8"),
    ([torch.rand(64, 64)], r"images\[0\] must be \[3, H, W\]"),
    ([], "non-empty"),
    ("image.png", "non-empty list"),
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
    assert check_class_prior(None, 2).tolist() == [1.0, 1.0]
