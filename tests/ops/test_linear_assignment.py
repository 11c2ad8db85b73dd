"""cora.ops.linear_assignment against scipy.optimize.linear_sum_assignment and brute force."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

from cora.ops import batched_linear_assignment, linear_sum_assignment, per_class_blocks
from tests.conftest import TOLERANCES, cpu_and_cuda

INF = math.inf


def random_problems(num, seed, integer=False, max_side=12):
    """`num` matrices of every kind of shape: 0 x n, n x 0, 1 x n, n x 1, square, tall, wide.
    Integer costs in 0..3 have many ties."""
    rng = np.random.default_rng(seed)
    shapes = [(0, 3), (4, 0), (0, 0), (1, 1), (1, 7), (7, 1)]
    while len(shapes) < num:
        r, c = (int(v) for v in rng.integers(1, max_side + 1, 2))
        shapes.append((r, c))
    mats = []
    for r, c in shapes[:num]:
        m = rng.integers(0, 4, (r, c)).astype(np.float64) if integer else rng.normal(size=(r, c)) * 10
        mats.append(m)
    return mats


def total(matrix, rows, cols):
    return float(np.asarray(matrix, dtype=np.float64)[np.asarray(rows), np.asarray(cols)].sum())


def assert_partial_permutation(rows, cols, shape, size):
    rows, cols = np.asarray(rows), np.asarray(cols)
    assert rows.shape == cols.shape == (size,)
    assert np.all(np.diff(rows) > 0), "row indices must be strictly increasing"
    assert len(set(cols.tolist())) == size, "a column is matched twice"
    if size:
        assert rows.min() >= 0 and rows.max() < shape[0] and cols.min() >= 0 and cols.max() < shape[1]


def assert_same_cost(actual, expected, scale):
    tol = TOLERANCES[torch.float64] * max(1.0, scale)
    assert abs(actual - expected) <= tol, f"total cost {actual!r}, scipy {expected!r}"


def brute_force(matrix, maximize=False):
    """Maximum number of allowed (finite) pairs, then the best total cost among those: (size, cost)."""
    m = np.asarray(matrix, dtype=np.float64)
    transposed = m.shape[0] > m.shape[1]
    if transposed:
        m = m.T
    r, c = m.shape
    best = (0, 0.0)
    if r == 0:
        return best
    perms = np.array(list(itertools.permutations(range(c), r)))            # [K, r] column of each row
    values = m[np.arange(r)[None, :], perms]                                # [K, r]
    allowed = np.isfinite(values)
    sizes = allowed.sum(1)
    size = int(sizes.max())
    costs = np.where(allowed, values, 0.0).sum(1)[sizes == size]
    return size, float(costs.max() if maximize else costs.min())


def solve_on(device, mats, dtype=torch.float64, maximize=False):
    return linear_sum_assignment([torch.as_tensor(m, dtype=dtype, device=device) for m in mats], maximize=maximize)


def assert_same_indices(rows, cols, ref_rows, ref_cols):
    """scipy's tie-breaking: the very same pairs, not only the same total cost."""
    assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols), (
        f"pairs {list(zip(rows.tolist(), cols.tolist()))}, scipy {list(zip(ref_rows.tolist(), ref_cols.tolist()))}"
    )


def optimal_assignments(matrix):
    """How many assignments reach the minimum total cost (brute force, finite costs)."""
    m = np.asarray(matrix, dtype=np.float64)
    m = m.T if m.shape[0] > m.shape[1] else m
    perms = np.array(list(itertools.permutations(range(m.shape[1]), m.shape[0])))
    costs = m[np.arange(m.shape[0])[None, :], perms].sum(1)
    return int((costs == costs.min()).sum())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("integer", [False, True], ids=["normal", "integer_ties"])
