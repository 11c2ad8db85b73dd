"""`python export/to_onnx.py --help`: the script face of `cora export` (cora.cli.export.onnx_main)."""

import sys

from cora.cli.export import onnx_main

if __name__ == "__main__":
    sys.exit(onnx_main())
