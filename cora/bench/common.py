"""Timing and machine description shared by the benchmark scripts.

`measure` (median / p90 of repeated calls, ms; CUDA events on CUDA) is built on `cora.bench.timing.StageTimer`;
`percentile` is the one p90 rule of every script; `machine_info` and `format_table` describe the run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch

from cora.bench.timing import StageTimer
from cora.fileio import write_json  # noqa: F401  (the scripts' atomic JSON writer)


def measure(fn: Callable[[], object], device: str, repeat: int, warmup: int = 1) -> dict:
    """Runs `fn` `warmup + repeat` times; returns median and p90 wall time in ms.

    CUDA runs are timed with CUDA events around each call (the host only queues the work).
    """
    for _ in range(warmup):
        fn()
    timer = StageTimer(device)
    times = []
    for _ in range(repeat):
        timer.begin("total")
        fn()
        times.append(timer.end()[0])
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": percentile(times, 0.9),
        "runs": len(times),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """The value at rank round(q * (n - 1)) of an ascending list (no interpolation): p90 = percentile(v, 0.9)."""
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def machine_info(device: str) -> dict:
    info = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def default_out_dir() -> str:
    """Where a benchmark writes its results when neither its --out-dir nor an explicit file is given:
    ./benchmarks/results when that folder exists (the root of a source checkout), else the current directory.
    The scripts in benchmarks/ pass their own results folder instead, whatever the current directory."""
    checkout = os.path.join("benchmarks", "results")
    return checkout if os.path.isdir(checkout) else "."


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])
