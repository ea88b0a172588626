#!/usr/bin/env python
"""Prepare custom data: `python datasets_scripts/custom.py --root FOLDER` (images + metadata.csv / metadata.jsonl),
or `python datasets_scripts/custom.py hf --dataset-path ID_OR_FOLDER` (a Hugging Face dataset). See `--help`."""

import os
import sys

try:
    from hspnet.data.cli import main
except ImportError:  # run from a clone without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hspnet.data.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if argv[:1] == ["hf"] else ["folder", *argv]))
