#!/usr/bin/env python
"""Train HSPNet (single or multi process) with accelerate.

    accelerate launch scripts/train.py --config configs/demo.yaml
    accelerate launch scripts/train.py --config configs/hspnet-coco.yaml --dataset_root /data/coco
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/demo.yaml   # DDP

Every option of hspnet.training.TrainingConfig is a flag (`--help`); flags override the YAML file.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone without install

from hspnet.training import load_config, train  # noqa: E402


def main(argv=None) -> int:
    try:
        train(load_config(argv))
    except (OSError, ValueError) as error:  # bad input: one line naming the file / option, no traceback
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