def test_matches_scipy(device, dtype, integer):
    """The same pairs as scipy on every problem, tied ones (integer costs in 0..3) included."""
    mats = [m.astype(np.float32 if dtype == torch.float32 else np.float64)
            for m in random_problems(2500, seed=int(integer), integer=integer)]
    results = solve_on(device, mats, dtype)
    assert len(results) == len(mats)
    for m, (rows, cols) in zip(mats, results):
        assert rows.device.type == device and rows.dtype == torch.int64 and cols.dtype == torch.int64
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        assert_partial_permutation(rows, cols, m.shape, min(m.shape))
        ref_rows, ref_cols = scipy_lsa(m)
        assert_same_cost(total(m, rows, cols), total(m, ref_rows, ref_cols), np.abs(m).sum())
        assert_same_indices(rows, cols, ref_rows, ref_cols)


def test_integer_problems_have_ties():
    """Negative control of the tie-breaking checks: the integer problems have several optimal
    assignments, so a solver with another tie rule returns other (equally cheap) pairs and fails
    `assert_same_indices`, which the total cost alone would accept."""
    small = [m for m in random_problems(2500, seed=1, integer=True) if 0 < min(m.shape) and max(m.shape) <= 6]
    tied = [m for m in small if optimal_assignments(m) > 1]
    assert len(tied) >= 100, f"only {len(tied)} of {len(small)} small integer problems have tied optima"
    m = np.zeros((3, 3))  # every assignment is optimal; scipy picks the identity
    (rows, cols), = solve_on("cpu", [m])
    ref_rows, ref_cols = scipy_lsa(m)
    assert_same_indices(rows.numpy(), cols.numpy(), ref_rows, ref_cols)
    with pytest.raises(AssertionError):  # another optimum, same cost: rejected
        assert_same_indices(rows.numpy(), cols.numpy()[::-1].copy(), ref_rows, ref_cols)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("integer", [False, True], ids=["normal", "integer_ties"])
def test_large_problems_match_scipy(device, integer):
    """CORA-like blocks (tall: many queries, few ground truths), their transposes, and squares."""
    rng = np.random.default_rng(14)
    shapes = [(int(q), int(g)) for q, g in zip(rng.integers(10, 301, 30), rng.integers(1, 41, 30))]
    shapes += [(g, q) for q, g in shapes[:10]] + [(60, 60), (129, 128)]
    mats = [rng.integers(0, 5, s).astype(np.float64) if integer else rng.random(s) for s in shapes]
    for m, (rows, cols) in zip(mats, solve_on(device, mats, torch.float32)):
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        m32 = m.astype(np.float32)
        ref_rows, ref_cols = scipy_lsa(m32)
        assert_partial_permutation(rows, cols, m.shape, min(m.shape))
        assert_same_cost(total(m32, rows, cols), total(m32, ref_rows, ref_cols), np.abs(m32).sum())
        assert_same_indices(rows, cols, ref_rows, ref_cols)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_maximize_matches_scipy(device):
    mats = random_problems(300, seed=2) + random_problems(300, seed=3, integer=True)
    for m, (rows, cols) in zip(mats, solve_on(device, mats, maximize=True)):
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        ref_rows, ref_cols = scipy_lsa(m, maximize=True)
        assert_partial_permutation(rows, cols, m.shape, min(m.shape))
        assert_same_cost(total(m, rows, cols), total(m, ref_rows, ref_cols), np.abs(m).sum())
        assert_same_indices(rows, cols, ref_rows, ref_cols)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("maximize", [False, True])
