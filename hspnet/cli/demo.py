"""``hspnet demo``: start the demo page of a model (:mod:`hspnet.apps.demo.page`), or write a Hugging Face Space
folder for it (``--write_space DIR``, :mod:`hspnet.apps.demo.space`).

    hspnet demo --model_name_or_path outputs/demo                         # the page on http://127.0.0.1:7860
    hspnet demo --model_name_or_path outputs/demo --write_space my-space  # a Space folder, run as is by Hugging Face
"""

from __future__ import annotations

import os

from hspnet.apps.defaults import (
    DEMO_DEFAULT_THRESHOLD,
    DEMO_MAX_EXAMPLES,
    DEMO_MAX_IMAGES,
    DEMO_MAX_UPLOAD_MB,
    GRADIO_INSTALL_HINT,
)
from hspnet.utils.command_line import CommandParser, run_command
from hspnet.utils.model_source import check_model_argument
from hspnet.utils.images import MAX_IMAGE_PIXELS
from hspnet.utils.validation import number_type, pixel_limit, positive_int, probability

_port = number_type(int, "a port number 1-65535", 1, 65535)
_megabytes = number_type(float, "a size in MB > 0", 0.0, low_open=True)


def build_parser(prog: str | None = "hspnet demo") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="A demo page (Gradio) for a trained model: upload images, see every label's score grouped by the "
        "model's hierarchy. With --write_space DIR: write a Hugging Face Space folder instead of starting the page. "
        f"Needs gradio: {GRADIO_INSTALL_HINT}",
    )
    parser.add_argument("--model_name_or_path", "--model", dest="model", required=True,
                        help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--examples", nargs="+", default=None, metavar="PATH",
                        help=f"example image files or folders (at most {DEMO_MAX_EXAMPLES} shown; default: demo test "
                        "images for a model with the demo data's labels, else none)")
    parser.add_flag("--no_examples", help="show no example images")
    parser.add_argument("--title", default=None, help="the page's title")
    parser.add_argument("--threshold", type=probability, default=DEMO_DEFAULT_THRESHOLD,
                        help=f"initial threshold (default {DEMO_DEFAULT_THRESHOLD})")
    parser.add_argument("--top_k", type=int, default=0, help="initial top-k (default 0: no limit)")
    parser.add_argument("--host", default=None,
                        help="address to serve on (default: GRADIO_SERVER_NAME, else 127.0.0.1 = this machine only; "
                        "0.0.0.0 makes the page reachable from the network)")
    parser.add_argument("--port", type=_port, default=None,
                        help="port (default: GRADIO_SERVER_PORT, else the first free port from 7860)")
    parser.add_flag("--share", help="also create a temporary public gradio.live link")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--max_image_pixels", type=pixel_limit, default=MAX_IMAGE_PIXELS, metavar="N",
                        help=f"refuse images with more pixels than N (default {MAX_IMAGE_PIXELS:,}; 0: PIL's limit)")
    parser.add_argument("--max_file_size", type=_megabytes, default=DEMO_MAX_UPLOAD_MB, metavar="MB",
                        help=f"refuse uploads larger than this many MB (default {DEMO_MAX_UPLOAD_MB})")
    parser.add_argument("--max_images", type=positive_int, default=DEMO_MAX_IMAGES,
                        help=f"score at most this many images per upload (default {DEMO_MAX_IMAGES})")
    parser.add_flag("--trust_remote_code", help="for Hub models that need their own code")
    space = parser.add_argument_group("writing a Hugging Face Space")
    space.add_argument("--write_space", default=None, metavar="DIR",
                       help="write app.py, requirements.txt, README.md, examples/, the hspnet package and the model "
                       "(a local folder is copied into DIR/model; a Hub id is referenced) into DIR, then exit")
    space.add_argument("--space_model_id", default=None, metavar="HUB_ID",
                       help="with --write_space: the Space loads the model from this Hub id instead of a copy")
    parser.add_flag("--overwrite", help="with --write_space: replace a Space folder written earlier", container=space)
    return parser


check = check_model_argument  # a mistyped model path is named before torch is loaded


def run(args):
    """Write a Space folder, or build and launch the page (blocks until Ctrl-C)."""
    from hspnet.apps.demo.page import DemoModel, build_demo, gradio_available, import_gradio, launch_demo
    from hspnet.apps.demo.space import write_space

    if args.no_examples and args.examples:
        raise ValueError("--examples and --no_examples contradict each other")
    if args.top_k < 0:
        raise ValueError(f"--top_k must be >= 0 (0: no limit), got {args.top_k}")
    examples = [] if args.no_examples else args.examples
    if args.write_space is not None:
        folder = write_space(args.model, args.write_space, examples, title=args.title,
                             space_model_id=args.space_model_id, overwrite=args.overwrite,
                             threshold=args.threshold, top_k=args.top_k)
        print(f"wrote a Space to {folder}: run it with `python {os.path.join(folder, 'app.py')}`, or upload it with "
              f"`hf upload --repo-type space USER/SPACE_NAME {folder} .`")
        return folder
    if args.space_model_id is not None or args.overwrite:
        raise ValueError("--space_model_id and --overwrite only apply with --write_space DIR")
    if not gradio_available():  # reported before the model is loaded
        import_gradio()
    model = DemoModel.load(args.model, device=args.device, trust_remote_code=args.trust_remote_code,
                           max_image_pixels=args.max_image_pixels,
                           max_upload_bytes=int(args.max_file_size * 1024 * 1024), max_images=args.max_images)
    if args.top_k > model.label_groups.num_labels:
        raise ValueError(f"--top_k must be in [0, {model.label_groups.num_labels}] (the model has "
                         f"{model.label_groups.num_labels} labels), got {args.top_k}")
    blocks = build_demo(model, examples, title=args.title, threshold=args.threshold, top_k=args.top_k)
    launch_demo(blocks, host=args.host, port=args.port, share=args.share)
    return blocks


def main(argv: list[str] | None = None, prog: str | None = "hspnet demo", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error, 130 on
    Ctrl-C (which is how the page is stopped)."""
    return run_command(build_parser(prog), run, argv, check=check, before_run=before_run)
