"""Timers of the benchmark scripts: per-stage wall time (CPU clock or CUDA events), peak memory over a block
of runs, a time budget and a time limit.

- `StageTimer`: stage boundaries inside one run; times in ms, the stages summing to the run's total.
- `PeakMemory`: peak and growth of memory over a block of runs, in bytes (`result()` gives MB), CUDA
  (allocator statistics) or CPU (the process's resident set size).
- `Budget`: seconds spent by one method on one backend, to stop it once they pass a limit.
- `time_limit`: raise `CompileTimeout` after a number of seconds (SIGALRM), for first calls that compile.

`cora.bench.common.measure` (median / p90 of repeated calls) times each call with `StageTimer`. Every module
here imports torch: a script that sets OpenMP's environment (vocab_scaling.py) does so before importing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import signal
import threading
import time

import torch


class StageTimer:
    """Marks stage boundaries during one run: `begin(stage)`, `mark(next_stage)`..., `end()`.

    On CUDA each boundary records a CUDA event (no synchronisation inside the run); on CPU it reads
    `time.perf_counter`. The stage times sum to the run's total by construction.
    """

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.stages: list[str] = []
        self.points: list = []

    @property
    def current(self) -> str | None:
        return self.stages[-1] if self.stages else None

    def _point(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def begin(self, stage: str) -> None:
        self.stages, self.points = [stage], [self._point()]

    def mark(self, stage: str) -> None:
        self.stages.append(stage)
        self.points.append(self._point())

    def end(self) -> tuple[float, dict[str, float]]:
        """Returns (total ms, {stage: ms})."""
        self.points.append(self._point())
        if self.cuda:
            torch.cuda.synchronize()
            deltas = [a.elapsed_time(b) for a, b in zip(self.points, self.points[1:])]
        else:
            deltas = [(b - a) * 1e3 for a, b in zip(self.points, self.points[1:])]
        split: dict[str, float] = {}
        for stage, ms in zip(self.stages, deltas):
            split[stage] = split.get(stage, 0.0) + ms
        return sum(deltas), split


class PeakMemory:
    """Peak memory over a block of runs.

    CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (peak) and its growth over
    `memory_allocated` before the runs (delta). CPU: the process's peak resident set size (VmHWM in
    /proc/self/status), reset to the current RSS before the runs by writing 5 to /proc/self/clear_refs
    (Linux >= 4.0), and its growth over the RSS before the runs; no allocation tracing, so no slow-down.
    Free heap memory is handed back first (`gc.collect` + glibc `malloc_trim(0)`): otherwise a cell reusing
    pages that an earlier cell freed but the allocator kept resident would show no growth.
    Where clear_refs cannot be written: growth of `getrusage().ru_maxrss`, the all-time peak (a lower bound).
    """

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            self.method = "torch.cuda.max_memory_allocated (peak) - memory_allocated before the runs (delta)"
        elif _reset_peak_rss():
            self.method = ("peak RSS (VmHWM, reset through /proc/self/clear_refs before the runs) - "
                           "RSS before the runs, after gc + malloc_trim (delta)")
        else:
            self.method = "growth of getrusage ru_maxrss (all-time peak RSS; a lower bound of the delta)"

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        elif self.method.startswith("peak RSS"):
            _release_free_heap()
            _reset_peak_rss()
            self.before = _proc_status_kb("VmRSS") * 1024
        else:
            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("peak RSS"):
            self.peak = _proc_status_kb("VmHWM") * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.delta = max(0, self.peak - self.before)

    def result(self) -> dict:
        return {"peak_mb": round(self.peak / 2**20, 1), "delta_mb": round(self.delta / 2**20, 1), "of": self.device}


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def _proc_status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Budget:
    """Seconds the baseline may spend on one backend, counted over its own cells only (warm-up included)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = 0.0

    @contextlib.contextmanager
    def counting(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.spent += time.perf_counter() - start

    def exhausted(self, since: float) -> bool:
        """True if the time spent before this cell plus the cell's time since `since` reaches the budget."""
        return self.spent + (time.perf_counter() - since) >= self.seconds


class CompileTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise CompileTimeout in the main thread after `seconds` (SIGALRM; no limit elsewhere or for None)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise CompileTimeout(f"compilation took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
