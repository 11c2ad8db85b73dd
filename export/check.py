"""`python export/check.py --help`: the script face of `cora check` (cora.cli.check)."""

import sys

from cora.cli.check import main

if __name__ == "__main__":
    sys.exit(main())
