"""`hspnet evaluate` (= `scripts/evaluate.py`, also under `accelerate launch`): the metrics of a trained model on a
dataset split next to the zero-shot CLIP baseline, by :func:`hspnet.apps.evaluate.run_evaluation`."""

from __future__ import annotations

from hspnet.utils.command_line import CommandParser, run_command
from hspnet.utils.model_source import check_model_argument
from hspnet.utils.validation import json_object, positive_int, probability


def build_parser(prog: str | None = "hspnet evaluate") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="Evaluate a trained HSPNet model on a prepared dataset split (every metric of "
        "hspnet.evaluation.metrics, a per-class AP table, a PNG report) next to the zero-shot CLIP baseline; with "
        "--unseen_labels, split into the labels seen in training and the unseen ones. Runs under `accelerate launch` "
        "too.",
    )
    parser.add_argument("--model_name_or_path", "--model", dest="model", required=True,
                        help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--dataset", default="demo",
                        help="demo | coco | voc | nuswide | cub | openimages | folder, or a folder written by "
                        "`hspnet prepare --output_dir` (default: demo)")
    parser.add_argument("--dataset_root", default=None, help="root folder of coco / voc / nuswide / cub / folder")
    parser.add_argument("--dataset_options", type=json_object, default={}, metavar="JSON",
                        help="keyword arguments of the dataset loader, as when training (e.g. '{\"num_test\": 200}')")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="per-process batch size (default 64)")
    parser.add_argument("--output_dir", default=None,
                        help="where to write metrics.json, per_class_ap.csv/.md, report.png (default: "
                        "MODEL/eval_DATASET_SPLIT for a local model, else ./eval_MODEL_DATASET_SPLIT)")
    parser.add_argument("--zero_shot_clip", "--zero_shot", dest="zero_shot_clip", default="auto", metavar="CLIP",
                        help="CLIP for the zero-shot baseline: a Hub id, a folder, tiny-random (the demo's), or none; "
                        "default auto: the clip_model of the training_args.json beside the model, if it is available "
                        "locally")
    parser.add_argument("--zero_shot_template", default=None,
                        help="prompt of the zero-shot baseline, '{}' standing for the label (default: CLIP's zero-shot "
                        "prompt, 'a photo of a {}.')")
    parser.add_argument("--threshold", type=probability, default=0.5,
                        help="decision threshold on sigmoid scores, in [0, 1] (default 0.5); a model with calibrated "
                        "thresholds (hspnet calibrate) is also reported at those")
    parser.add_argument("--top_k", type=positive_int, default=3, help="k of the top-k metrics (default 3)")
    parser.add_argument("--unseen_labels", default=None, metavar="FILE",
                        help="a UTF-8 file naming the dataset's labels the model was NOT trained on, one per line "
                        "(blank lines and # comments skipped); the dataset labels the model lacks are added "
                        "(model.add_labels, nearest group; nothing is trained) and every metric is also reported for "
                        "the seen labels, the unseen ones and all; see docs/evaluate-and-predict.md")
    parser.add_argument("--max_samples", type=positive_int, default=None, help="evaluate the first N images only")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder (as used when training)")
    parser.add_argument("--num_workers", type=int, default=0, help="dataloader workers (default 0)")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                        help="default: what accelerate launch / accelerate config says")
    parser.add_flag("--cpu", help="run on the CPU even when a GPU is available")
    parser.add_flag("--no_plot", help="do not write report.png (no matplotlib needed)")
    parser.add_flag("--trust_remote_code", help="for Hub models that need their own code")
    parser.add_flag("--torch_compile", help="run the model through torch.compile (same scores within float rounding; "
                    "pays off for many images, the first batch compiles)")
    return parser


check = check_model_argument  # a mistyped model path is named before torch is loaded


def run(args) -> None:
    from hspnet.apps.evaluate import run_evaluation

    run_evaluation(args)


def main(argv: list[str] | None = None, prog: str | None = "hspnet evaluate", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, check=check, before_run=before_run)
