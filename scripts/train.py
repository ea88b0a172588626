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


def main(argv=None):
    train(load_config(argv))


if __name__ == "__main__":
    main()
