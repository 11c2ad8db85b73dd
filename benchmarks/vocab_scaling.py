"""Latency vs vocabulary size K: CORA's anchor pre-matching against OV-DETR-style conditional matching.

    python benchmarks/vocab_scaling.py                                  # cpu-quick: RN50 shapes, < 3 min on 2 cores
    python benchmarks/vocab_scaling.py --preset paper --device cuda --dtype fp16 \\
        --backends eager,compile,onnxruntime,tensorrt --json benchmarks/results/vocab_scaling-h100.json
    python benchmarks/vocab_scaling.py --preset smoke                   # tiny model, seconds (tests)

CORA pre-matches its anchors to classes and decodes once for any K; OV-DETR conditions its queries on
classes and decodes once per chunk of 15 classes (`benchmarks/conditional_baseline.py`, built on the same
backbone and localizer). For each K and backend this prints, writes as JSON and plots the median and p90
latency per image of both, their peak memory and, for eager, the time per stage.

| preset    | model                 | input      | CORA queries | baseline queries / pass | K                     | runs        |
| --------- | --------------------- | ---------- | ------------ | ----------------------- | --------------------- | ----------- |
| smoke     | `tiny` (tests)        | 128 x 192  | 20           | 15 x 1                  | 1, 16                 | 0 + 1       |
| cpu-quick | RN50, random weights  | 256 x 384  | 100          | 15 x 2                  | 1 .. 4096 (6 values)  | 1 + 5       |
| paper     | RN50, random weights  | 800 x 1344 | 1000         | 15 x 20                 | 1 .. 4096 (6 values)  | 3 + 10      |

(runs: warm-up + timed, per cell). The baseline's queries per class default to 20 x Q / 1000 (20 at
CORA's Q = 1000, as the issue fixes; scaled with Q so that reduced presets keep the paper's ratio).

What is timed: one image (B = 1) already resized and padded (pre-processing excluded), from pixel
normalisation to detections (post-processing included); the text encoder is not timed: the class
embeddings are pre-computed random unit vectors [K, D]. Weights are random: latency does not depend on
weight values, except in CORA's post-processing, whose NMS input (at most `pre_nms_topk` pairs above the
score threshold) depends on the scores. CUDA runs are timed with CUDA events.

Backends: eager (always; with the per-stage split); compile (`torch.compile` of CORA's forward and of the
baseline's backbone, encoder and per-chunk decoder; retried with inductor's pattern matcher off if the
default fails, and skipped with the reason if compiling fails or passes --compile-timeout-s);
onnxruntime (CORA exported by export/to_onnx.py, run by cora.runtime.onnx.OnnxDetector's session);
tensorrt (export/to_trt.py + cora.runtime.tensorrt; untested: no TensorRT on the development machines).
The exported backends run CORA only (the baseline has no exported graph). A backend that is not available
is listed with its reason, never an error. cpu-quick runs eager only by default, to stay under 3 minutes:
onnxruntime adds about 1 minute (export ~25 s + runs), compile several minutes on 2 cores.

The baseline stops when its time on one backend passes --budget-s (checked before each run): its
remaining K are recorded as "stopped at budget", never projected.

On CPU the script sets GOMP_SPINCOUNT=10000 before torch loads OpenMP, unless OMP_WAIT_POLICY or
GOMP_SPINCOUNT is already set (see the comment at the import of torch); the header states the setting.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import difflib
import gc
import importlib.util
import os
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

# libgomp reads its settings once, when torch loads it, so they are set before `import torch`; values the
# user gives (OMP_WAIT_POLICY or GOMP_SPINCOUNT) win. With libgomp's default (spin ~300k iterations at each
# barrier, then sleep), the shared 2-core development VM degrades badly when another process holds a core:
# the cpu-quick CORA forward went from 1.0 s to 8.3 s. A short spin (10k) measured the same as the default
# on a quiet machine (CORA 1.04 / 1.05 s, baseline at K=1203 1.26 / 1.27 s) and 2.4 s under that load.
# OMP_WAIT_POLICY=PASSIVE (no spin) is robust too but slowed the baseline's many small ops 1.7x when quiet.
if "torch" in sys.modules:
    OPENMP_SETTING = "inherited (torch was imported before this script)"
elif "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
    OPENMP_SETTING = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ)
else:
    os.environ["GOMP_SPINCOUNT"] = "10000"
    OPENMP_SETTING = "GOMP_SPINCOUNT=10000 (set by this script)"

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import format_table, machine_info, write_json  # noqa: E402

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
METHODS = {"cora": "CORA (anchor pre-matching)", "conditional": "OV-DETR-style conditional matching"}
CORA_STAGES = ("backbone", "pre-matching", "localizer", "region classification", "post-processing")
BASELINE_STAGES = ("backbone", "encoder", "decoder", "post-processing")
STOPPED = "stopped at budget"


@dataclass(frozen=True)
class Preset:
    model: str                      # a cora.config preset
    overrides: tuple[str, ...]      # applied with cora.config.apply_overrides
    image_size: tuple[int, int]     # (H, W) of the padded input, multiples of 32
    vocab_sizes: tuple[int, ...]
    backends: tuple[str, ...]       # default --backends
    warmup: int
    repeat: int
    budget_s: float                 # default --budget-s (baseline, per backend)
    device: str                     # default --device
    note: str


PRESETS: dict[str, Preset] = {
    "smoke": Preset("tiny", (), (128, 192), (1, 16), ("eager",), 0, 1, 60.0, "cpu",
                    "tiny model: a test of the script, not a measurement"),
    "cpu-quick": Preset("rn50_coco", ("backbone.pretrained=null", "localizer.num_queries=100"), (256, 384),
                        (1, 16, 65, 256, 1203, 4096), ("eager",), 1, 5, 75.0, "cpu",
                        "RN50 shapes at a reduced resolution and query count, to finish in < 3 min on 2 CPU cores; "
                        "default backends: eager only (compile / onnxruntime do not fit 3 min on 2 cores)"),
    "paper": Preset("rn50_coco", ("backbone.pretrained=null",), (800, 1344), (1, 16, 65, 256, 1203, 4096),
                    ("eager", "compile", "onnxruntime", "tensorrt"), 3, 10, 300.0, "cuda",
                    "the paper's RN50 setting (800 x 1344, 1000 queries), for GPUs"),
}

# One row per backend: what runs it, and whether the baseline runs on it too.
BACKENDS: dict[str, str] = {
    "eager": "PyTorch eager, with the per-stage split",
    "compile": "torch.compile (default mode) of CORA's forward and the baseline's stages",
    "onnxruntime": "CORA's ONNX graph (export/to_onnx.py) in ONNX Runtime (cora.runtime.onnx.OnnxDetector)",
    "tensorrt": "CORA's TensorRT engine (export/to_trt.py)",
}


# ----------------------------------------------------------------------------------------------- timing

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


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


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


# ------------------------------------------------------------------------------------------- the cells

@dataclass
class Runner:
    """One (method, backend): `prepare(K)` sets up the vocabulary, `run(timer)` processes the image once,
    marking its stages on `timer` (begin ... end is the timed span)."""

    method: str
    backend: str
    prepare: Callable[[int], None]
    run: Callable[[StageTimer], None]
    stages: tuple[str, ...] | None   # the stage split it reports (None: total only)
    warmup_limit_s: float | None = None
    clock: str | None = None          # "cpu" for runtimes that return after the work is done; None: --device
    memory: str | None = "device"     # where peak memory is read: "device" (= --device), "cpu", "cuda", None (not)


def build_models(cfg, device: str, dtype: torch.dtype, queries_per_class: int, seed: int):
    """CORA with random weights drawn after `torch.manual_seed(seed)` (export_onnx draws the same ones)
    and the baseline sharing its backbone and localizer."""
    from benchmarks.conditional_baseline import ConditionalMatchingBaseline
    from cora.modeling.detector import CORA

    torch.manual_seed(seed)
    model = CORA.from_config(cfg, random_init=True).eval().to(device=device, dtype=dtype)
    baseline = ConditionalMatchingBaseline.from_detector(model, queries_per_class=queries_per_class).eval()
    return model, baseline


class Inputs:
    """The image (fixed) and the text embeddings of the current K (pre-computed random unit vectors)."""

    def __init__(self, image_size: tuple[int, int], text_dim: int, device: str, dtype: torch.dtype, seed: int):
        g = torch.Generator().manual_seed(seed)
        h, w = image_size
        self.images = torch.rand(1, 3, h, w, generator=g).to(device=device, dtype=dtype)
        self.sizes = torch.tensor([[h, w]], device=device)
        self.text_dim, self.device, self.dtype, self.seed = text_dim, device, dtype, seed
        self.k = 0
        self.text = None

    def set_vocabulary(self, k: int) -> None:
        if k != self.k:
            g = torch.Generator().manual_seed(self.seed + k)
            text = torch.nn.functional.normalize(torch.randn(k, self.text_dim, generator=g), dim=-1)
            self.text, self.k = text.to(device=self.device, dtype=self.dtype), k


def cora_runner(model, inputs: Inputs, backend: str, compile_timeout_s: float | None) -> Runner:
    from cora.modeling.postprocess import postprocess

    ic = model.cfg.inference

    def detections(out) -> None:
        postprocess(out["class_logits"], out["objectness"][-1], out["boxes"][-1], inputs.sizes,
                    ic.score_threshold, ic.nms_iou, ic.max_detections, ic.pre_nms_topk)

    if backend == "eager":
        def run(timer: StageTimer) -> None:
            with _cora_stage_hooks(model, timer):
                timer.begin("backbone")
                out = model(inputs.images, inputs.sizes, inputs.text)
            timer.mark("post-processing")
            detections(out)

        return Runner("cora", backend, inputs.set_vocabulary, run, CORA_STAGES)
    if backend == "compile":
        compiled = CompiledWithFallback(model)

        def run(timer: StageTimer) -> None:
            timer.begin("total")
            detections(compiled(inputs.images, inputs.sizes, inputs.text))

        return Runner("cora", backend, inputs.set_vocabulary, run, None, compile_timeout_s)
    raise ValueError(f"no CORA runner for backend {backend!r}")


@contextlib.contextmanager
def _cora_stage_hooks(model, timer: StageTimer):
    """Module hooks that mark CORA's stages inside `CORA.forward` (the model's own code runs, unchanged),
    registered for one run only (they would break torch.compile graphs).

    backbone: normalisation + stem..layer3. pre-matching: layer4 on the whole map (it only feeds the
    pre-matching) + RoIAlign + prompted attention pool per anchor + cosine / argmax + text projection.
    localizer: padding mask + encoder + decoder + box / objectness heads. region classification: boxes to
    pixels + RoIAlign + layer4 + attention pool per box + cosine with the K classes.
    """
    def layer4(*args) -> None:
        # layer4 also runs per box in the region classifier: only its first call (the whole map) is a boundary.
        if timer.current == "backbone":
            timer.mark("pre-matching")

    handles = [
        model.backbone.visual.layer4.register_forward_pre_hook(layer4),
        model.localizer.register_forward_pre_hook(lambda *a: timer.mark("localizer")),
        model.localizer.register_forward_hook(lambda *a: timer.mark("region classification")),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def baseline_runner(baseline, inputs: Inputs, backend: str, compile_timeout_s: float | None) -> Runner:
    from benchmarks.conditional_baseline import ConditionalMatchingBaseline, postprocess_conditional

    if backend == "compile":
        # A second instance sharing the same backbone and localizer, so the eager one stays eager.
        shared = baseline
        baseline = ConditionalMatchingBaseline(
            shared.backbone, shared.localizer, shared.text_dim, shared.classes_per_pass, shared.queries_per_class,
            shared.max_detections).to(inputs.device, inputs.dtype).eval()
        for name in ("query_anchors", "query_content", "text_to_query"):  # its own weights; the rest is shared
            getattr(baseline, name).load_state_dict(getattr(shared, name).state_dict())
        baseline.compile_stages(CompiledWithFallback)
    elif backend != "eager":
        raise ValueError(f"no baseline runner for backend {backend!r}")
    eager = backend == "eager"

    def run(timer: StageTimer) -> None:
        timer.begin("backbone" if eager else "total")
        out = baseline(inputs.images, inputs.sizes, inputs.text, mark=timer.mark if eager else _ignore)
        if eager:
            timer.mark("post-processing")
        postprocess_conditional(out["logits"], out["boxes"], inputs.sizes, baseline.queries_per_class,
                                baseline.max_detections)

    return Runner("conditional", backend, inputs.set_vocabulary, run, BASELINE_STAGES if eager else None,
                  None if eager else compile_timeout_s)


class CompiledWithFallback:
    """`torch.compile(fn)` (inductor, default options); if compiling fails, once more with inductor's pattern
    matcher off, noted in `NOTES`. In torch 2.14.1 the pattern matcher's attention fusion
    (`fuse_attention._sfdp_replacement_29`) fails on the DAB decoder's attention with a broadcast error."""

    NOTES: set[str] = set()

    def __init__(self, fn: Callable):
        self.fn = fn
        self.compiled = torch.compile(fn)
        self.fallback = False

    def __call__(self, *args, **kwargs):
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - torch._dynamo.exc.BackendCompilerFailed and friends
            timeout = _cause_of_kind(e, CompileTimeout)  # dynamo may wrap the alarm's exception
            if timeout is not None:
                raise CompileTimeout(_first_line(timeout)) from e
            if self.fallback:
                raise
            self.fallback = True
            CompiledWithFallback.NOTES.add(f"inductor pattern matcher off (default options failed: "
                                           f"{type(e).__name__}: {_first_line(e)})")
            self.compiled = torch.compile(self.fn, options={"pattern_matcher": False})
            return self.compiled(*args, **kwargs)