def test_layouts_and_dtypes(device, maximize):
    """Matrices the op reads in place (contiguous, the solver's dtype) and ones it converts first
    (transposed, sliced, integer, half), in one list, against scipy on the float64 values."""
    rng = np.random.default_rng(15)
    ints = rng.integers(0, 4, (6, 5))
    mats = [
        torch.tensor(rng.normal(size=(4, 6))),                                   # float64, contiguous
        torch.tensor(rng.normal(size=(5, 3))).t(),                               # transposed
        torch.tensor(rng.normal(size=(6, 8)))[::2, 1::2],                        # strided slice
        torch.tensor(ints, dtype=torch.int32),                                   # integer: float64
        torch.tensor(rng.integers(-8, 8, (3, 7)), dtype=torch.float16),          # half: exact in float64
        torch.tensor(rng.normal(size=(2, 2)), dtype=torch.float32),              # float32 in a float64 list
        torch.zeros(0, 4, dtype=torch.float64),
    ]
    results = linear_sum_assignment([m.to(device) for m in mats], maximize=maximize)
    for m, (rows, cols) in zip(mats, results):
        values = m.double().numpy()
        ref_rows, ref_cols = scipy_lsa(values, maximize=maximize)
        assert_same_indices(rows.cpu().numpy(), cols.cpu().numpy(), ref_rows, ref_cols)
    assert [m.shape for m in mats][:3] == [(4, 6), (3, 5), (3, 4)]  # the layouts the test means
    assert not mats[1].is_contiguous() and not mats[2].is_contiguous()


def forbidden_problems(seed):
    """Matrices up to 7x7 with +inf patterns: random density, rows / columns with no allowed pair,
    a single allowed diagonal, everything forbidden."""
    rng = np.random.default_rng(seed)
    mats = []
    for _ in range(60):
        r, c = (int(v) for v in rng.integers(1, 8, 2))
        m = rng.integers(0, 5, (r, c)).astype(np.float64) if rng.random() < 0.5 else rng.normal(size=(r, c))
        m[rng.random((r, c)) < rng.choice([0.2, 0.5, 0.8])] = INF
        if rng.random() < 0.3:
            m[rng.integers(r)] = INF        # a row with no allowed column
        if rng.random() < 0.3:
            m[:, rng.integers(c)] = INF     # a column with no allowed row
        mats.append(m)
    diag = np.full((5, 6), INF)
    diag[np.arange(5), np.arange(5)] = np.arange(5.0)
    mats += [diag, np.full((3, 4), INF), np.array([[INF, 1.0], [INF, 2.0], [INF, 3.0]])]
    return mats


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_brute_force_with_forbidden_pairs(device):
    mats = forbidden_problems(seed=4) + random_problems(40, seed=5, max_side=7)
    for m, (rows, cols) in zip(mats, solve_on(device, mats)):
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        size, cost = brute_force(m)
        assert_partial_permutation(rows, cols, m.shape, size)
        assert np.all(np.isfinite(m[rows, cols])), "a forbidden pair was returned"
        assert_same_cost(total(m, rows, cols), cost, np.abs(m[np.isfinite(m)]).sum())
        if size == min(m.shape) and size > 0:  # feasible for scipy too
            ref_rows, ref_cols = scipy_lsa(m)
            assert_same_cost(total(m, rows, cols), total(m, ref_rows, ref_cols), np.abs(m[np.isfinite(m)]).sum())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_forbidden_with_maximize(device):
    """With maximize=True, -inf marks a forbidden pair."""
    mats = [-m for m in forbidden_problems(seed=6)]
    for m, (rows, cols) in zip(mats, solve_on(device, mats, maximize=True)):
        rows, cols = rows.cpu().numpy(), cols.cpu().numpy()
        size, cost = brute_force(m, maximize=True)
        assert_partial_permutation(rows, cols, m.shape, size)
        assert_same_cost(total(m, rows, cols), cost, np.abs(m[np.isfinite(m)]).sum())


def test_forbidden_pairs_never_outweigh_matching_size():
    """A huge finite cost range must not make the solver trade an allowed pair for a cheaper one."""
    m = np.array([[1e30, INF], [-1e30, INF], [0.0, 5.0]])
    (rows, cols), = solve_on("cpu", [m])
    assert rows.tolist() == [1, 2] and cols.tolist() == [0, 1]


