#!/usr/bin/env python
"""Convert an HSPNet checkpoint released by the authors into a Hugging Face model folder (= `hspnet convert`).

    python scripts/convert_official_checkpoint.py hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy --verify

All the logic lives in `hspnet.conversion`.
"""

from hspnet.cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main(prog="convert_official_checkpoint.py"))
