import math

import pytest
import torch

from cora.modeling.position_encoding import anchor_sine_embedding, sine_position_embedding


def _sine_feature(value: float, i: int, n: int, temperature: float) -> float:
    angle = value / temperature ** (2 * (i // 2) / n)
    return math.sin(angle) if i % 2 == 0 else math.cos(angle)


def _brute_force_map_embedding(mask: torch.Tensor, n: int, temperature: float) -> torch.Tensor:
    """Loop over every cell: count the valid cells above/left of it (inclusive) and of its column/row."""
    b_, h, w = mask.shape
    out = torch.zeros(b_, 2 * n, h, w, dtype=torch.float64)
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                y = sum(not mask[b, r, j] for r in range(i + 1)) - 0.5
                x = sum(not mask[b, i, c] for c in range(j + 1)) - 0.5
                y_total = sum(not mask[b, r, j] for r in range(h))
                x_total = sum(not mask[b, i, c] for c in range(w))
                y = y / (y_total + 1e-6) * 2 * math.pi
                x = x / (x_total + 1e-6) * 2 * math.pi
                for k in range(n):
                    out[b, k, i, j] = _sine_feature(y, k, n, temperature)
                    out[b, n + k, i, j] = _sine_feature(x, k, n, temperature)
    return out


def test_map_embedding_matches_brute_force_loop():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 2:] = True
    got = sine_position_embedding(mask, num_pos_feats=8, temperature=20.0)
    assert got.shape == (2, 16, 4, 5) and got.dtype == torch.float32
    expected = _brute_force_map_embedding(mask, 8, 20.0)
    valid = ~mask[:, None].expand_as(got)
    torch.testing.assert_close(got.double()[valid], expected[valid], atol=1e-5, rtol=0)


def test_map_embedding_of_valid_cells_ignores_padding():
    alone = sine_position_embedding(torch.zeros(1, 3, 4, dtype=torch.bool), 16)
    mask = torch.ones(1, 6, 7, dtype=torch.bool)
    mask[0, :3, :4] = False
    padded = sine_position_embedding(mask, 16)
    torch.testing.assert_close(padded[..., :3, :4], alone, atol=1e-6, rtol=0)


def test_anchor_embedding_matches_loop_and_order():
    boxes = torch.rand(3, 2, 4, dtype=torch.float64)
    n = 6
    got = anchor_sine_embedding(boxes, num_pos_feats=n, temperature=10000.0)
    assert got.shape == (3, 2, 4 * n) and got.dtype == torch.float64
    for q in range(3):
        for b in range(2):
            cx, cy, w, h = boxes[q, b].tolist()
            for block, value in enumerate((cy, cx, w, h)):  # official order: y, x, w, h
                for k in range(n):
                    assert got[q, b, block * n + k].item() == pytest.approx(
                        _sine_feature(2 * math.pi * value, k, n, 10000.0), abs=1e-12)
    centres = anchor_sine_embedding(boxes[..., :2], num_pos_feats=n)
    torch.testing.assert_close(centres, got[..., : 2 * n])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mask must be a bool Tensor"):
        sine_position_embedding(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="num_pos_feats must be a positive even int"):
        sine_position_embedding(torch.zeros(1, 3, 4, dtype=torch.bool), num_pos_feats=7)
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[\.\.\., 4\]"):
        anchor_sine_embedding(torch.zeros(5, 3))
