"""Kernel benchmarks: each compiled cora op against its baseline, on the same inputs, in one process.

    python benchmarks/kernels.py                          # CPU, fp32, 5 timed runs per case
    python benchmarks/kernels.py --quick                  # CPU, 3 timed runs
    python benchmarks/kernels.py --device cuda --dtype fp16 --json benchmarks/results/kernels-h100.json
    cora bench kernels --quick                            # the same, from an installed package

Prints one table row per (op, pass, layout): median and p90 time of baseline and cora, the speedup
(baseline median / cora median) and the largest difference between the two outputs.

Shapes:
- roi_align at the CORA region-classifier shape: a stride-16 map of 50x84 (an 800x1344 image),
  14x14 bins, aligned, adaptive sampling, boxes drawn uniformly with sides of 16 px to half the image;
  512 RoIs x C=256 on CPU, 1000 RoIs x C=1024 on CUDA.
- attn_pool at RN50 shapes (C=2048, 7x7, 32 heads, out 1024), with a region prompt; 256 regions on
  CPU, 1000 on CUDA. Baselines: open_clip's AttentionPool2d (all L queries), the same with token 0 as
  the only query, and the O(L) fold written with plain torch ops (cora.ops.reference).
- linear_assignment on one CORA-like training batch of per-(image, class) matching problems (see
  `cora_like_batch`), float32 costs (float64 with --dtype fp64). Baselines: scipy's
  linear_sum_assignment in a loop over the same blocks, and scipy on CORA's masked full per-image
  matrices (1000 x G, a large cost on cross-class pairs). Rows: the op on the packed batch (as the
  matcher calls it), and `linear_sum_assignment` on the list of blocks (one call of the list op
  `torch.ops.cora.linear_sum_assignment`). Then the same for docs/design.md's baseline shape, 2048
  problems of 300 x 3, and for issue #17's three batches of 1057 problems (10..300 x 1..20, 1..40 x 1..5,
  square 20..60).
  "max |diff|" is the difference in total matched cost.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable

import torch

from cora.bench.common import default_out_dir, format_table, machine_info, measure, write_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass
class Case:
    op: str
    phase: str  # "forward" or "backward"
    layout: str
    shape: str
    baseline_name: str
    baseline: Callable[[], torch.Tensor]
    cora: Callable[[], torch.Tensor]
    # Maps a call's output to the tensor compared between baseline and cora (default: the output).
    compare: Callable[[object], torch.Tensor] | None = None


def random_rois(num_rois: int, batch: int, height: int, width: int, stride: int, device: str, seed: int = 0):
    """Tensor[K, 5] (batch index, x1, y1, x2, y2) in image pixels, sides 16 px .. half the image."""
    g = torch.Generator().manual_seed(seed)
    image_size = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    wh = torch.rand(num_rois, 2, generator=g) * image_size * 0.5 + 16
    xy = torch.rand(num_rois, 2, generator=g) * (image_size - wh)
    index = torch.randint(0, batch, (num_rois, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1).to(device)


def roi_align_cases(device: str, dtype: torch.dtype) -> list[Case]:
    import torchvision

    import cora.ops  # noqa: F401

    num_rois, channels = (512, 256) if device == "cpu" else (1000, 1024)
    batch, height, width, stride, out = 2, 50, 84, 16, 14
    shape = f"K={num_rois} C={channels} {height}x{width}->{out}x{out}"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, height, width, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(num_rois, channels, out, out, generator=g).to(device=device, dtype=dtype)
    rois = random_rois(num_rois, batch, height, width, stride, device).to(dtype)
    params = (1.0 / stride, out, out)
    backward_args = (1.0 / stride, out, out, batch, channels, height, width, -1, True)

    cases = []
    for layout in ("nchw", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x_l, grad_l = x.contiguous(memory_format=fmt), grad.contiguous(memory_format=fmt)
        cases.append(Case(
            "roi_align", "forward", layout, shape, "torchvision",
            lambda x_l=x_l: torchvision.ops.roi_align(x_l, rois, params[1:], params[0], -1, True),
            lambda x_l=x_l: torch.ops.cora.roi_align(x_l, rois, *params, -1, True),
        ))
        cases.append(Case(
            "roi_align", "backward", layout, shape, "torchvision",
            lambda grad_l=grad_l: torch.ops.torchvision._roi_align_backward(grad_l, rois, *backward_args),
            lambda grad_l=grad_l: torch.ops.cora._roi_align_backward(grad_l, rois, *backward_args),
        ))
    return cases


def attn_pool_cases(device: str, dtype: torch.dtype) -> list[Case]:
    """RN50 shapes: C=2048, 7x7, 32 heads, out 1024; N=256 regions on CPU, 1000 on CUDA."""
    import torch.nn.functional as F
    from open_clip.modified_resnet import AttentionPool2d

    from cora.ops import prompted_attention_pool
    from cora.ops.reference import prompted_attention_pool_ref

    num = 256 if device == "cpu" else 1000
    side, channels, heads, out_dim = 7, 2048, 32, 1024
    shape = f"N={num} C={channels} {side}x{side} H={heads} out={out_dim}"
    torch.manual_seed(0)
    pool = AttentionPool2d(side, channels, heads, out_dim).to(device=device, dtype=dtype).eval().requires_grad_(False)
    x = torch.randn(num, channels, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    prompt = (torch.randn(side, side, channels, device=device, dtype=dtype) * 0.1).requires_grad_()
    weights = (pool.positional_embedding, pool.q_proj.weight, pool.q_proj.bias, pool.k_proj.weight,
               pool.k_proj.bias, pool.v_proj.weight, pool.v_proj.bias, pool.c_proj.weight, pool.c_proj.bias, heads)
    grad = torch.randn(num, out_dim, device=device, dtype=dtype)

    def prompted(x_):
        return x_ + prompt.permute(2, 0, 1)[None]

    def cls_query_only(x_):
        """open_clip's pool with token 0 as the only query (keys and values still for all tokens)."""
        t = x_.flatten(2).permute(2, 0, 1)                                      # [S*S, N, C]
        t = torch.cat([t.mean(0, keepdim=True), t]) + pool.positional_embedding[:, None]
        out, _ = F.multi_head_attention_forward(
            t[:1], t, t, channels, heads, None,
            torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]), None, None, False, 0.0,
            pool.c_proj.weight, pool.c_proj.bias, training=False, need_weights=False, use_separate_proj_weight=True,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        )
        return out[0]

    def forward(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def forward_backward(fn):
        def run():
            prompt.grad = None
            fn().backward(grad)
            return prompt.grad
        return run

    ours = lambda: prompted_attention_pool(x, *weights, prompt=prompt)
    baselines = {
        "open_clip": lambda: pool(prompted(x)),
        "cls-query torch": lambda: cls_query_only(prompted(x)),
        "fold torch ops": lambda: prompted_attention_pool_ref(x, *weights, prompt=prompt),
    }
    cases = []
    for phase, wrap in (("forward", forward), ("fwd+bwd(prompt)", forward_backward)):
        for name, baseline in baselines.items():
            cases.append(Case("attn_pool", phase, "channels_last", shape, name, wrap(baseline), wrap(ours)))
    return cases


def cora_like_batch(seed: int = 0, images: int = 32, queries: int = 1000, max_classes: int = 65):
    """Per-(image, class) matching problems of one CORA training batch, as float64 numpy arrays.

    Per image, the `queries` queries are split into classes of 10..300 queries, drawn in turn while
    the next class fits (the remaining queries are pre-matched to classes absent from the image), at
    most `max_classes` classes, each with 1..20 ground truths; costs uniform in [0, 10).

    Returns (blocks, full): blocks, the list of every class's cost matrix [q, g] (images in turn);
    full, per image the masked matrix [queries, G] holding its blocks on the diagonal and
    `MASKED_COST` on every cross-class pair.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    blocks, full = [], []
    for _ in range(images):
        sizes = []
        left = queries
        while len(sizes) < max_classes:
            q, g = int(rng.integers(10, 301)), int(rng.integers(1, 21))
            if q > left:
                break
            left -= q
            sizes.append((q, g))
        image_blocks = [rng.random((q, g)) * 10 for q, g in sizes]
        matrix = np.full((queries, sum(g for _, g in sizes)), MASKED_COST)
        row = col = 0
        for b in image_blocks:
            matrix[row : row + b.shape[0], col : col + b.shape[1]] = b
            row, col = row + b.shape[0], col + b.shape[1]
        blocks += image_blocks
        full.append(matrix)
    return blocks, full


MASKED_COST = 1e6


def linear_assignment_cases(device: str, dtype: torch.dtype) -> list[Case]:
    import numpy as np

    cost_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    blocks, full = cora_like_batch()
    cases = _assignment_cases(blocks, full, device, cost_dtype, "B=32 q 10..300 x g 1..20")
    # docs/design.md's baseline shape: 2048 problems of 300 x 3.
    rng = np.random.default_rng(1)
    cases += _assignment_cases([rng.random((300, 3)) * 10 for _ in range(2048)], None, device, cost_dtype,
                               "each 300 x 3")
    # Issue #17's batches of 1057 problems: CORA-like sides, tiny problems (where the per-problem overhead
    # dominates) and squares (where the solve dominates).
    square = rng.integers(20, 61, 1057)
    batches = {
        "q 10..300 x g 1..20": zip(rng.integers(10, 301, 1057), rng.integers(1, 21, 1057)),
        "1..40 x 1..5": zip(rng.integers(1, 41, 1057), rng.integers(1, 6, 1057)),
        "square 20..60": zip(square, square),
    }
    for name, shapes in batches.items():
        blocks = [rng.random((int(r), int(c))) * 10 for r, c in shapes]
        cases += _assignment_cases(blocks, None, device, cost_dtype, name)
    return cases


def _assignment_cases(blocks, full, device: str, cost_dtype: torch.dtype, name: str) -> list[Case]:
    """The op on `blocks` packed, and the list API on them, against scipy on each block; against
    scipy on the masked per-image matrices `full` too when given."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    from cora.ops import batched_linear_assignment, linear_sum_assignment

    np_dtype = np.float64 if cost_dtype == torch.float64 else np.float32
    blocks = [b.astype(np_dtype) for b in blocks]
    full = [f.astype(np_dtype) for f in full] if full is not None else None
    shapes = torch.tensor([b.shape for b in blocks], dtype=torch.int64)
    rows, cols = shapes[:, 0].contiguous(), shapes[:, 1].contiguous()
    sizes = rows * cols
    offsets = sizes.cumsum(0) - sizes
    flat = torch.from_numpy(np.concatenate([b.ravel() for b in blocks])).to(device)
    block_tensors = [torch.from_numpy(b).to(device) for b in blocks]
    shape = f"{name} P={len(blocks)} ({int(sizes.sum())} costs, {str(cost_dtype).replace('torch.', '')})"

    def scipy_blocks():
        if device == "cpu":
            return [scipy_lsa(b) for b in blocks]
        host = flat.cpu().numpy()  # the GPU baseline copies the costs to the host first
        return [scipy_lsa(host[o : o + r * c].reshape(r, c))
                for o, r, c in zip(offsets.tolist(), rows.tolist(), cols.tolist())]

    def scipy_full():
        return [scipy_lsa(f) for f in full]

    def total_cost(out) -> torch.Tensor:
        """Total matched cost from any of the outputs (same-class pairs only)."""
        if isinstance(out, tuple):  # the op: (row_idx, col_idx, problem_idx)
            r, c, p = (t.cpu() for t in out)
            return flat.cpu().double()[offsets[p] + r * cols[p] + c].sum()
        if full is not None and len(out) == len(full):  # scipy on the masked per-image matrices
            values = [f[i, j] for f, (i, j) in zip(full, out)]
        else:  # per block: scipy (numpy) or linear_sum_assignment (tensors)
            values = [b[np.asarray(torch.as_tensor(i).cpu()), np.asarray(torch.as_tensor(j).cpu())]
                      for b, (i, j) in zip(blocks, out)]
        values = np.concatenate(values).astype(np.float64)
        return torch.tensor(values[values < MASKED_COST / 2].sum())

    packed = lambda: batched_linear_assignment(flat, rows, cols, offsets)  # noqa: E731
    as_list = lambda: linear_sum_assignment(block_tensors)  # noqa: E731
    cases = [Case("linear_assignment", "match", "packed", shape, "scipy loop", scipy_blocks, packed, total_cost)]
    if full is not None:
        cases.append(Case("linear_assignment", "match", "packed", shape, "scipy, masked 1000xG", scipy_full, packed,
                          total_cost))
    cases.append(Case("linear_assignment", "match", "list API", shape, "scipy loop", scipy_blocks, as_list, total_cost))
    return cases


OPS = {"roi_align": roi_align_cases, "attn_pool": attn_pool_cases, "linear_assignment": linear_assignment_cases}


def run(args: argparse.Namespace) -> dict:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("kernels: --device cuda but torch sees no CUDA GPU")
    dtype = DTYPES[args.dtype]
    repeat = 3 if args.quick else args.repeat
    rows, results = [], []
    for op in args.ops:
        for case in OPS[op](args.device, dtype):
            expected, actual = case.baseline(), case.cora()
            if case.compare is not None:
                expected, actual = case.compare(expected), case.compare(actual)
            max_diff = (actual.double() - expected.double()).abs().max().item()
            base = measure(case.baseline, args.device, repeat)
            ours = measure(case.cora, args.device, repeat)
            speedup = base["median_ms"] / ours["median_ms"]
            results.append({
                "op": case.op, "phase": case.phase, "layout": case.layout, "shape": case.shape,
                "dtype": args.dtype, "baseline": case.baseline_name, "baseline_ms": base, "cora_ms": ours,
                "speedup": speedup, "max_abs_diff": max_diff,
            })
            rows.append([
                case.op, case.phase, case.layout, case.shape, case.baseline_name,
                f"{base['median_ms']:.2f} / {base['p90_ms']:.2f}", f"{ours['median_ms']:.2f} / {ours['p90_ms']:.2f}",
                f"{speedup:.2f}x", f"{max_diff:.1e}",
            ])
    info = machine_info(args.device)
    header = f"cora kernels on {info.get('gpu', info['cpu'])} ({args.device}, {args.dtype}, {info['cpu_threads']} CPU threads, torch {info['torch']}); ms median / p90 of {repeat} runs"
    print(header)
    print(format_table(
        ["op", "pass", "layout", "shape", "baseline", "baseline ms", "cora ms", "speedup", "max |diff|"], rows
    ))
    payload = {"machine": info, "repeat": repeat, "results": results}
    json_path = args.json or os.path.join(args.out_dir, f"kernels-{args.device}-{args.dtype}.json")
    write_json(json_path, payload)
    print(f"wrote {json_path}")
    return payload


def parse_args(argv=None, out_dir: str | None = None) -> argparse.Namespace:
    """`out_dir`: where --json goes by default (benchmarks/kernels.py passes its checkout's results folder);
    None: `cora.bench.common.default_out_dir()`."""
    parser = argparse.ArgumentParser(prog="kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="input dtype (default: fp32)")
    parser.add_argument(
        "--ops", default=",".join(OPS), type=lambda s: s.split(","),
        help=f"comma-separated ops to run, from {', '.join(OPS)} (default: all)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case, after one warm-up (default: 5)")
    parser.add_argument("--quick", action="store_true", help="3 timed runs per case (overrides --repeat)")
    parser.add_argument(
        "--json", default=None,
        help="where to write the results (default: kernels-<device>-<dtype>.json in benchmarks/results/ of a "
             "checkout, else the current folder)",
    )
    args = parser.parse_args(argv)
    args.out_dir = out_dir or default_out_dir()
    unknown = [op for op in args.ops if op not in OPS]
    if unknown:
        parser.error(f"--ops: unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    return args


def main(argv=None, out_dir: str | None = None) -> int:
    run(parse_args(argv, out_dir))
    return 0