def pack(mats, dtype=torch.float64, gap=0):
    """Packs matrices with `gap` NaN elements before each (elements outside problems are ignored)."""
    parts, offsets, at = [], [], 0
    for m in mats:
        parts += [np.full(gap, np.nan), np.asarray(m, dtype=np.float64).ravel()]
        offsets.append(at + gap)
        at += gap + m.size
    costs = torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype)
    shapes = torch.tensor([m.shape for m in mats], dtype=torch.int64).reshape(-1, 2)
    return costs, shapes[:, 0].contiguous(), shapes[:, 1].contiguous(), torch.tensor(offsets, dtype=torch.int64)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_op_output_layout(device):
    """Pairs of all problems sorted by problem then row, problems anywhere in costs."""
    mats = random_problems(50, seed=7) + forbidden_problems(seed=8)[:20]
    costs, rows, cols, offsets = pack(mats, gap=3)
    row_idx, col_idx, problem_idx = batched_linear_assignment(costs.to(device), rows, cols, offsets.to(device))
    assert row_idx.device.type == device
    key = problem_idx.cpu() * 1000 + row_idx.cpu()
    assert torch.all(key[1:] > key[:-1])
    for p, m in enumerate(mats):
        sel = (problem_idx == p).cpu()
        size, cost = brute_force(m) if min(m.shape) <= 7 and not np.isfinite(m).all() else (None, None)
        got_rows, got_cols = row_idx.cpu()[sel].numpy(), col_idx.cpu()[sel].numpy()
        if size is None:
            ref_rows, ref_cols = scipy_lsa(m)
            size, cost = len(ref_rows), total(m, ref_rows, ref_cols)
        assert_partial_permutation(got_rows, got_cols, m.shape, size)
        assert_same_cost(total(m, got_rows, got_cols), cost, np.abs(m[np.isfinite(m)]).sum())


def test_empty_inputs():
    assert linear_sum_assignment([]) == []
    out = torch.ops.cora.batched_linear_assignment(
        torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
    )
    assert all(t.shape == (0,) and t.dtype == torch.int64 for t in out)
    (rows, cols), = linear_sum_assignment([torch.zeros(0, 5)])
    assert rows.shape == cols.shape == (0,)


def test_list_results_are_ordinary_tensors():
    """The CPU list op builds its results in one shared block of memory, on every solving thread: they
    still resize, have storages of their own, and are inference tensors exactly when the call is in
    inference mode."""
    mats = [torch.rand(300, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(p)) for p in range(300)]
    expected = [scipy_lsa(m.numpy()) for m in mats]
    with torch.inference_mode():
        inference = linear_sum_assignment(mats)  # large enough for the helper threads to take a share
    normal = linear_sum_assignment(mats)
    assert all(t.is_inference() for pair in inference for t in pair)
    assert not any(t.is_inference() or t.requires_grad for pair in normal for t in pair)
    rows, cols = normal[0]
    assert rows.untyped_storage().data_ptr() != cols.untyped_storage().data_ptr()
    rows.resize_(1000)  # grows through the CPU allocator; the first 10 entries are kept
    assert rows[:10].tolist() == expected[0][0].tolist()
    del normal, inference  # frees 1200 results from two threads' allocations
    for (r, c), (ref_r, ref_c) in zip(linear_sum_assignment(mats), expected):
        assert r.tolist() == ref_r.tolist() and c.tolist() == ref_c.tolist()


def test_a_list_result_outlives_the_others():
    """The results' shared block stays allocated while any of them lives."""
    mats = [torch.rand(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(p)) for p in range(400)]
    expected = scipy_lsa(mats[-1].numpy())
    kept = linear_sum_assignment(mats)[-1][1]  # the last col_ind: its block ends the list's block
    churn = [torch.full((50,), -7, dtype=torch.int64) for _ in range(4000)]  # reuses freed memory
    assert kept.tolist() == expected[1].tolist() and churn[-1][0] == -7


