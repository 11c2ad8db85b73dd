"""`cora bench NAME [ARGS]`: run a benchmark of cora.bench with its own arguments.

    cora bench vocab --preset smoke          # CORA against OV-DETR-style conditional decoding, K = 1 .. 4096
    cora bench kernels --device cuda         # each compiled op against its baseline
    cora bench vocab --help                  # the benchmark's own flags

benchmarks/*.py are the same runners as scripts. Tables are printed, JSON (and plots) written to
benchmarks/results/ unless the benchmark's flags say otherwise.
"""

from __future__ import annotations

import argparse

# name -> module of cora.bench with `main(argv) -> int`. Imported only when run: vocab_scaling sets OpenMP's
# spin policy before torch loads, which `cora` itself never imports before a command runs.
BENCHMARKS = {"vocab": "cora.bench.vocab_scaling", "kernels": "cora.bench.kernels"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="run a benchmark: vocab (latency vs vocabulary size), kernels (ops vs baselines)",
        description="Runs cora.bench.vocab_scaling (vocab: CORA against OV-DETR-style conditional decoding for "
                    "K = 1 .. 4096) or cora.bench.kernels (kernels: each compiled op against its baseline) with "
                    "the arguments that follow; `cora bench vocab --help` lists them.",
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments (default: none)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import importlib

    benchmark = importlib.import_module(BENCHMARKS[args.name])
    try:
        return benchmark.main(list(args.args))
    except SystemExit as e:  # the benchmark's own argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