def _cause_of_kind(e: BaseException | None, kind: type) -> BaseException | None:
    """`e` or the first exception of type `kind` in its chain of causes, else None."""
    while e is not None:
        if isinstance(e, kind):
            return e
        e = e.__cause__ or e.__context__
    return None


def _ignore(stage: str) -> None:
    pass


# --------------------------------------------------------------------------------- backend availability

def backend_status(backend: str, device: str, dtype: str) -> str | None:
    """None if `backend` can run here, else the reason it cannot."""
    if backend == "eager":
        return None
    if backend == "compile":
        return None  # compile failures and time-outs are caught per run and reported
    if backend == "onnxruntime":
        missing = [p for p in ("export/to_onnx.py", "cora/runtime/onnx.py")
                   if not os.path.isfile(os.path.join(ROOT, p))]
        if missing:
            return f"unavailable: {' and '.join(missing)} not in this tree yet (the ONNX export is built separately)"
        if importlib.util.find_spec("onnxruntime") is None:
            return "unavailable: onnxruntime not installed"
        if dtype != "fp32":
            return f"unavailable: the ONNX graph is float32 (got --dtype {dtype})"
        return None
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "unavailable: TensorRT not installed"
        if device != "cuda":
            return "unavailable: TensorRT needs --device cuda"
        missing = [p for p in ("export/to_onnx.py", "export/to_trt.py", "cora/runtime/tensorrt.py")
                   if not os.path.isfile(os.path.join(ROOT, p))]
        if missing:
            return f"unavailable: {' and '.join(missing)} not in this tree"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def export_onnx(cfg, args, directory: str) -> tuple[str, float]:
    """CORA (fp32, CPU, the benchmark's seed: the same weights) -> `<directory>/cora.onnx` through
    export/to_onnx.py, static input size. Returns (path, seconds); the export is not timed."""
    from cora.modeling.detector import CORA
    from export.to_onnx import export_detector

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = CORA.from_config(cfg, random_init=True).eval()
    path = os.path.join(directory, "cora.onnx")
    preset = PRESETS[args.preset]
    source = {"preset": preset.model, "overrides": list(preset.overrides) + list(args.set), "checkpoint": None,
              "clip_weights": None, "random_init": True, "seed": args.seed}
    export_detector(model, cfg, path, source=source, image_size=args.image_size)
    return path, time.perf_counter() - start


