"""The runners of cora.bench.vocab_scaling (`python benchmarks/vocab_scaling.py`): one per (method, backend), and the set-up of each backend.

Methods: "cora" (CORA: anchor pre-matching, one decoder pass for any K) and "conditional" (the OV-DETR-style
baseline of cora.bench.conditional_baseline, sharing CORA's backbone and localizer, ceil(K / 15) passes).
Backends (`BACKENDS`): eager (both methods, with the per-stage split of `CORA_STAGES` / `BASELINE_STAGES`),
compile (both, `torch.compile` through `CompiledWithFallback`), onnxruntime and tensorrt (CORA's exported graph
only, through `cora.runtime`). `backend_status` says whether a backend can run here; `setup_runners` builds
every available one and records why one that cannot be set up is skipped.

Inputs: one image [1, 3, H, W] in [0, 1] (already resized and padded; its valid size is the whole input) and
the text embeddings of the current K, [K, D] random unit vectors (`Inputs`). A `Runner` processes the image
once per `run(timer)`, from pixel normalisation to detections, marking its stages on a
`cora.bench.timing.StageTimer`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from cora.bench.timing import CompileTimeout, StageTimer

CORA_STAGES = ("backbone", "pre-matching", "localizer", "region classification", "post-processing")
BASELINE_STAGES = ("backbone", "encoder", "decoder", "post-processing")

# One row per backend: what runs it, and whether the baseline runs on it too.
BACKENDS: dict[str, str] = {
    "eager": "PyTorch eager, with the per-stage split",
    "compile": "torch.compile (default mode) of CORA's forward and the baseline's stages",
    "onnxruntime": "CORA's ONNX graph (cora.export.onnx) in ONNX Runtime (cora.runtime.onnx.OnnxDetector)",
    "tensorrt": "CORA's TensorRT engine (cora.export.tensorrt)",
}


# ------------------------------------------------------------------------------------------ the runners

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
    from cora.bench.conditional_baseline import ConditionalMatchingBaseline
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
    """CORA's `forward`: the detection graph, scoring and NMS included (what `detect` and the export run)."""
    if backend == "eager":
        def run(timer: StageTimer) -> None:
            with _cora_stage_hooks(model, timer):
                timer.begin("backbone")
                model(inputs.images, inputs.sizes, inputs.text)

        return Runner("cora", backend, inputs.set_vocabulary, run, CORA_STAGES)
    if backend == "compile":
        compiled = CompiledWithFallback(model)

        def run(timer: StageTimer) -> None:
            timer.begin("total")
            compiled(inputs.images, inputs.sizes, inputs.text)

        return Runner("cora", backend, inputs.set_vocabulary, run, None, compile_timeout_s)
    raise ValueError(f"no CORA runner for backend {backend!r}")


