"""The measurement protocol of cora.bench.vocab_scaling: cells of (method, backend, K).

`measure_cell` runs one cell: `prepare(K)`, warm-up runs (the first one under the compile time limit), then
timed runs inside `PeakMemory`; it returns a result dict of the JSON's "results" list: latency in ms
({"median", "p90", "runs", "all"}), memory in MB, the 1-minute load average after the cell, the first call's
seconds and, for eager, the median ms per stage. `run_cells` runs every cell, K ascending, with a progress
bar on stderr, and enforces the baseline's per-backend time budget: once it is spent, the baseline's
remaining K are recorded with status `STOPPED`, never projected.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch

from cora.bench.common import percentile
from cora.bench.timing import Budget, CompileTimeout, PeakMemory, StageTimer, time_limit
from cora.bench.vocab_backends import Runner, first_line

STOPPED = "stopped at budget"


def measure_cell(runner: Runner, k: int, device: str, warmup: int, repeat: int, budget: Budget | None,
                 progress) -> dict:
    """Warm-up and timed runs of one (method, backend, K). `budget` (the baseline's) is checked before
    each run; a run that has started finishes."""
    cell_start = time.perf_counter()
    runner.prepare(k)
    result = {"method": runner.method, "backend": runner.backend, "K": k}
    timer = StageTimer(runner.clock or device)
    first_call_s = None
    for i in range(warmup):
        if budget is not None and budget.exhausted(cell_start):
            progress.update(warmup - i + repeat)
            return {**result, "status": STOPPED}
        start = time.perf_counter()
        with time_limit(runner.warmup_limit_s if i == 0 else None):
            with torch.inference_mode():
                runner.run(timer)
            timer.end()
        if i == 0:
            first_call_s = time.perf_counter() - start
        progress.update(1)
    totals, splits = [], []
    memory_device = device if runner.memory == "device" else runner.memory
    with PeakMemory(memory_device or "cpu") as memory:
        for i in range(repeat):
            if budget is not None and budget.exhausted(cell_start):
                progress.update(repeat - i)
                break
            with torch.inference_mode():
                runner.run(timer)
            total, split = timer.end()
            totals.append(total)
            splits.append(split)
            progress.update(1)
    if not totals:
        return {**result, "status": STOPPED}
    ordered = sorted(totals)
    result.update(
        status="ok",
        load_1m=round(os.getloadavg()[0], 2),
        latency_ms={"median": statistics.median(ordered), "p90": percentile(ordered, 0.9), "runs": len(ordered),
                    "all": [round(t, 3) for t in totals]},
        memory=memory.result() if memory_device else None,
        first_call_s=round(first_call_s, 3) if first_call_s is not None else None,
    )
    if len(totals) < repeat:
        result["note"] = f"{STOPPED} after {len(totals)} of {repeat} timed runs"
    if runner.stages is not None:
        result["stages_ms"] = {s: statistics.median(sp.get(s, 0.0) for sp in splits) for s in runner.stages}
    return result


def run_cells(args, runners: list[Runner], statuses: dict, baseline) -> list[dict]:
    """Every (backend, K, method) cell in turn, K ascending, with a progress bar. The baseline's budget is
    per backend; once it is spent, its remaining K are recorded as stopped. A backend other than eager that
    fails gets its reason in `statuses` and its remaining cells are skipped."""
    from tqdm import tqdm

    results = []
    total_runs = len(runners) * len(args.vocab_sizes) * (args.warmup + args.repeat)
    with tqdm(total=total_runs, desc="vocab_scaling", unit="run", file=sys.stderr, disable=args.no_progress,
              dynamic_ncols=True) as progress:
        for backend in [b for b in args.backends if statuses[b] is None]:
            budget = Budget(args.budget_s)
            stopped = False
            for k in args.vocab_sizes:
                for runner in [r for r in runners if r.backend == backend]:
                    progress.set_postfix_str(f"{backend} {runner.method} K={k}")
                    is_baseline = runner.method == "conditional"
                    if (is_baseline and stopped) or statuses[backend] is not None:
                        progress.update(args.warmup + args.repeat)
                        if is_baseline and stopped:
                            results.append({"method": runner.method, "backend": backend, "K": k, "status": STOPPED})
                        continue
                    try:
                        with budget.counting() if is_baseline else contextlib.nullcontext():
                            cell = measure_cell(runner, k, args.device, args.warmup, args.repeat,
                                                budget if is_baseline else None, progress)
                    except CompileTimeout as e:
                        statuses[backend] = f"skipped: {first_line(e)} on the first call (K={k})"
                        progress.update(args.warmup + args.repeat)
                        continue
                    except Exception as e:  # noqa: BLE001
                        if backend == "eager":
                            raise
                        statuses[backend] = f"failed at K={k}: {type(e).__name__}: {first_line(e)}"
                        progress.update(args.warmup + args.repeat)
                        continue
                    cell["decoder_passes"] = baseline.num_passes(k) if is_baseline else 1
                    if is_baseline:
                        stopped = cell["status"] == STOPPED or "note" in cell
                    results.append(cell)
    # A backend that failed part-way keeps the cells it measured.
    return [r for r in results if statuses[r["backend"]] is None or r.get("status") == "ok"]
