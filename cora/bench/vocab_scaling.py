"""Latency vs vocabulary size K: CORA's anchor pre-matching against OV-DETR-style conditional matching.

    python benchmarks/vocab_scaling.py                                  # cpu-quick: RN50 shapes, < 3 min on 2 cores
    python benchmarks/vocab_scaling.py --preset paper --device cuda --dtype fp16 \\
        --backends eager,compile,onnxruntime,tensorrt --json benchmarks/results/vocab_scaling-h100.json
    python benchmarks/vocab_scaling.py --preset smoke                   # tiny model, seconds (tests)

CORA pre-matches its anchors to classes and decodes once for any K; OV-DETR conditions its queries on
classes and decodes once per chunk of 15 classes (`cora.bench.conditional_baseline`, built on the same
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
onnxruntime (CORA exported by cora.export.onnx, run by cora.runtime.onnx.OnnxDetector's session);
tensorrt (cora.export.tensorrt + cora.runtime.tensorrt; untested: no TensorRT on the development machines).
The exported backends run CORA only (the baseline has no exported graph). A backend that is not available
is listed with its reason, never an error. cpu-quick runs eager only by default, to stay under 3 minutes:
onnxruntime adds about 1 minute (export ~25 s + runs), compile several minutes on 2 cores.

The baseline stops when its time on one backend passes --budget-s (checked before each run): its
remaining K are recorded as "stopped at budget", never projected.

On CPU the script sets GOMP_SPINCOUNT=10000 before torch loads OpenMP, unless OMP_WAIT_POLICY or
GOMP_SPINCOUNT is already set (see the comment at the import of torch); the header states the setting. That
works only when this module is imported before torch: `python benchmarks/vocab_scaling.py` and
`python -m cora.bench.vocab_scaling` do so; a caller that has already imported torch gets its OpenMP setting
("inherited" in the header).

Output: --json / --plot, else `vocab_scaling-<device>.json` / `.png` in --out-dir, whose default is the
checkout's benchmarks/results/ when run as `python benchmarks/vocab_scaling.py` (from any directory), else
./benchmarks/results if that folder exists in the current directory, else the current directory.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tempfile
import time
from dataclasses import dataclass

# Before torch loads (cora.openmp has the measurements).
from cora.openmp import short_spin

OPENMP_SETTING = short_spin("cora.bench.vocab_scaling")

import torch  # noqa: E402

# This file is the CLI (presets, flags, the run, printing); its parts, which import torch and so come after
# the OpenMP setting above: timing.py (timers, memory), vocab_backends.py (the runners per method and
# backend), vocab_cells.py (warm-up / timed runs per cell, the budget), vocab_report.py (tables, plot).
from cora.bench.common import default_out_dir, machine_info, write_json  # noqa: E402
from cora.bench.timing import PeakMemory  # noqa: E402
from cora.bench.vocab_backends import (  # noqa: E402
    BACKENDS, CompiledWithFallback, Inputs, backend_status, build_models, final_statuses, setup_runners,
)
from cora.bench.vocab_cells import run_cells  # noqa: E402
from cora.bench.vocab_report import (  # noqa: E402
    METHODS, busy_cells, describe_shapes, plot, results_table, stage_table, summarize, summary_lines,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


# ---------------------------------------------------------------------------------------------- the run

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
        runners, exported = setup_runners(args, preset, cfg, model, baseline, inputs, statuses, workdir)
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


def default_path(args, ext: str) -> str:
    stem = f"vocab_scaling-{args.device}" if args.preset != "smoke" else f"vocab_scaling-smoke-{args.device}"
    return os.path.join(args.out_dir, f"{stem}.{ext}")


# ------------------------------------------------------------------------------------------------- CLI

class BenchmarkError(Exception):
    """A usage or environment problem reported in one line (exit code 1)."""


def _choice_error(kind: str, value: str, choices) -> str:
    hint = difflib.get_close_matches(value, list(choices), n=1)
    suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"unknown {kind} {value!r}; choose from {', '.join(choices)}{suggestion}"


def parse_args(argv=None, out_dir: str | None = None) -> argparse.Namespace:
    """`out_dir`: the default of --out-dir (benchmarks/vocab_scaling.py passes its checkout's results folder);
    None: `cora.bench.common.default_out_dir()`."""
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
                        help="results file (default: <out-dir>/vocab_scaling-<device>.json; "
                             "vocab_scaling-smoke-<device>.json for the smoke preset)")
    parser.add_argument("--out-dir", default=None,
                        help="folder of the default --json / --plot files (default: the checkout's benchmarks/results "
                             "for benchmarks/vocab_scaling.py; else ./benchmarks/results if it exists, else .)")
    parser.add_argument("--plot", default=None, help="PNG plot (default: the JSON path with .png)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: a tqdm bar on stderr)")
    args = parser.parse_args(argv)
    args.out_dir = args.out_dir or out_dir or default_out_dir()

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


def main(argv=None, out_dir: str | None = None) -> int:
    """The command line; `out_dir`: the default of --out-dir (see `parse_args`)."""
    args = parse_args(argv, out_dir)
    try:
        run(args)
    except BenchmarkError as e:
        print(f"vocab_scaling: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
