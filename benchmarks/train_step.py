"""`python benchmarks/train_step.py --help`: the script face of cora.bench.train_step (one class-dropout
training step: CORA.forward_train against two CORA.forward calls). Results go to benchmarks/results/."""

import os
import sys

from cora.bench.train_step import main

if __name__ == "__main__":
    sys.exit(main(out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
