#!/usr/bin/env python
"""Prepare custom data (= `hspnet prepare folder ...` / `hspnet prepare hf ...`):

    python datasets_scripts/custom.py --dataset_root FOLDER                    # images + metadata.csv / metadata.jsonl
    python datasets_scripts/custom.py hf --dataset_path ID_OR_FOLDER           # a Hugging Face dataset

See `--help`. A shell over `hspnet.cli.prepare.main` (the package must be installed: `pip install -e .`).
"""

import sys

from hspnet.cli.prepare import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    raise SystemExit(main(argv if argv[:1] == ["hf"] else ["folder", *argv], prog="custom.py"))
