#!/usr/bin/env python
"""Prepare a dataset for HSPNet: python datasets_scripts/prepare.py {coco,voc,nuswide,cub,folder,hf,demo} --root ...

Prints a statistics table (images per split, labels per image, positives per label), caches the prepared
DatasetDict, and with --output / --push-to-hub writes it. See `--help` and the README for the folder layouts.
"""

import os
import sys

try:
    from hspnet.data.cli import main
except ImportError:  # run from a clone without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hspnet.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
