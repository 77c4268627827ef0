"""bottleneck's command line: `python cli.py --help` (the same as the `bottleneck` command)."""

import sys


def _main() -> int:
    try:
        from bottleneck.cli import main
    except KeyboardInterrupt:   # Ctrl-C while Python is still importing
        print("\ninterrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(_main())