def exported_runner(backend: str, detector, inputs: Inputs, images, memory: str | None) -> Runner:
    """A `cora.runtime` detector (OnnxDetector, TensorRTDetector) on the already padded image: its graph
    runs normalisation -> detections, as eager's forward + postprocess. Its `detect` would add the
    letterbox resize (pre-processing), so the graph is called directly: ONNX Runtime's `session.run`,
    TensorRT's `_run` (feeds, execution, stream synchronisation)."""
    import numpy as np

    feed: dict = {}

    def prepare(k: int) -> None:
        inputs.set_vocabulary(k)
        feed.update(text=inputs.text.float().cpu().numpy(), prior=np.ones(k, dtype=np.float32))

    # The image fills the whole input (no padding): its valid size is the input size, as eager's inputs.sizes.
    image_sizes = inputs.sizes.cpu().numpy().astype(np.int64)  # [1, 2] (h, w)
    if backend == "onnxruntime":
        names = ["boxes", "scores", "labels"]

        def call() -> None:
            detector.session.run(names, {"images": images, "image_sizes": image_sizes, "text_embeddings": feed["text"],
                                         "class_prior": feed["prior"]})
    else:
        def call() -> None:
            detector._run(images, image_sizes, feed["text"], feed["prior"])

    def run(timer: StageTimer) -> None:
        timer.begin("total")
        call()

    return Runner("cora", backend, prepare, run, None, clock="cpu", memory=memory)


