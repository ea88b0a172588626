"""`hspnet predict` (= `scripts/predict.py`): labels for image files or folders, by
:func:`hspnet.apps.predict.run_prediction`."""

from __future__ import annotations

from hspnet.apps.defaults import ON_ERROR, PREDICT_FORMATS
from hspnet.utils.command_line import CommandParser, run_command
from hspnet.utils.model_source import check_model_argument
from hspnet.utils.images import MAX_IMAGE_PIXELS
from hspnet.utils.validation import pixel_limit, positive_int, probability


def build_parser(prog: str | None = "hspnet predict") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="Predict labels for image files or folders (searched recursively) with a trained HSPNet model "
        "(or any multi-label image classifier). Local paths only, no URLs.",
    )
    parser.add_argument("images", nargs="+", help="image files and/or folders")
    parser.add_argument("--model_name_or_path", "--model", dest="model", required=True,
                        help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="report labels with sigmoid score > THRESHOLD (default 0.5; with --top_k: no threshold "
                        "unless given)")
    parser.add_argument("--top_k", type=positive_int, default=None,
                        help="report the K best labels of each image (with --threshold: at most K above it)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None, metavar="FILE",
                        help="score these labels instead of the model's (one per line, optionally TAB and its group; "
                        "a label without a group takes the nearest one by CLIP text similarity); HSPNet models only, "
                        "see docs/open-vocabulary.md")
    labels.add_argument("--add_labels", default=None, metavar="FILE",
                        help="score these labels as well as the model's (same file format as --labels)")
    parser.add_argument("--format", choices=PREDICT_FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--output", default=None,
                        help="write the results to this file, atomically (default or '-': stdout); never an input")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--on_error", choices=ON_ERROR, default="fail",
                        help="an unreadable / non-image file: fail (default; exit 1 naming it) or skip (warn, report "
                        "it as skipped, go on)")
    parser.add_argument("--max_image_pixels", type=pixel_limit, default=MAX_IMAGE_PIXELS, metavar="N",
                        help="refuse images with more pixels than N as decompression bombs (default "
                        f"{MAX_IMAGE_PIXELS:,}; 0: only PIL's own limit, twice that)")
    parser.add_flag("--all_scores", help="jsonl: also write every label's score")
    parser.add_flag("--trust_remote_code", help="for Hub models that need their own code")
    parser.add_flag("--torch_compile", help="run the model through torch.compile (same scores within float rounding; "
                    "pays off for many images, the first batch compiles)")
    parser.add_flag("--no_progress", help="hide the progress bar")
    return parser


check = check_model_argument  # a mistyped model path is named before torch is loaded


def run(args) -> None:
    from hspnet.apps.predict import run_prediction

    run_prediction(args)


def main(argv: list[str] | None = None, prog: str | None = "hspnet predict", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, check=check, before_run=before_run)
