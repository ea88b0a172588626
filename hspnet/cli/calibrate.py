"""`hspnet calibrate`: per-label decision thresholds chosen on a fully labelled dataset split and stored in the model's
config.json (``label_thresholds``), by :func:`hspnet.apps.calibrate.run_calibration`; ``--holdout F`` measures what
they gain on held-out images instead (writes nothing).

    hspnet calibrate --model_name_or_path outputs/demo --dataset demo --output_dir outputs/demo-calibrated
    hspnet calibrate --model_name_or_path outputs/demo --dataset demo --split test --holdout 0.5
"""

from __future__ import annotations

import argparse

from hspnet.utils.command_line import CommandParser, run_command
from hspnet.utils.model_source import check_model_argument
from hspnet.utils.validation import json_object, number_type, positive_int

DEFAULT_MIN_POSITIVES = 5  # = hspnet.evaluation.thresholds.DEFAULT_MIN_POSITIVES (not imported: it loads numpy)
_fraction_or_one = number_type(float, "a fraction in (0, 1)", 0.0, 1.0, low_open=True)


def _fraction(value: str) -> float:
    """An argparse type: a float strictly between 0 and 1."""
    number = _fraction_or_one(value)
    if number == 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {value!r}")
    return number


def build_parser(prog: str | None = "hspnet calibrate") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="Choose a decision threshold per label (the F1-optimal one; labels with fewer than "
        "--min_positives positives get the threshold that maximises the micro F1 over all labels) on a FULLY "
        "labelled dataset split, print them, and store them in the model's config.json (label_thresholds), where "
        "hspnet predict, evaluate, demo and export-onnx find them. Single-positive splits are refused (their negatives "
        "are unknown). See docs/thresholds.md.",
    )
    parser.add_argument("--model_name_or_path", "--model", dest="model", required=True,
                        help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--dataset", required=True,
                        help="demo | coco | voc | nuswide | cub | openimages | folder, or a folder written by "
                        "`hspnet prepare --output_dir`")
    parser.add_argument("--split", default="validation",
                        help="the fully labelled split to calibrate on (default: validation, the held-out training "
                        "images with their full labels; never calibrate on the split you report)")
    parser.add_argument("--dataset_root", default=None, help="root folder of coco / voc / nuswide / cub / folder")
    parser.add_argument("--dataset_options", type=json_object, default={}, metavar="JSON",
                        help="keyword arguments of the dataset loader, as when training (e.g. '{\"num_test\": 200}')")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder (as used when training)")
    parser.add_argument("--min_positives", type=positive_int, default=DEFAULT_MIN_POSITIVES, metavar="N",
                        help="labels with fewer positives on the split get the global (micro-F1-optimal) threshold "
                        f"(default {DEFAULT_MIN_POSITIVES})")
    parser.add_argument("--output_dir", default=None,
                        help="write a calibrated copy of the model here (a new folder, or one an earlier calibrate "
                        "wrote) instead of rewriting the model folder's config.json; needed for a Hub model")
    parser.add_argument("--holdout", type=_fraction, default=None, metavar="FRACTION",
                        help="report only: calibrate on the other images of the split, then print macro-F1 and "
                        "sample-F1 on this fraction of them at 0.5 and at the calibrated thresholds; writes nothing")
    parser.add_argument("--seed", type=number_type(int, "an integer >= 0", 0), default=0,
                        help="seed of the --holdout draw (default 0)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="batch size (default 64)")
    parser.add_argument("--max_samples", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--num_workers", type=int, default=0, help="dataloader workers (default 0)")
    parser.add_flag("--cpu", help="run on the CPU even when a GPU is available")
    parser.add_flag("--trust_remote_code", help="for Hub models that need their own code")
    return parser


check = check_model_argument  # a mistyped model path is named before torch is loaded


def run(args) -> None:
    from hspnet.apps.calibrate import run_calibration

    run_calibration(args)


def main(argv: list[str] | None = None, prog: str | None = "hspnet calibrate", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, check=check, before_run=before_run)
