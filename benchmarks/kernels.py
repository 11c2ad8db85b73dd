"""`python benchmarks/kernels.py --help`: the script face of cora.bench.kernels (each compiled op against its
baseline). Results go to benchmarks/results/."""

import os
import sys

from cora.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main(out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
