#!/usr/bin/env python
"""Convert an HSPNet checkpoint released by the authors into a Hugging Face model folder (= `hspnet convert`).

    python scripts/convert_official_checkpoint.py hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy --verify

All the logic lives in `hspnet.conversion`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone without install

from hspnet.conversion.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="convert_official_checkpoint.py"))
