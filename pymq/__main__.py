"""`python -m pymq ...`: the command line (pymq.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
