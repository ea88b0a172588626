#!/usr/bin/env python
"""Convert an HSPNet checkpoint released by the authors (jameslahm/HSPNet: hspnet+coco.ckpt, hspnet+voc.ckpt,
hspnet+nuswide.ckpt) into a Hugging Face model folder.

    python scripts/convert_official_checkpoint.py hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy --verify

then `AutoModelForImageClassification.from_pretrained("hspnet-coco", trust_remote_code=True)`. The checkpoint is read
with `torch.load(weights_only=True)` only. All the logic lives in `hspnet.conversion`.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the official checkpoint, e.g. hspnet+coco.ckpt (a pickled state dict)")
    parser.add_argument("output_dir", help="folder to write (config, safetensors, remote code, processor, card)")
    parser.add_argument("--dataset", choices=["coco", "voc", "nuswide", "cub"],
                        help="built-in labels and hierarchy; default: inferred from the number of labels")
    parser.add_argument("--relation", help="the authors' relation file (relation+super+rn50.npy for COCO, "
                        "relation+voc+super.npy, relation+nuswide+super.npy, relation+cub+super.npy); default: that "
                        "file beside the checkpoint or in the current folder")
    parser.add_argument("--hierarchy", help="JSON file with labels, groups, label_to_group (instead of --dataset)")
    parser.add_argument("--clip-weights", help="optional OpenAI CLIP RN50 weights (RN50.pt) to fill the token "
                        "embedding table, needed only to change label or group names later")
    parser.add_argument("--verify", action="store_true", help="compare the converted model with a direct "
                        "re-implementation of the official forward on random images and print the largest difference")
    parser.add_argument("--verify-images", type=int, default=2, help="number of random images for --verify")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from hspnet.conversion import ConversionError, run_conversion

    try:
        run_conversion(args.checkpoint, args.output_dir, dataset=args.dataset, relation=args.relation,
                       hierarchy=args.hierarchy, clip_weights=args.clip_weights, verify=args.verify,
                       verify_images=args.verify_images, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
