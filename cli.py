"""bottleneck's command line: `python cli.py --help` (the same as the `bottleneck` command)."""

import sys

from bottleneck.cli import main

if __name__ == "__main__":
    sys.exit(main())
