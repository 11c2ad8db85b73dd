"""`python export/to_trt.py --help`: the script face of `cora export` (cora.cli.export.trt_main)."""

import sys

from cora.cli.export import trt_main

if __name__ == "__main__":
    sys.exit(trt_main())
