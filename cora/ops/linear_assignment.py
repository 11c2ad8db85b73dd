"""Batched linear assignment: `torch.ops.cora.batched_linear_assignment`, many small rectangular
assignment problems (DETR-style matching per image and class) solved in one call."""

from __future__ import annotations

import gc
import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

from cora import _C

_COST_DTYPES = (torch.float32, torch.float64)


def batched_linear_assignment(
    costs: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Solves P rectangular linear assignment problems packed in one tensor, each exactly as
    `scipy.optimize.linear_sum_assignment` (minimum total cost), except for forbidden pairs.

    Args:
        costs: Tensor[N], float32 or float64: problem p is the row-major Tensor[rows[p], cols[p]]
            `costs[offsets[p] : offsets[p] + rows[p] * cols[p]]` (problems may sit anywhere in
            `costs`; elements outside every problem are ignored). CPU or CUDA.
        rows, cols, offsets: Tensor[P], int64, on the CPU or on costs' device; 0 <= rows, cols < 2^30.

    Returns:
        (row_idx, col_idx, problem_idx): Tensor[M] int64 each, on costs' device: the matched pairs of
        all problems, sorted by problem then row; row_idx / col_idx index into each problem's matrix.
        Problem p contributes min(rows[p], cols[p]) pairs (none if it is empty), fewer if it has
        forbidden pairs.

    Costs:
        - `+inf` marks a forbidden pair. Unlike scipy, which rejects a matrix whose rows cannot all
          be assigned, the result is then a maximum-size matching among the allowed pairs, and of
          those the one of minimum total cost; a problem with only `+inf` gives no pairs.
        - NaN or `-inf` in a problem raises ValueError naming the problem index.
        - Every problem is solved in float64 (shortest augmenting path, Jonker-Volgenant as modified
          by Crouse, as scipy, on the smaller side's rows). Problems with a forbidden pair are solved
          with their finite costs rescaled to [0, 1]: the cost is then optimal up to ~min(r, c)^2 *
          1e-16 of the finite cost range. Finite float64 costs of magnitude near 1e308 can
          overflow, which raises ValueError.
        - Ties: scipy's tie-breaking (the same float64 arithmetic in the same order): a problem without
          +inf gets scipy's pairs index for index, tied optima included. With forbidden pairs only
          the number of pairs and the total cost are specified (the rescaled costs can tie otherwise).

    The CPU kernel solves problems in parallel on up to torch.get_num_threads() threads (the caller
    and helpers from torch's inter-op pool, never waited for if they start late); the CUDA kernel
    solves each problem with one warp, or one block for problems with more than 512 columns on the larger
    side. The output size depends on the data: on CUDA the call synchronises with the host. Under
    torch.compile the op is captured with a data-dependent output size (or, where the caller's
    code is not traceable, after a graph break).

    Raises:
        ValueError: wrong ranks or lengths, negative sizes, a problem reaching outside `costs`
            (checked by the kernels before any cost is read), or a NaN / -inf cost (found by the
            kernels' first pass over each problem: no extra pass here).
        TypeError: wrong dtypes.
    """
    _check_tensors(costs, rows, cols, offsets)
    return torch.ops.cora.batched_linear_assignment(costs, rows, cols, offsets)


@torch.compiler.disable  # a data-dependent number of pairs per matrix: one clean graph break
def linear_sum_assignment(costs: Sequence[Tensor], maximize: bool = False) -> list[tuple[Tensor, Tensor]]:
    """`scipy.optimize.linear_sum_assignment` for a list of cost matrices, in one kernel call.

    Args:
        costs: P matrices Tensor[R_p, C_p] (R_p or C_p may be 0), all on one device, CPU or CUDA, any
            layout. If every matrix is float32 or a lower-precision float they are solved from float32,
            otherwise (a float64 or integer matrix in the list) from float64. Every problem is solved in
            float64 arithmetic.
        maximize: if True, maximise the total cost. The forbidden marker then becomes `-inf` and
            `+inf` is an error, so that a forbidden pair is never chosen either way.

    Returns:
        A list of P pairs (row_ind, col_ind) of Tensor[M_p] int64 on the input's device, as scipy
        returns them: row_ind sorted, M_p = min(R_p, C_p) without forbidden pairs (empty for an
        empty matrix). See `batched_linear_assignment` for forbidden pairs, float64 solving and ties.

    This is `torch.ops.cora.linear_sum_assignment(costs, maximize) -> (Tensor[] row_ind, Tensor[] col_ind)`,
    whose kernels do every per-matrix step in C++: the checks, reading each matrix in place (a copy only
    for another dtype or layout, and one negated buffer for maximize=True), one solve of all problems,
    and the 2P result tensors (on the CPU, slices of one block of memory, each with its storage: the
    block is freed with the last of them). On CUDA: one upload of the problem table, one launch per team
    size, one readback of the status, one multi-tensor copy into the results. It is called through
    `cora._C._linear_sum_assignment`, which goes through the dispatcher as torch.ops does but without
    boxing the 3P tensors into IValues (csrc/python_module.cpp). The op needs at least one matrix (the
    dispatcher dispatches on a tensor); this function returns [] for none.
    Under torch.compile this function runs eagerly (a graph break).

    Raises:
        ValueError: a matrix that is not 2-D, matrices on different devices, or NaN / `-inf`
            (`+inf` with maximize=True) in costs[p] (named).
        TypeError: costs not a list (or other iterable) of tensors, a bool or complex matrix.
    """
    if isinstance(costs, (Tensor, str, bytes)) or not isinstance(costs, Iterable):
        got = f"a Tensor of shape {list(costs.shape)}" if isinstance(costs, Tensor) else type(costs).__name__
        raise TypeError(f"linear_sum_assignment: costs must be a list of Tensor[R, C] (one matrix: [cost]), got {got}")
    costs = list(costs)
    if not costs:
        return []
    # The call creates 2P tensors (and P tuples), all alive until it returns. With the cyclic garbage
    # collector on, they are moved up through its generations and trigger full collections, which scan
    # every object of the process: 40% of the mean call on 2048 problems of 300 x 3 (benchmarks/README.md).
    # None of them can form a reference cycle, so the collector is paused for the call (and resumed
    # only if it was on).
    collecting = gc.isenabled()
    gc.disable()
    try:
        pairs = _C._linear_sum_assignment(costs, bool(maximize))
        if pairs is NotImplemented:  # a Tensor subclass or a TorchFunctionMode: torch.ops handles them
            row_ind, col_ind = torch.ops.cora.linear_sum_assignment.default(costs, bool(maximize))
            pairs = list(zip(row_ind, col_ind))
        return pairs
    finally:
        if collecting:
            gc.enable()


@torch.compiler.disable  # data-dependent block sizes: one clean graph break
def per_class_blocks(cost: Tensor, query_classes: Tensor, gt_classes: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class matching of one image: a query may only be matched to a ground truth of its class.

    Cuts `cost` into one block per class (its queries x its ground truths), solves all blocks with
    one `batched_linear_assignment` call, and maps the answers back to (query, ground truth) pairs.
    Each class's block is solved as `scipy.optimize.linear_sum_assignment(cost[q_c][:, g_c])`.

    Args:
        cost: Tensor[Q, G] matching cost of each (query, ground truth), float32 or float64 (other
            real dtypes are converted: integers to float64, half types to float32); +inf marks a
            forbidden pair (see `batched_linear_assignment`). CPU or CUDA.
        query_classes: Tensor[Q] int, the class each query is pre-matched to.
        gt_classes: Tensor[G] int, the class of each ground truth.
            Classes are any integers; only classes with both queries and ground truths give pairs.

    Returns:
        (query_idx, gt_idx): Tensor[M] int64 each, on cost's device, sorted by query index, where
        M = sum over classes of min(#queries, #ground truths) (fewer with forbidden pairs).

    Under torch.compile this function runs eagerly (a graph break).

    Raises:
        ValueError: wrong shapes or devices, or NaN / -inf in a same-class pair (cross-class costs
            are never read).
        TypeError: non-integer classes, bool or complex costs.
    """
    if not isinstance(cost, Tensor) or cost.dim() != 2:
        shape = list(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"per_class_blocks: cost must be Tensor[Q, G], got {shape}")
    num_q, num_g = cost.shape
    for name, t, n in (("query_classes", query_classes, num_q), ("gt_classes", gt_classes, num_g)):
        if not isinstance(t, Tensor) or t.shape != (n,):
            shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"per_class_blocks: {name} must be Tensor[{n}] (cost is [{num_q}, {num_g}]), got {shape}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"per_class_blocks: {name} must be an integer tensor, got {t.dtype}")
        if t.device != cost.device:
            raise ValueError(f"per_class_blocks: {name} must be on cost's device ({cost.device}), got {t.device}")
    if cost.dtype == torch.bool or cost.dtype.is_complex:
        raise TypeError(f"per_class_blocks: cost must be a real (float or integer) tensor, got {cost.dtype}")
    if cost.dtype not in _COST_DTYPES:
        cost = cost.to(torch.float32 if cost.dtype.is_floating_point else torch.float64)

    # Sorting queries and ground truths by class makes every class's block a contiguous diagonal
    # block of the permuted matrix, and masked selection reads it row-major: the packed problems.
    q_classes, q_order = torch.sort(query_classes, stable=True)
    g_classes, g_order = torch.sort(gt_classes, stable=True)
    q_keys, q_counts = torch.unique_consecutive(q_classes, return_counts=True)
    g_keys, g_counts = torch.unique_consecutive(g_classes, return_counts=True)
    q_starts = q_counts.cumsum(0) - q_counts
    g_starts = g_counts.cumsum(0) - g_counts
    # Classes with both queries and ground truths: the problems, in class order.
    at = torch.searchsorted(q_keys, g_keys).clamp_(max=max(len(q_keys) - 1, 0))
    both = (q_keys[at] == g_keys) if len(q_keys) else torch.zeros_like(g_keys, dtype=torch.bool)
    q_block, g_block = at[both], both.nonzero().squeeze(1)
    rows, cols = q_counts[q_block], g_counts[g_block]

    same = q_classes[:, None] == g_classes[None, :]                        # [Q, G] in sorted order
    packed = cost[q_order][:, g_order][same]                               # blocks, row-major
    sizes = rows * cols
    offsets = sizes.cumsum(0) - sizes
    if _has_nan_or_neg_inf(packed):
        bad = ~(packed > -math.inf)
        p = int(torch.searchsorted(offsets, bad.nonzero()[0], right=True)[0]) - 1
        raise ValueError(
            f"per_class_blocks: cost has NaN or -inf at a (query, ground truth) pair of class "
            f"{int(g_keys[g_block[p]])}; expected finite costs, or +inf for a forbidden pair"
        )
    row_idx, col_idx, problem_idx = torch.ops.cora.batched_linear_assignment(packed, rows, cols, offsets)
    query_idx = q_order[q_starts[q_block][problem_idx] + row_idx]
    gt_idx = g_order[g_starts[g_block][problem_idx] + col_idx]
    query_idx, order = torch.sort(query_idx)
    return query_idx, gt_idx[order]


# ---- argument checks: the C++ checks (csrc/linear_assignment_check.h), with the same messages ----


def _has_nan_or_neg_inf(values: Tensor) -> bool:
    """One reduction, no temporaries: min() is NaN if any value is."""
    return values.numel() > 0 and not bool(values.min() > -math.inf)


def _check_tensors(costs: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor) -> None:
    if costs.dim() != 1:
        raise ValueError(f"batched_linear_assignment: costs must be a 1-D tensor, got shape {list(costs.shape)}")
    if costs.dtype not in _COST_DTYPES:
        raise TypeError(f"batched_linear_assignment: costs must be float32 or float64, got {costs.dtype}")
    num = rows.numel()
    for name, t in (("rows", rows), ("cols", cols), ("offsets", offsets)):
        if t.dim() != 1 or t.shape[0] != num:
            raise ValueError(
                f"batched_linear_assignment: {name} must be Tensor[P] with P = rows.numel() = {num}, "
                f"got shape {list(t.shape)}"
            )
        if t.dtype != torch.int64:
            raise TypeError(f"batched_linear_assignment: {name} must be int64, got {t.dtype}")
        if t.device.type != "cpu" and t.device != costs.device:
            raise ValueError(
                f"batched_linear_assignment: {name} must be on the CPU or on costs' device ({costs.device}), "
                f"got {t.device}"
            )


@torch.library.register_fake("cora::batched_linear_assignment")
def _batched_linear_assignment_fake(costs, rows, cols, offsets):
    torch._check(
        costs.dim() == 1,
        lambda: f"batched_linear_assignment: costs must be a 1-D tensor, got shape {list(costs.shape)}",
    )
    torch._check(
        costs.dtype in _COST_DTYPES,
        lambda: f"batched_linear_assignment: costs must be float32 or float64, got {costs.dtype}",
    )
    for name, t in (("rows", rows), ("cols", cols), ("offsets", offsets)):
        torch._check(
            t.dim() == 1 and t.shape[0] == rows.shape[0],
            lambda: f"batched_linear_assignment: {name} must be Tensor[P] with P = rows.numel() = {rows.shape[0]}, "
            f"got shape {list(t.shape)}",
        )
        torch._check(t.dtype == torch.int64, lambda: f"batched_linear_assignment: {name} must be int64, got {t.dtype}")
    # The number of pairs depends on the costs (forbidden pairs are dropped).
    num_pairs = torch.library.get_ctx().new_dynamic_size()
    return tuple(torch.empty(num_pairs, dtype=torch.int64, device=costs.device) for _ in range(3))


@torch.library.register_fake("cora::linear_sum_assignment")
def _linear_sum_assignment_fake(costs, maximize=False):
    for p, c in enumerate(costs):
        torch._check_value(
            c.dim() == 2, lambda: f"linear_sum_assignment: costs[{p}] must be Tensor[R, C], got shape {list(c.shape)}"
        )
    for p, c in enumerate(costs):
        torch._check_value(
            c.device == costs[0].device,
            lambda: f"linear_sum_assignment: all cost matrices must be on one device, got costs[0] on "
            f"{costs[0].device} and costs[{p}] on {c.device}",
        )
        torch._check_type(
            c.dtype != torch.bool and not c.dtype.is_complex,
            lambda: f"linear_sum_assignment: costs[{p}] must be a real (float or integer) tensor, got {c.dtype}",
        )
    # The number of pairs of each matrix depends on its costs (forbidden pairs are dropped).
    ctx = torch.library.get_ctx()
    sizes = [ctx.new_dynamic_size() for _ in costs]
    row_ind = [torch.empty(n, dtype=torch.int64, device=c.device) for n, c in zip(sizes, costs)]
    col_ind = [torch.empty(n, dtype=torch.int64, device=c.device) for n, c in zip(sizes, costs)]
    return row_ind, col_ind