def test_list_face_keeps_torch_function_and_dispatch():
    """The face's fast binding still goes through the dispatcher (modes, fake tensors), and hands
    Tensor subclasses and TorchFunctionModes to torch.ops, which runs __torch_function__."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(("dispatch", func))
            return func(*args, **(kwargs or {}))

    class RecordFunction(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(("function", func))
            return func(*args, **(kwargs or {}))

    class Marked(torch.Tensor):
        pass

    a = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    expected = [r.tolist() for r in scipy_lsa(a.numpy())]
    op = torch.ops.cora.linear_sum_assignment.default
    for mode, kind in ((Record(), "dispatch"), (RecordFunction(), "function")):
        seen.clear()
        with mode:
            (rows, cols), = linear_sum_assignment([a])
        assert (kind, op) in seen and [rows.tolist(), cols.tolist()] == expected
    (rows, cols), = linear_sum_assignment([a.as_subclass(Marked)])
    assert type(rows) is Marked and [rows.tolist(), cols.tolist()] == expected
    with FakeTensorMode(shape_env=ShapeEnv()):
        (rows, cols), = linear_sum_assignment([torch.empty(4, 3)])
    assert type(rows).__name__ == "FakeTensor" and rows.dtype == torch.int64


def test_dtypes_are_packed_losslessly():
    """Integer matrices go through float64; half types through float32."""
    big = torch.tensor([[2**40 + 1, 2**40], [2**40, 2**40 + 3]], dtype=torch.int64)
    (rows, cols), = linear_sum_assignment([big])
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]
    half = torch.tensor([[1.0, 2.0], [0.5, 3.0]], dtype=torch.float16)
    (rows, cols), = linear_sum_assignment([half])
    assert cols.tolist() == [1, 0]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_non_finite_costs_raise_naming_the_problem(device):
    ok = torch.rand(3, 4, device=device)
    for bad_value in (math.nan, -INF):
        bad = torch.rand(2, 2, device=device)
        bad[1, 0] = bad_value
        with pytest.raises(ValueError, match=r"costs\[2\] contains NaN or -inf"):
            linear_sum_assignment([ok, ok, bad, ok])
        costs, rows, cols, offsets = pack([ok.cpu().numpy(), bad.cpu().numpy(), ok.cpu().numpy()])
        with pytest.raises(ValueError, match="problem 1 has a NaN or -inf cost"):
            torch.ops.cora.batched_linear_assignment(costs.to(device), rows, cols, offsets)
    with pytest.raises(ValueError, match=r"costs\[0\] contains NaN or \+inf; expected finite costs, or -inf"):
        linear_sum_assignment([torch.tensor([[1.0, INF]], device=device)], maximize=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_float64_overflow_raises(device):
    m = torch.tensor([[1e308, INF], [-1e308, 1.0]], dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="problem 0 overflows float64"):
        torch.ops.cora.batched_linear_assignment(m.reshape(-1), *(torch.tensor([v]) for v in (2, 2, 0)))
    with pytest.raises(ValueError, match=r"costs\[1\] overflows float64"):
        linear_sum_assignment([torch.ones(2, 2, dtype=torch.float64, device=device), m])


def test_bad_arguments():
    op = torch.ops.cora.batched_linear_assignment
    costs = torch.zeros(10)
    one = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    cases = [
        ((costs, one(3), one(4), one(0)), ValueError, r"problem 0 \(3 x 4 at offset 0\) must lie inside costs of 10"),
        ((costs, one(2), one(2), one(7)), ValueError, "must lie inside costs"),
        ((costs, one(2), one(2), one(-1)), ValueError, "must lie inside costs"),
        ((costs, one(-1), one(2), one(0)), ValueError, "problem 0 must have 0 <= rows, cols < 2\\^30, got rows -1"),
        ((costs.reshape(2, 5), one(1), one(1), one(0)), ValueError, r"costs must be a 1-D tensor, got shape \[2, 5\]"),
        ((costs.half(), one(1), one(1), one(0)), TypeError, "costs must be float32 or float64, got Half"),
        ((costs, one(1), one(1).int(), one(0)), TypeError, "cols must be int64"),
        ((costs, one(1), torch.ones(2, dtype=torch.int64), one(0)), ValueError, r"cols must be Tensor\[P\] with P"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            op(*args)
        with pytest.raises(error, match=message.replace("Half", "torch.float16")):
            batched_linear_assignment(*args)
    with pytest.raises(ValueError, match=r"costs\[1\] must be Tensor\[R, C\], got shape \[3\]"):
        linear_sum_assignment([torch.zeros(2, 2), torch.zeros(3)])
    with pytest.raises(TypeError, match="must be a real"):
        linear_sum_assignment([torch.zeros(2, 2, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"costs\[1\] must be a Tensor, got list"):
        linear_sum_assignment([torch.zeros(2, 2), [[1.0]]])
    with pytest.raises(TypeError, match=r"costs must be a list of Tensor\[R, C\] \(one matrix: \[cost\]\), got a "
                       r"Tensor of shape \[2, 2\]"):
        linear_sum_assignment(torch.zeros(2, 2))
    with pytest.raises(TypeError, match="costs must be a list of Tensor.*got int"):
        linear_sum_assignment(3)
    with pytest.raises(TypeError, match="costs must be a list of Tensor.*got str"):
        linear_sum_assignment("costs.npy")
    with pytest.raises(ValueError, match=r"all cost matrices must be on one device, got costs\[0\] on cpu and "
                       r"costs\[1\] on meta"):
        linear_sum_assignment([torch.zeros(2, 2), torch.zeros(2, 2, device="meta")])
    with pytest.raises(TypeError, match=r"costs\[0\] must be a real \(float or integer\) tensor, got torch.complex64"):
        linear_sum_assignment([torch.zeros(2, 2, dtype=torch.complex64)])
    # maximize is read as scipy reads it (truthiness).
    m = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    assert linear_sum_assignment([m], maximize=1)[0][1].tolist() == [0, 1]   # 1 + 5 > 2 + 3
    assert linear_sum_assignment([m], maximize=0)[0][1].tolist() == [1, 0]


def per_class_reference(cost, query_classes, gt_classes):
    """scipy on each class's block, one at a time: (query, gt) pairs sorted by query."""
    pairs = []
    for k in sorted(set(query_classes.tolist()) & set(gt_classes.tolist())):
        q = np.flatnonzero(query_classes == k)
        g = np.flatnonzero(gt_classes == k)
        block = cost[np.ix_(q, g)]
        size, best = brute_force(block) if min(block.shape) <= 6 else (None, None)
        if size is None or np.isfinite(block).all():
            rows, cols = scipy_lsa(block)
            size, best = len(rows), total(block, rows, cols)
        pairs.append((k, size, best))
    return pairs


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(6))
def test_per_class_blocks_matches_a_scipy_loop(device, seed):
    rng = np.random.default_rng(seed)
    num_q, num_g, num_classes = int(rng.integers(0, 60)), int(rng.integers(0, 15)), int(rng.integers(1, 8))
    cost = rng.normal(size=(num_q, num_g))
    if seed % 2:
        cost[rng.random(cost.shape) < 0.2] = INF
    query_classes = rng.integers(0, num_classes, num_q) * 3 - 2   # any integers
    gt_classes = rng.integers(0, num_classes, num_g) * 3 - 2
    # NaN outside every block is never read.
    cost[query_classes[:, None] != gt_classes[None, :]] = np.nan

    query_idx, gt_idx = per_class_blocks(
        torch.as_tensor(cost, device=device), torch.as_tensor(query_classes, device=device),
        torch.as_tensor(gt_classes, device=device),
    )
    assert query_idx.device.type == device and query_idx.dtype == gt_idx.dtype == torch.int64
    query_idx, gt_idx = query_idx.cpu().numpy(), gt_idx.cpu().numpy()
    assert np.all(np.diff(query_idx) > 0) and len(set(gt_idx.tolist())) == len(gt_idx)
    assert np.all(query_classes[query_idx] == gt_classes[gt_idx])
    assert np.all(np.isfinite(cost[query_idx, gt_idx]))
    for k, size, best in per_class_reference(cost, query_classes, gt_classes):
        sel = query_classes[query_idx] == k
        assert sel.sum() == size
        scale = np.abs(cost[np.isfinite(cost)]).sum()
        assert_same_cost(float(cost[query_idx[sel], gt_idx[sel]].sum()), best, scale)