@contextlib.contextmanager
def _cora_stage_hooks(model, timer: StageTimer):
    """Module hooks that mark CORA's stages inside `CORA.forward` (the model's own code runs, unchanged),
    registered for one run only (they would break torch.compile graphs).

    backbone: normalisation + stem..layer3. pre-matching: layer4 on the whole map (it only feeds the
    pre-matching) + RoIAlign + prompted attention pool per anchor + cosine / argmax + text projection.
    localizer: padding mask + encoder + decoder + box / objectness heads. region classification: boxes to
    pixels + RoIAlign + layer4 + attention pool per box + cosine with the K classes. post-processing: scoring,
    top-k and NMS (cora.modeling.scoring).
    """
    def layer4(*args) -> None:
        # layer4 also runs per box in the region classifier: only its first call (the whole map) is a boundary.
        if timer.current == "backbone":
            timer.mark("pre-matching")

    handles = [
        model.backbone.visual.layer4.register_forward_pre_hook(layer4),
        model.localizer.register_forward_pre_hook(lambda *a: timer.mark("localizer")),
        model.localizer.register_forward_hook(lambda *a: timer.mark("region classification")),
        model.region_classifier.register_forward_hook(lambda *a: timer.mark("post-processing")),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def baseline_runner(baseline, inputs: Inputs, backend: str, compile_timeout_s: float | None) -> Runner:
    from cora.bench.conditional_baseline import ConditionalMatchingBaseline, no_mark, postprocess_conditional

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
        out = baseline(inputs.images, inputs.sizes, inputs.text, mark=timer.mark if eager else no_mark)
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
                raise CompileTimeout(first_line(timeout)) from e
            if self.fallback:
                raise
            self.fallback = True
            CompiledWithFallback.NOTES.add(f"inductor pattern matcher off (default options failed: "
                                           f"{type(e).__name__}: {first_line(e)})")
            self.compiled = torch.compile(self.fn, options={"pattern_matcher": False})
            return self.compiled(*args, **kwargs)


def _cause_of_kind(e: BaseException | None, kind: type) -> BaseException | None:
    """`e` or the first exception of type `kind` in its chain of causes, else None."""
    while e is not None:
        if isinstance(e, kind):
            return e
        e = e.__cause__ or e.__context__
    return None


def first_line(e: BaseException) -> str:
    """The first informative line of an error (wrapped errors such as BackendCompilerFailed open with a
    line ending in ':' and give the cause below)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    informative = [line for line in lines if not line.endswith(":")]
    return (informative or lines or [""])[0][:200]


# --------------------------------------------------------------------------------- backend availability

def backend_status(backend: str, device: str, dtype: str) -> str | None:
    """None if `backend` can run here, else the reason it cannot."""
    if backend == "eager":
        return None
    if backend == "compile":
        return None  # compile failures and time-outs are caught per run and reported
    if backend == "onnxruntime":
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
        return None
    raise ValueError(f"unknown backend {backend!r}")


def export_onnx(cfg, args, preset, directory: str) -> tuple[str, float]:
    """CORA (fp32, CPU, the benchmark's seed: the same weights) -> `<directory>/cora.onnx` through
    cora.export.onnx, static input size. `preset`: the run's vocab_scaling.Preset (its model and overrides
    go into the export's sidecar). Returns (path, seconds); the export is not timed."""
    from cora.modeling.detector import CORA
    from cora.export.onnx import export_detector

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = CORA.from_config(cfg, random_init=True).eval()
    path = os.path.join(directory, "cora.onnx")
    source = {"preset": preset.model, "overrides": list(preset.overrides) + list(args.set), "checkpoint": None,
              "clip_weights": None, "random_init": True, "seed": args.seed}
    # The parity check is the export tests' job (tests/export); here the file is only timed.
    export_detector(model, path, source=source, image_size=args.image_size, check=False)
    return path, time.perf_counter() - start


def exported_runner(backend: str, detector, inputs: Inputs, images, memory: str | None) -> Runner:
    """A `cora.runtime` detector (OnnxDetector, TensorRTDetector) on the already padded image: its graph
    runs normalisation -> detections, as eager's forward. Its `detect` would add the
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


def setup_runners(args, preset, cfg, model, baseline, inputs: Inputs, statuses: dict,
                  workdir: str) -> tuple[list, dict]:
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
                print("exporting CORA to ONNX (cora.export.onnx; not timed) ...", file=sys.stderr, flush=True)
                exported["onnx"], exported["export_s"] = export_onnx(cfg, args, preset, workdir)
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
                from cora.export.tensorrt import build_engine

                engine = os.path.join(workdir, "cora.engine")
                h, w = args.image_size
                ks = args.vocab_sizes
                build_engine(exported["onnx"], engine, fp16=args.dtype == "fp16",
                             vocab_profile=[ks[0], ks[len(ks) // 2], ks[-1]], image_profile=[h, w, h, w, h, w],
                             batch_profile=[1, 1, 1], workspace_gib=4.0)
                detector = TensorRTDetector(engine, device=args.device)
                images = inputs.images.float()
                exported["tensorrt"] = (f"engine {'fp16' if args.dtype == 'fp16' else 'fp32'} from cora.export.tensorrt; "
                                        "memory not measured: TensorRT allocates outside torch")
                memory = None
            runners.append(exported_runner(backend, detector, inputs, images, memory))
        except Exception as e:  # noqa: BLE001 - a backend that cannot be set up is reported, not fatal
            statuses[backend] = f"failed to set up: {type(e).__name__}: {first_line(e)}"
            runners = [r for r in runners if r.backend != backend]
    return runners, exported


def final_statuses(statuses: dict, exported: dict) -> dict:
    """What became of each backend, for the table footer and the JSON: "run" (with the compile fallback or
    the exported graph's details) or the reason it did not run."""
    final = {b: ("run" if s is None else s) for b, s in statuses.items()}
    if final.get("compile") == "run" and CompiledWithFallback.NOTES:
        final["compile"] = "run, " + "; ".join(sorted(CompiledWithFallback.NOTES))
    for backend in ("onnxruntime", "tensorrt"):
        if final.get(backend) == "run":
            final[backend] = (f"run ({exported[backend]}; ONNX export {exported['export_s']:.0f} s, not timed; "
                              "CORA only: the baseline has no exported graph)")
    return final
