#!/usr/bin/env python
"""Train HSPNet (single or multi process) with accelerate.

    accelerate launch scripts/train.py --config configs/demo.yaml
    accelerate launch scripts/train.py --config configs/hspnet-coco.yaml --dataset_root /data/coco
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/demo.yaml   # DDP
    accelerate launch scripts/train.py --config configs/hspnet-coco.yaml --push_to_hub true \\
        --hub_model_id you/hspnet-coco --hub_strategy checkpoint          # push the best model + last state as it goes
    accelerate launch scripts/train.py --config configs/hspnet-coco.yaml --hub_model_id you/hspnet-coco \\
        --resume_from_checkpoint hub --output_dir fresh-dir                 # continue it on another machine
    accelerate launch -m hspnet train --config configs/demo.yaml          # the same, without this file

This file is a shell over `hspnet.cli.train.main`, the function behind `hspnet train` (the package must be installed:
`pip install -e .`).

Every option of hspnet.training.TrainingConfig is a flag, `--option_name` or `--option-name` (`--help`); flags
override the YAML file. Bad input (a
malformed config, a missing path, a resume with other settings, an output folder in use, a full disk, a diverging
loss, a failed final upload to the Hub...) ends with one line `train.py: error: ...` and exit status 1 (`--debug`
shows the traceback instead); a usage error (an unknown or malformed option) with one line and exit status 2.
"""

from hspnet.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(prog="train.py"))
