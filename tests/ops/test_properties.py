"""Property-based tests (hypothesis) of the three compiled ops against their independent references on
random shapes and values, non-finite ones included:

- roi_align against torchvision.ops.roi_align (zeros for a box with a non-finite coordinate);
- prompted_attention_pool against open_clip's AttentionPool2d (NaN for a region with a non-finite value);
- batched_linear_assignment / linear_sum_assignment against scipy.optimize.linear_sum_assignment
  (+inf: forbidden pair, NaN / -inf: ValueError naming the problem).

Every test runs a fixed, derandomized set of examples (PROFILE), so the suite is reproducible and fast.
"""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from open_clip.modified_resnet import AttentionPool2d

from cora.ops import batched_linear_assignment, linear_sum_assignment, prompted_attention_pool, roi_align
from tests.conftest import cpu_and_cuda

PROFILE = settings(
    max_examples=100, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NON_FINITE = (math.nan, math.inf, -math.inf)
seeds = st.integers(0, 2**31 - 1)


# ---- roi_align ----


@st.composite
def roi_align_cases(draw):
    n, c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25, 1 / 16]))
    # Boxes up to 4 maps wide: adaptive grids beyond 16 samples per axis reach the kernels' bisection.
    extent = 4 * max(h, w) / scale
    coord = st.floats(-extent, extent, allow_nan=False, allow_infinity=False)
    rois = []
    for _ in range(draw(st.integers(0, 6))):
        row = [float(draw(st.integers(0, n - 1)))] + [draw(coord) for _ in range(4)]
        special = draw(st.sampled_from((None, None, None) + NON_FINITE))
        if special is not None:
            row[draw(st.integers(1, 4))] = special
        rois.append(row)
    return dict(
        shape=(n, c, h, w), rois=torch.tensor(rois, dtype=torch.float64).reshape(-1, 5), scale=scale,
        output_size=(draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2, 3, 20])), aligned=draw(st.booleans()),
        magnitude=draw(st.sampled_from([1e-3, 1.0, 1e3])), channels_last=draw(st.booleans()), seed=draw(seeds),
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(case=roi_align_cases(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_roi_align_matches_torchvision(device, case, dtype):
    g = torch.Generator().manual_seed(case["seed"])
    x = torch.randn(case["shape"], generator=g, dtype=torch.float64) * case["magnitude"]
    rois = case["rois"]
    args = (case["output_size"], case["scale"], case["sampling_ratio"], case["aligned"])
    readable = torch.isfinite(rois).all(1)
    if case["aligned"] and case["sampling_ratio"] <= 0:
        # An inverted box (x2 < x1 or y2 < y1) has no adaptive samples: zeros. torchvision gives zeros
        # or, inverted along one axis only, fails to allocate a negative-size vector.
        readable &= (rois[:, 3] >= rois[:, 1]) & (rois[:, 4] >= rois[:, 2])
    # torchvision in the same dtype: float32 box geometry rounds identically (the same formula).
    x_ref = x.to(dtype, copy=True).requires_grad_()
    expected = torch.zeros(len(rois), *case["shape"][1:2], *case["output_size"], dtype=dtype)
    expected[readable] = torchvision.ops.roi_align(x_ref, rois[readable].to(dtype), *args)

    x_dev = x.to(dtype=dtype, device=device, copy=True)
    if case["channels_last"]:
        x_dev = x_dev.contiguous(memory_format=torch.channels_last)
    x_dev.requires_grad_()
    out = roi_align(x_dev, rois.to(dtype=dtype, device=device), *args)
    tol = (1e-10 if dtype == torch.float64 else 1e-5) * case["magnitude"]
    torch.testing.assert_close(out.cpu(), expected.detach(), rtol=0, atol=tol)

    grad = torch.randn(out.shape, generator=g, dtype=dtype)
    out.backward(grad.to(device))
    if readable.any():
        expected[readable].backward(grad[readable])
        torch.testing.assert_close(x_dev.grad.cpu(), x_ref.grad, rtol=0, atol=tol * 10)
    else:
        assert torch.equal(x_dev.grad.cpu(), torch.zeros_like(x_ref))


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(
    spatial_scale=st.sampled_from(NON_FINITE) | st.floats(max_value=0.0, allow_nan=False),
    sampling_ratio=st.integers(-(2**62), 2**62),
)
def test_roi_align_refuses_bad_spatial_scale_and_sampling_ratio(device, spatial_scale, sampling_ratio):
    x, rois = torch.randn(1, 2, 5, 5, device=device), torch.tensor([[0.0, 1, 1, 3, 3]], device=device)
    with pytest.raises(ValueError, match="spatial_scale must be a finite number > 0"):
        roi_align(x, rois, 2, spatial_scale, min(sampling_ratio, 64))
    if sampling_ratio > 64:
        with pytest.raises(ValueError, match=f"sampling_ratio must be <= 64 .*, got {sampling_ratio}"):
            roi_align(x, rois, 2, 0.5, sampling_ratio)
    else:  # negative control: the same call with a valid ratio works
        assert torch.isfinite(roi_align(x, rois, 2, 0.5, sampling_ratio)).all()


# ---- prompted attention pooling ----


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(
    s=st.integers(1, 4), heads=st.integers(1, 3), head_dim=st.integers(1, 4), out_dim=st.integers(1, 6),
    n=st.integers(0, 5), with_prompt=st.booleans(), magnitude=st.sampled_from([0.1, 1.0, 10.0]),
    bad_value=st.sampled_from((None,) + NON_FINITE), dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=seeds,
)
def test_attention_pool_matches_open_clip(device, s, heads, head_dim, out_dim, n, with_prompt, magnitude,
                                          bad_value, dtype, seed):
    c = heads * head_dim
    torch.manual_seed(seed)
    pool = AttentionPool2d(s, c, heads, out_dim).double().eval()
    x = torch.randn(n, c, s, s, dtype=torch.float64) * magnitude
    prompt = torch.randn(s, s, c, dtype=torch.float64) if with_prompt else None
    if bad_value is not None and n > 0:  # one non-finite value in the last region: NaN there only
        x[-1, seed % c, seed % s, 0] = bad_value
    with torch.no_grad():
        expected = pool(x if prompt is None else x + prompt.permute(2, 0, 1)[None])

    params = dict(pool.named_parameters())
    names = ("positional_embedding", "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
             "v_proj.weight", "v_proj.bias", "c_proj.weight", "c_proj.bias")
    args = [params[k].detach().to(dtype=dtype, device=device) for k in names]
    got = prompted_attention_pool(
        x.to(dtype=dtype, device=device), *args, heads,
        prompt=None if prompt is None else prompt.to(dtype=dtype, device=device),
    ).double().cpu()
    assert got.shape == (n, out_dim)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    scale = expected.nan_to_num(0.0).abs().max().item() if n else 0.0
    torch.testing.assert_close(got, expected, rtol=0, atol=tol * max(scale, 1.0), equal_nan=True)


# ---- linear assignment ----


BIG = 1e7  # stands in for +inf in the scipy reference: larger than twice any total of finite costs here


def scipy_reference(cost: np.ndarray, maximize: bool) -> tuple[int, float]:
    """(number of pairs, total cost) of the maximum-size, then minimum-cost (maximum with maximize)
    matching that avoids forbidden pairs (+inf, or -inf with maximize); scipy itself refuses
    matrices whose rows cannot all be assigned, so forbidden pairs cost BIG there and are dropped."""
    if cost.size == 0:
        return 0, 0.0
    sign = -1.0 if maximize else 1.0
    c = sign * cost
    forbidden = np.isposinf(c)
    rows, cols = scipy.optimize.linear_sum_assignment(np.where(forbidden, BIG, c))
    keep = ~forbidden[rows, cols]
    return int(keep.sum()), float(cost[rows[keep], cols[keep]].sum())


@st.composite
def assignment_problems(draw, forbidden=math.inf):
    problems = []
    for _ in range(draw(st.integers(0, 5))):
        r, c = draw(st.integers(0, 7)), draw(st.integers(0, 7))
        g = np.random.default_rng(draw(seeds))
        # Integer costs tie often: scipy's tie-breaking is part of the promise.
        cost = g.integers(-20, 20, (r, c)).astype(np.float64) if draw(st.booleans()) else g.uniform(-100, 100, (r, c))
        cost[g.random((r, c)) < draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))] = forbidden
        problems.append(cost)
    return problems


