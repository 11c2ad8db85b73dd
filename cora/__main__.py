import sys

from cora.cli import main

sys.exit(main())
