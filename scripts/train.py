#!/usr/bin/env python
"""Train HSPNet (single or multi process) with accelerate.

    accelerate launch scripts/train.py --config configs/demo.yaml
    accelerate launch scripts/train.py --config configs/hspnet-coco.yaml --dataset_root /data/coco
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/demo.yaml   # DDP

Every option of hspnet.training.TrainingConfig is a flag (`--help`); flags override the YAML file. Bad input (a
malformed config, a missing path, a resume with other settings, an output folder in use, a full disk, a diverging
loss...) ends with one line `train.py: error: ...` and exit status 1; `--debug` shows the traceback instead.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a clone without install

from hspnet.cli_types import run_cli  # noqa: E402
from hspnet.training import build_argument_parser, config_from_arguments, train  # noqa: E402


def main(argv=None) -> int:
    return run_cli(build_argument_parser(prog="train.py"), lambda args: train(config_from_arguments(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
