#!/usr/bin/env python
"""Prepare the cub dataset: same as `python datasets_scripts/prepare.py cub ...` (see `--help`)."""

import os
import sys

try:
    from hspnet.data.cli import main
except ImportError:  # run from a clone without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hspnet.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["cub", *sys.argv[1:]]))