def test_per_class_blocks_errors():
    cost = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"gt_classes must be Tensor\[3\] \(cost is \[4, 3\]\), got \[2\]"):
        per_class_blocks(cost, torch.zeros(4, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="query_classes must be an integer tensor"):
        per_class_blocks(cost, torch.zeros(4), torch.zeros(3, dtype=torch.int64))
    cost[2, 1] = -INF
    with pytest.raises(ValueError, match="NaN or -inf at a .* pair of class 5"):
        per_class_blocks(cost, torch.full((4,), 5), torch.full((3,), 5))


def test_torch_compile():
    """The op is captured with a data-dependent output size; the list API runs after a graph break."""

    def matched_cost(costs, rows, cols, offsets):
        row_idx, col_idx, problem_idx = torch.ops.cora.batched_linear_assignment(costs, rows, cols, offsets)
        return costs.sum() * 0 + problem_idx.numel()

    def step(a, b):
        pairs = linear_sum_assignment([a * 2, b])
        return sum(x[r, c].sum() for x, (r, c) in zip((a, b), pairs))

    a, b = torch.rand(5, 3), torch.rand(2, 4)
    costs, rows, cols, offsets = pack([a.numpy(), b.numpy()])
    torch._dynamo.reset()
    assert int(torch.compile(matched_cost, fullgraph=True)(costs, rows, cols, offsets)) == 5
    explained = torch._dynamo.explain(step)(a, b)
    assert explained.graph_break_count == 1
    torch._dynamo.reset()
    assert torch.allclose(torch.compile(step)(a, b), step(a, b))


def test_list_op_under_torch_compile():
    """The list op itself is captured (a data-dependent number of pairs per matrix)."""

    def matched(a, b):
        row_ind, col_ind = torch.ops.cora.linear_sum_assignment([a * 2, b], False)
        return a[row_ind[0], col_ind[0]].sum() * 2 + b[row_ind[1], col_ind[1]].sum()

    a, b = torch.rand(5, 3), torch.rand(2, 4)
    expected = sum(float(x[r, c].sum()) for x, (r, c) in zip((a * 2, b), (scipy_lsa(a * 2), scipy_lsa(b))))
    torch._dynamo.reset()
    assert math.isclose(float(torch.compile(matched, fullgraph=True)(a, b)), expected, rel_tol=1e-6)


def test_opcheck():
    costs, rows, cols, offsets = pack(random_problems(12, seed=9), dtype=torch.float32)
    test_utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.cora.batched_linear_assignment.default, (costs, rows, cols, offsets),
                          test_utils=test_utils)
    mats = [torch.as_tensor(m, dtype=torch.float32) for m in random_problems(12, seed=9)]
    for maximize in (False, True):
        torch.library.opcheck(torch.ops.cora.linear_sum_assignment.default, (mats, maximize), test_utils=test_utils)


@pytest.mark.needs_cuda
def test_cuda_matches_cpu_exactly():
    """Warp and block teams pick the same columns as the CPU's single thread, large problems included."""
    rng = np.random.default_rng(10)
    mats = random_problems(400, seed=11) + random_problems(200, seed=12, integer=True) + forbidden_problems(seed=13)
    mats += [rng.normal(size=s) for s in ((600, 20), (20, 700), (1000, 64), (513, 513), (40, 2000))]
    tie_heavy = rng.integers(0, 3, (800, 30)).astype(np.float64)
    tie_heavy[rng.random(tie_heavy.shape) < 0.3] = INF
    mats.append(tie_heavy)
    for dtype in (torch.float32, torch.float64):
        costs, rows, cols, offsets = pack(mats, dtype=dtype)
        cpu = torch.ops.cora.batched_linear_assignment(costs, rows, cols, offsets)
        cuda = torch.ops.cora.batched_linear_assignment(costs.cuda(), rows.cuda(), cols.cuda(), offsets.cuda())
        for x, y in zip(cpu, cuda):
            assert torch.equal(x, y.cpu())
