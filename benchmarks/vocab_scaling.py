"""`python benchmarks/vocab_scaling.py --help`: the script face of cora.bench.vocab_scaling (latency vs
vocabulary size K, CORA against OV-DETR-style conditional decoding). Results go to benchmarks/results/.

Importing cora.bench.vocab_scaling before anything imports torch lets it set OpenMP's spin policy first."""

import os
import sys

from cora.bench.vocab_scaling import main

if __name__ == "__main__":
    sys.exit(main(out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