# ---------------------------------------------------------------------------------------------- the run

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
        latency_ms={"median": statistics.median(ordered), "p90": _percentile(ordered, 0.9), "runs": len(ordered),
                    "all": [round(t, 3) for t in totals]},
        memory=memory.result() if memory_device else None,
        first_call_s=round(first_call_s, 3) if first_call_s is not None else None,
    )
    if len(totals) < repeat:
        result["note"] = f"{STOPPED} after {len(totals)} of {repeat} timed runs"
    if runner.stages is not None:
        result["stages_ms"] = {s: statistics.median(sp.get(s, 0.0) for sp in splits) for s in runner.stages}
    return result


def run(args: argparse.Namespace) -> dict:
    from cora.config import apply_overrides, config_to_dict, get_preset

    started = time.perf_counter()
    preset = PRESETS[args.preset]
    device, dtype = args.device, DTYPES[args.dtype]
    if device == "cuda" and not torch.cuda.is_available():
        origin = "" if args.device_given else f" (the {args.preset} preset's default)"
        raise BenchmarkError(f"--device cuda{origin} but torch sees no CUDA GPU; pass --device cpu to run it here")
    cfg = apply_overrides(get_preset(preset.model), list(preset.overrides) + list(args.set))
    queries_per_class = args.baseline_queries_per_class or max(1, round(20 * cfg.localizer.num_queries / 1000))
    model, baseline = build_models(cfg, device, dtype, queries_per_class, args.seed)
    inputs = Inputs(args.image_size, model.backbone.embed_dim, device, dtype, args.seed)
    statuses = {b: backend_status(b, device, args.dtype) for b in args.backends}
    CompiledWithFallback.NOTES.clear()

    with tempfile.TemporaryDirectory(prefix="vocab_scaling-") as workdir:
        runners, exported = setup_runners(args, cfg, model, baseline, inputs, statuses, workdir)
        info = {**machine_info(device), "openmp": OPENMP_SETTING}
        shapes = describe_shapes(cfg, args, model, baseline)
        print("\n".join(header_lines(args, preset, info, shapes, statuses)), flush=True)
        results = run_cells(args, runners, statuses, baseline)
    final = final_statuses(statuses, exported)

    summary = summarize(results, args.vocab_sizes)
    payload = {
        "benchmark": "vocab_scaling",
        "preset": args.preset,
        "machine": info,
        "dtype": args.dtype,
        "shapes": shapes,
        "timed_path": ("one image (B=1), already resized and padded: pre-processing excluded; pixel normalisation "
                       "to detections, post-processing included; text encoder excluded (pre-computed random unit "
                       f"text embeddings [K, {model.backbone.embed_dim}])"),
        "weights": ("random: latency does not depend on weight values, except CORA's NMS input (at most "
                    f"pre_nms_topk={cfg.inference.pre_nms_topk} pairs above the score threshold)"),
        "memory_method": PeakMemory(device).method,
        "settings": {"warmup": args.warmup, "repeat": args.repeat, "budget_s": args.budget_s,
                     "vocab_sizes": list(args.vocab_sizes), "backends": list(args.backends),
                     "compile_timeout_s": args.compile_timeout_s, "seed": args.seed},
        "backends": final,
        "config": config_to_dict(cfg),
        "results": results,
        "summary": summary,
    }
    print()
    print(results_table(results))
    for method, title in METHODS.items():
        stage_rows = [r for r in results if r["method"] == method and "stages_ms" in r]
        if stage_rows:
            print()
            print(f"{title}, eager, ms per stage (median of each stage over the timed runs):")
            print(stage_table(stage_rows))
    print()
    print("backends: " + "; ".join(f"{b}: {s}" for b, s in final.items()))
    print("\n".join(summary_lines(summary)))
    busy = busy_cells(results, info["cpu_threads"])
    if busy:
        payload["warning"] = (f"other processes shared the CPU: 1-minute load average above {info['cpu_threads'] + 1} "
                              f"(this run's threads + 1) after {len(busy)} cell(s) ({', '.join(busy)}); "
                              "their timings are disturbed, rerun on a quiet machine")
        print(f"warning: {payload['warning']}")
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    json_path = args.json or default_path(args, "json")
    plot_path = args.plot or default_path(args, "png")
    write_json(json_path, payload)
    plot(payload, plot_path)
    print(f"\nwrote {json_path} and {plot_path} ({payload['wall_s']:.0f} s)")
    return payload


