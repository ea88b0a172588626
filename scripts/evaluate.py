#!/usr/bin/env python
"""Evaluate a trained HSPNet model on a prepared dataset split, next to the zero-shot CLIP baseline.

    python scripts/evaluate.py --model_name_or_path outputs/demo --dataset demo
    python scripts/evaluate.py --model_name_or_path outputs/coco --dataset coco --dataset_root /data/coco --output_dir eval-coco \
        --zero_shot_clip openai/clip-vit-base-patch16
    accelerate launch --multi_gpu --num_processes 2 scripts/evaluate.py --model_name_or_path outputs/coco --dataset coco ...

Writes metrics.json, per_class_ap.csv / per_class_ap.md and report.png to --output_dir (each atomically, never over
an input) and prints a table. Bad input exits with status 1 and a one-line message naming the culprit (`--debug`: the
traceback). All options: `--help`; the logic lives in hspnet/apps/evaluate.py.
"""

from hspnet.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main(prog="evaluate.py"))
