"""`hspnet convert` (= `scripts/convert_official_checkpoint.py`): the authors' released checkpoint -> a Hugging Face
model folder, by :func:`hspnet.conversion.folder.run_conversion`."""

from __future__ import annotations

import argparse
import os

from hspnet.cli.push import add_hub_options
from hspnet.utils.command_line import CommandParser, run_command

DESCRIPTION = """Convert an HSPNet checkpoint released by the authors (jameslahm/HSPNet: hspnet+coco.ckpt,
hspnet+voc.ckpt, hspnet+nuswide.ckpt) into a Hugging Face model folder.

    hspnet convert hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy --verify
    hspnet convert hspnet+voc.ckpt hspnet-voc --push_to_hub --hub_model_id you/hspnet-voc   # then upload it

then `AutoModelForImageClassification.from_pretrained("hspnet-coco", trust_remote_code=True)`. The checkpoint is read
with `torch.load(weights_only=True)` only."""


def build_parser(prog: str | None = "hspnet convert") -> CommandParser:
    parser = CommandParser(prog=prog, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the official checkpoint, e.g. hspnet+coco.ckpt (a pickled state dict)")
    parser.add_argument("output_dir", help="folder to write (config, safetensors, remote code, processor, card)")
    parser.add_argument("--dataset", choices=["coco", "voc", "nuswide", "cub"],
                        help="built-in labels and hierarchy; default: inferred from the number of labels")
    parser.add_argument("--relation", help="the authors' relation file (relation+super+rn50.npy for COCO, "
                        "relation+voc+super.npy, relation+nuswide+super.npy, relation+cub+super.npy); default: that "
                        "file beside the checkpoint or in the current folder")
    parser.add_argument("--hierarchy", help="JSON file with labels, groups, label_to_group (instead of --dataset)")
    parser.add_argument("--clip_weights", help="optional OpenAI CLIP RN50 weights (RN50.pt) to fill the token "
                        "embedding table, needed only to change label or group names later")
    parser.add_flag("--verify", help="compare the converted model with a direct re-implementation of the official "
                    "forward on random images and print the largest difference")
    parser.add_argument("--verify_images", type=int, default=2, help="number of random images for --verify")
    parser.add_flag("--overwrite", help="replace a non-empty output folder")
    hub = parser.add_argument_group("uploading the converted folder (model files and card, in one commit)")
    parser.add_flag("--push_to_hub", help="then upload the folder to --hub_model_id", container=hub)
    add_hub_options(parser, repo_option=True, group=hub)
    return parser


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # this process: the command, not the library
    from hspnet.conversion.folder import run_conversion

    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/hspnet-coco)")
    run_conversion(args.checkpoint, args.output_dir, dataset=args.dataset, relation=args.relation,
                   hierarchy=args.hierarchy, clip_weights=args.clip_weights, verify=args.verify,
                   verify_images=args.verify_images, overwrite=args.overwrite)
    if args.push_to_hub:
        from hspnet.hub.transfer import push_folder_to_hub

        repo_id = push_folder_to_hub(args.output_dir, args.hub_model_id, token=args.hub_token,
                                     private=args.hub_private_repo,
                                     commit_message=f"Upload HSPNet converted from {os.path.basename(args.checkpoint)}")
        print(f"Pushed {args.output_dir} to https://huggingface.co/{repo_id}")


def main(argv: list[str] | None = None, prog: str | None = "hspnet convert", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, before_run=before_run)