def setup_runners(args, cfg, model, baseline, inputs: Inputs, statuses: dict, workdir: str) -> tuple[list, dict]:
    """The runners of every available backend (eager and compile: CORA and the baseline; onnxruntime and
    tensorrt: CORA's exported graph). A backend that cannot be set up gets its reason in `statuses`."""
    runners: list[Runner] = []
    exported: dict = {}
    for backend in args.backends:
        if statuses[backend] is not None:
            continue
        try:
            if backend in ("eager", "compile"):
                runners.append(cora_runner(model, inputs, backend, args.compile_timeout_s))
                runners.append(baseline_runner(baseline, inputs, backend, args.compile_timeout_s))
                continue
            if "onnx" not in exported:
                print("exporting CORA to ONNX (export/to_onnx.py; not timed) ...", file=sys.stderr, flush=True)
                exported["onnx"], exported["export_s"] = export_onnx(cfg, args, workdir)
            if backend == "onnxruntime":
                from cora.runtime.onnx import OnnxDetector

                detector = OnnxDetector(exported["onnx"])
                images = inputs.images.float().cpu().numpy()
                providers = detector.session.get_providers()
                exported["onnxruntime"] = (f"providers {', '.join(providers)}; its memory arena keeps buffers "
                                           "between runs, so memory growth shows at the first K only")
                memory = "cuda" if "CUDAExecutionProvider" in providers and args.device == "cuda" else "cpu"
            else:
                from cora.runtime.tensorrt import TensorRTDetector
                from export.to_trt import build_engine

                engine = os.path.join(workdir, "cora.engine")
                h, w = args.image_size
                ks = args.vocab_sizes
                build_engine(exported["onnx"], engine, fp16=args.dtype == "fp16",
                             vocab_profile=[ks[0], ks[len(ks) // 2], ks[-1]], image_profile=[h, w, h, w, h, w],
                             batch_profile=[1, 1, 1], workspace_gib=4.0)
                detector = TensorRTDetector(engine, device=args.device)
                images = inputs.images.float()
                exported["tensorrt"] = (f"engine {'fp16' if args.dtype == 'fp16' else 'fp32'} from export/to_trt.py; "
                                        "memory not measured: TensorRT allocates outside torch")
                memory = None
            runners.append(exported_runner(backend, detector, inputs, images, memory))
        except Exception as e:  # noqa: BLE001 - a backend that cannot be set up is reported, not fatal
            statuses[backend] = f"failed to set up: {type(e).__name__}: {_first_line(e)}"
            runners = [r for r in runners if r.backend != backend]
    return runners, exported


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
                        statuses[backend] = f"skipped: {_first_line(e)} on the first call (K={k})"
                        progress.update(args.warmup + args.repeat)
                        continue
                    except Exception as e:  # noqa: BLE001
                        if backend == "eager":
                            raise
                        statuses[backend] = f"failed at K={k}: {type(e).__name__}: {_first_line(e)}"
                        progress.update(args.warmup + args.repeat)
                        continue
                    cell["decoder_passes"] = baseline.num_passes(k) if is_baseline else 1
                    if is_baseline:
                        stopped = cell["status"] == STOPPED or "note" in cell
                    results.append(cell)
    # A backend that failed part-way keeps the cells it measured.
    return [r for r in results if statuses[r["backend"]] is None or r.get("status") == "ok"]


def final_statuses(statuses: dict, exported: dict) -> dict:
    final = {b: ("run" if s is None else s) for b, s in statuses.items()}
    if final.get("compile") == "run" and CompiledWithFallback.NOTES:
        final["compile"] = "run, " + "; ".join(sorted(CompiledWithFallback.NOTES))
    for backend in ("onnxruntime", "tensorrt"):
        if final.get(backend) == "run":
            final[backend] = (f"run ({exported[backend]}; ONNX export {exported['export_s']:.0f} s, not timed; "
                              "CORA only: the baseline has no exported graph)")
    return final


def describe_shapes(cfg, args, model, baseline) -> dict:
    lc = cfg.localizer
    h, w = args.image_size
    return {
        "clip_model": cfg.backbone.clip_model,
        "image": [1, 3, h, w],
        "layer3_map": [model.backbone.layer3_channels, h // 16, w // 16],
        "text_dim": int(model.backbone.embed_dim),
        "cora_queries": lc.num_queries,
        "localizer": {"hidden_dim": lc.hidden_dim, "heads": lc.num_heads, "encoder_layers": lc.num_encoder_layers,
                      "decoder_layers": lc.num_decoder_layers, "ffn": lc.dim_feedforward},
        "baseline": {"classes_per_pass": baseline.classes_per_pass, "queries_per_class": baseline.queries_per_class,
                     "queries_per_pass": baseline.queries_per_pass, "max_detections": baseline.max_detections},
        "cora_postprocess": {"pre_nms_topk": cfg.inference.pre_nms_topk,
                             "max_detections": cfg.inference.max_detections},
    }


def header_lines(args, preset: Preset, info: dict, shapes: dict, statuses: dict) -> list[str]:
    where = info.get("gpu", info["cpu"])
    extra = f", CUDA {info['cuda']}" if "cuda" in info else ""
    b, lc = shapes["baseline"], shapes["localizer"]
    lines = [
        f"vocab_scaling ({args.preset}: {preset.note})",
        f"machine: {where} ({args.device}, {info['cpu_threads']} CPU threads, {info['openmp']}), "
        f"torch {info['torch']}{extra}, {args.dtype}, {info['date']}",
        f"shapes: {shapes['clip_model']} (random weights: latency does not depend on weight values), input "
        f"{'x'.join(map(str, shapes['image']))}, layer3 map {'x'.join(map(str, shapes['layer3_map']))}, text dim "
        f"{shapes['text_dim']}; localizer d={lc['hidden_dim']}, {lc['heads']} heads, {lc['encoder_layers']} encoder / "
        f"{lc['decoder_layers']} decoder layers, FFN {lc['ffn']}",
        f"  CORA: {shapes['cora_queries']} anchors, one decoder pass for any K; baseline (OV-DETR-style): "
        f"{b['classes_per_pass']} classes x {b['queries_per_class']} queries = {b['queries_per_pass']} queries per "
        f"pass, ceil(K/{b['classes_per_pass']}) passes, encoder once",
        "timed: B=1 image already resized + padded (pre-processing excluded) -> detections (post-processing "
        "included); text encoder excluded (pre-computed random text embeddings)",
        f"runs per cell: {args.warmup} warm-up + {args.repeat} timed; baseline budget {args.budget_s:g} s per "
        f"backend (checked before each run, never projected)",
        f"memory: {PeakMemory(args.device).method}",
        "backends: " + "; ".join(f"{b}: {'to run' if s is None else s}" for b, s in statuses.items()),
    ]
    not_requested = [b for b in BACKENDS if b not in statuses]
    if not_requested:
        lines.append(f"  not requested: {', '.join(not_requested)} (pass --backends to add them)")
    return lines


def _fmt_ms(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def results_table(results: list[dict]) -> str:
    cora = {(r["backend"], r["K"]): r for r in results if r["method"] == "cora" and r["status"] == "ok"}
    rows = []
    for r in results:
        ok = r["status"] == "ok"
        lat = r.get("latency_ms", {})
        speedup = ""
        if r["method"] == "conditional" and ok and (r["backend"], r["K"]) in cora:
            speedup = f"{lat['median'] / cora[(r['backend'], r['K'])]['latency_ms']['median']:.2f}x"
        rows.append([
            "CORA" if r["method"] == "cora" else "OV-DETR-style", r["backend"], str(r["K"]),
            str(r.get("decoder_passes", "")),
            _fmt_ms(lat["median"]) if ok else r["status"], _fmt_ms(lat["p90"]) if ok else "",
            str(lat["runs"]) if ok else "", f"{r['memory']['peak_mb']:.0f}" if ok and r["memory"] else "",
            f"{r['memory']['delta_mb']:.0f}" if ok and r["memory"] else "", speedup,
        ])
    return format_table(["method", "backend", "K", "passes", "median ms", "p90 ms", "runs", "peak MB", "delta MB",
                         "baseline / CORA"], rows)


def stage_table(rows: list[dict]) -> str:
    """One row per K, one column per stage of that method (rows of one method)."""
    stages = list(dict.fromkeys(s for r in rows for s in r["stages_ms"]))
    body = [[str(r["K"]), str(r.get("decoder_passes", ""))] + [_fmt_ms(r["stages_ms"][s]) for s in stages]
            + [_fmt_ms(r["latency_ms"]["median"])] for r in rows]
    return format_table(["K", "passes"] + stages + ["total (median)"], body)


def busy_cells(results: list[dict], threads: int) -> list[str]:
    """Cells after which the 1-minute load average exceeded this run's threads + 1 (a heuristic: the load
    average lags and smooths, so it flags sustained competition, not short bursts)."""
    return [f"{r['method']} {r['backend']} K={r['K']}" for r in results
            if r.get("load_1m") is not None and r["load_1m"] > threads + 1]


def summarize(results: list[dict], vocab_sizes) -> dict:
    """Per backend: CORA's flatness latency(K max) / latency(K min) and the speedup over the baseline per K."""
    summary: dict = {"cora_flatness": {}, "speedup": {}}
    for backend in dict.fromkeys(r["backend"] for r in results):
        cora = {r["K"]: r for r in results if r["backend"] == backend and r["method"] == "cora" and r["status"] == "ok"}
        base = {r["K"]: r for r in results if r["backend"] == backend and r["method"] == "conditional"}
        if len(cora) >= 2:
            lo, hi = min(cora), max(cora)
            summary["cora_flatness"][backend] = {
                "K_min": lo, "K_max": hi,
                "ratio": cora[hi]["latency_ms"]["median"] / cora[lo]["latency_ms"]["median"]}
        if base:
            summary["speedup"][backend] = {
                str(k): (base[k]["latency_ms"]["median"] / cora[k]["latency_ms"]["median"]
                         if base[k]["status"] == "ok" else base[k]["status"])
                for k in vocab_sizes if k in base and k in cora}
    return summary


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for backend, f in summary["cora_flatness"].items():
        lines.append(f"{backend}: CORA flatness latency(K={f['K_max']}) / latency(K={f['K_min']}) = {f['ratio']:.2f}")
    for backend, per_k in summary["speedup"].items():
        parts = [f"K={k}: {v:.2f}x" if isinstance(v, float) else f"K={k}: {v}" for k, v in per_k.items()]
        lines.append(f"{backend}: baseline / CORA median latency: " + ", ".join(parts))
    return lines


def plot(payload: dict, path: str) -> None:
    """Latency vs K (log-log), one line per (method, backend), bars up to p90; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    results = payload["results"]
    for method in METHODS:
        for backend in dict.fromkeys(r["backend"] for r in results):
            cells = [r for r in results if r["method"] == method and r["backend"] == backend]
            ok = [r for r in cells if r["status"] == "ok"]
            if not ok:
                continue
            ks = [r["K"] for r in ok]
            med = [r["latency_ms"]["median"] for r in ok]
            p90 = [r["latency_ms"]["p90"] for r in ok]
            label = f"{'CORA' if method == 'cora' else 'OV-DETR-style'} ({backend})"
            stopped = [r["K"] for r in cells if r["status"] != "ok"]
            if stopped:
                label += f", stopped at budget for K >= {min(stopped)}"
            ax.errorbar(ks, med, yerr=[[0] * len(med), [p - m for p, m in zip(p90, med)]],
                        marker="o" if method == "cora" else "s", linestyle="-" if method == "cora" else "--",
                        capsize=3, label=label)
    shapes = payload["shapes"]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size K (classes)")
    ax.set_ylabel("latency per image (ms, median; bar to p90)")
    where = payload["machine"].get("gpu", payload["machine"]["cpu"])
    ax.set_title(f"{shapes['clip_model']} {shapes['image'][2]}x{shapes['image'][3]}, CORA {shapes['cora_queries']} "
                 f"queries vs {shapes['baseline']['queries_per_pass']} per pass\n{where}, {payload['dtype']}, "
                 f"torch {payload['machine']['torch']}", fontsize=9)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def default_path(args, ext: str) -> str:
    stem = f"vocab_scaling-{args.device}" if args.preset != "smoke" else f"vocab_scaling-smoke-{args.device}"
    return os.path.join(RESULTS_DIR, f"{stem}.{ext}")


def _first_line(e: BaseException) -> str:
    """The first informative line of an error (wrapped errors such as BackendCompilerFailed open with a
    line ending in ':' and give the cause below)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    informative = [line for line in lines if not line.endswith(":")]
    return (informative or lines or [""])[0][:200]


# ------------------------------------------------------------------------------------------------- CLI

class BenchmarkError(Exception):
    """A usage or environment problem reported in one line (exit code 1)."""


def _choice_error(kind: str, value: str, choices) -> str:
    hint = difflib.get_close_matches(value, list(choices), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown {kind} {value!r}; choose from {', '.join(choices)}{suggestion}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-quick",
                        help=f"one of {', '.join(PRESETS)} (default: cpu-quick); sets the model, input size, K values, "
                             "backends, runs and budget, each of which the flags below override")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated, from {', '.join(BACKENDS)} (default: the preset's; cpu-quick: eager)")
    parser.add_argument("--vocab-sizes", default=None,
                        help="comma-separated vocabulary sizes K >= 1 (default: the preset's; cpu-quick and paper: "
                             "1,16,65,256,1203,4096)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to run (default: the preset's; cpu for smoke and cpu-quick, cuda for paper)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model and input dtype (default: fp32)")
    parser.add_argument("--image-size", default=None,
                        help="HxW of the padded input, multiples of 32 (default: the preset's; cpu-quick 256x384)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up runs per cell (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per cell (default: the preset's)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds the baseline may run per backend before its remaining K are recorded as "
                             "'stopped at budget' (default: the preset's; smoke 60, cpu-quick 75, paper 300)")
    parser.add_argument("--baseline-queries-per-class", type=int, default=None,
                        help="queries copied per class in the baseline (default: 20 x CORA queries / 1000, at least "
                             "1; the official OV-DETR code uses 300)")
    parser.add_argument("--compile-timeout-s", type=float, default=600.0,
                        help="skip the compile backend if its first call (compilation) takes longer (default: 600)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="cora config override, repeatable, e.g. --set localizer.num_queries=300 (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--json", default=None,
                        help="results file (default: benchmarks/results/vocab_scaling-<device>.json; "
                             "vocab_scaling-smoke-<device>.json for the smoke preset)")
    parser.add_argument("--plot", default=None, help="PNG plot (default: the JSON path with .png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: a tqdm bar on stderr)")
    args = parser.parse_args(argv)

    if args.preset not in PRESETS:
        parser.error(_choice_error("preset", args.preset, PRESETS))
    preset = PRESETS[args.preset]
    args.device_given = args.device is not None
    args.device = args.device or preset.device
    backends = args.backends.split(",") if args.backends else list(preset.backends)
    for b in backends:
        if b not in BACKENDS:
            parser.error("--backends: " + _choice_error("backend", b, BACKENDS))
    args.backends = ["eager"] + [b for b in dict.fromkeys(backends) if b != "eager"] if "eager" in backends \
        else list(dict.fromkeys(backends))
    try:
        sizes = [int(v) for v in args.vocab_sizes.split(",")] if args.vocab_sizes else list(preset.vocab_sizes)
    except ValueError:
        parser.error(f"--vocab-sizes must be comma-separated integers, got {args.vocab_sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error(f"--vocab-sizes must be integers >= 1, got {args.vocab_sizes!r}")
    args.vocab_sizes = sorted(set(sizes))
    if args.image_size:
        try:
            h, w = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            parser.error(f"--image-size must be HxW, e.g. 256x384, got {args.image_size!r}")
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            parser.error(f"--image-size sides must be positive multiples of 32, got {args.image_size!r}")
        args.image_size = (h, w)
    else:
        args.image_size = preset.image_size
    args.warmup = preset.warmup if args.warmup is None else args.warmup
    args.repeat = preset.repeat if args.repeat is None else args.repeat
    args.budget_s = preset.budget_s if args.budget_s is None else args.budget_s
    if args.warmup < 0 or args.repeat < 1:
        parser.error(f"--warmup must be >= 0 and --repeat >= 1, got {args.warmup} and {args.repeat}")
    if args.budget_s < 0:
        parser.error(f"--budget-s must be >= 0, got {args.budget_s:g}")
    if args.baseline_queries_per_class is not None and args.baseline_queries_per_class < 1:
        parser.error(f"--baseline-queries-per-class must be >= 1, got {args.baseline_queries_per_class}")
    if "compile" in args.backends and args.warmup < 1:
        parser.error("--backends compile needs --warmup >= 1: the first call compiles, it must not be timed")
    if args.plot is None and args.json is not None:
        args.plot = os.path.splitext(args.json)[0] + ".png"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except BenchmarkError as e:
        print(f"vocab_scaling.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
