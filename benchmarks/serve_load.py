"""`python benchmarks/serve_load.py --help`: the script face of cora.bench.serve_load (closed-loop load
against the served detector: Triton Inference Server with and without dynamic batching, and one ONNX
Runtime session in a loop). Results go to benchmarks/results/."""

import os
import sys

from cora.bench.serve_load import main

if __name__ == "__main__":
    sys.exit(main(out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