def check_matching(rows, cols, cost, maximize):
    """A valid matching of scipy's size and total cost and, on a matrix without forbidden pairs, scipy's pairs
    index for index (ties included: the README's promise)."""
    rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols)  # a matching
    assert (np.diff(rows) > 0).all()  # sorted by row
    assert np.isfinite(cost[rows, cols]).all()  # no forbidden pair
    count, total = scipy_reference(cost, maximize)
    assert len(rows) == count
    assert math.isclose(float(cost[rows, cols].sum()), total, rel_tol=1e-9, abs_tol=1e-9)
    if np.isfinite(cost).all() and cost.size:
        expected_rows, expected_cols = scipy.optimize.linear_sum_assignment(cost, maximize=maximize)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(problems=assignment_problems(), dtype=st.sampled_from([torch.float64, torch.float32]), gap=st.integers(0, 3))
def test_batched_linear_assignment_matches_scipy(device, problems, dtype, gap):
    # Problems packed with `gap` NaN elements between them: elements outside every problem are ignored.
    parts, offsets, at = [], [], 0
    for p in problems:
        parts += [np.full(gap, np.nan), p.ravel()]
        offsets.append(at + gap)
        at += gap + p.size
    packed = torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0)).to(dtype=dtype, device=device)
    shapes = torch.tensor([p.shape for p in problems], dtype=torch.int64).reshape(-1, 2)
    row_idx, col_idx, problem_idx = batched_linear_assignment(
        packed, shapes[:, 0].contiguous(), shapes[:, 1].contiguous(), torch.tensor(offsets, dtype=torch.int64)
    )
    problem_idx = problem_idx.cpu()
    assert (problem_idx.diff() >= 0).all()  # sorted by problem
    for p, cost in enumerate(problems):
        cost = cost.astype(np.float32).astype(np.float64) if dtype == torch.float32 else cost
        mine = problem_idx == p
        check_matching(row_idx.cpu()[mine], col_idx.cpu()[mine], cost, False)


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(data=st.data(), maximize=st.booleans())
def test_linear_sum_assignment_matches_scipy(device, data, maximize):
    problems = data.draw(assignment_problems(forbidden=-math.inf if maximize else math.inf))
    result = linear_sum_assignment([torch.from_numpy(p).to(device) for p in problems], maximize=maximize)
    assert len(result) == len(problems)
    for (rows, cols), cost in zip(result, problems):
        check_matching(rows, cols, cost, maximize)


@pytest.mark.parametrize("device", cpu_and_cuda())
@PROFILE
@given(data=st.data(), bad=st.sampled_from([math.nan, -math.inf]))
def test_linear_assignment_refuses_nan_and_minus_inf_naming_the_problem(device, data, bad):
    problems = [p for p in data.draw(assignment_problems()) if p.size]
    if not problems:  # negative control: nothing to poison, the call works
        assert linear_sum_assignment([torch.zeros(0, 3, device=device)]) is not None
        return
    p = data.draw(st.integers(0, len(problems) - 1))
    problems[p].flat[data.draw(st.integers(0, problems[p].size - 1))] = bad
    with pytest.raises(ValueError, match=rf"costs\[{p}\] contains NaN"):
        linear_sum_assignment([torch.from_numpy(c).to(device) for c in problems])
    packed = torch.from_numpy(np.concatenate([c.ravel() for c in problems])).to(device)
    sizes = torch.tensor([c.size for c in problems])
    shapes = torch.tensor([c.shape for c in problems], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    with pytest.raises(ValueError, match=rf"problem {p}\b"):
        batched_linear_assignment(packed, shapes[:, 0].contiguous(), shapes[:, 1].contiguous(), offsets)
