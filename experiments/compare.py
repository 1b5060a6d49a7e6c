"""Thin entry point: `python experiments/compare.py --preset cpu [key=value ...]` (same as `localdpo compare`)."""

import sys

from localdpo.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
