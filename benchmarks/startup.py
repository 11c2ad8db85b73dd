"""`python benchmarks/startup.py --help`: the script face of cora.bench.startup (CLI start-up and the text
embeddings of 1203 names, cold and warm). Results go to benchmarks/results/."""

import os
import sys

from cora.bench.startup import main

if __name__ == "__main__":
    sys.exit(main(out_dir=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")))
