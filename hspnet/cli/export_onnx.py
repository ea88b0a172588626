"""`hspnet export-onnx MODEL OUT.onnx`: a trained model as an ONNX file checked with onnxruntime, by
:func:`hspnet.apps.onnx_export.run_export`."""

from __future__ import annotations

from hspnet.apps.defaults import ONNX_DEFAULT_OPSET, ONNX_EXPORTERS, ONNX_INSTALL_HINT
from hspnet.utils.command_line import CommandParser, run_command
from hspnet.utils.model_source import check_model_argument


def build_parser(prog: str | None = "hspnet export-onnx") -> CommandParser:
    parser = CommandParser(
        prog=prog,
        description="Export a trained HSPNet model to ONNX: pixel_values (B, 3, H, W) -> logits (B, C), the label "
        "embeddings stored as a constant, and image_embeds (B, D). Labels, hierarchy and preprocessing go into the "
        "file's metadata and into OUT.json beside it. With --label_encoder, the label side too, as OUT.labels.onnx: "
        "tokenized label names -> label embeddings, for labels the model was not trained on (docs/onnx.md). The "
        f"result is checked with onnxruntime before it is written. Needs {ONNX_INSTALL_HINT}.",
    )
    parser.add_argument("model", help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("output", help="the .onnx file to write (atomically); OUT.json is written beside it")
    parser.add_argument("--opset", type=int, default=ONNX_DEFAULT_OPSET,
                        help=f"ONNX opset (default {ONNX_DEFAULT_OPSET})")
    parser.add_argument("--exporter", choices=ONNX_EXPORTERS, default="dynamo",
                        help="torch.onnx exporter: dynamo (default, torch.export) or torchscript (legacy)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest difference from the PyTorch model (logits, image and label embeddings) accepted "
                        "by the check (default 1e-4)")
    parser.add_flag("--no_verify", help="skip the onnxruntime check")
    parser.add_flag("--label_encoder", help="also write the label side as OUT.labels.onnx (and OUT.labels.json): "
                    "label names -> label embeddings, as model.set_labels computes them; needs the model's tokenizer")
    parser.add_flag("--no_json", help="do not write OUT.json (the metadata stays in the file)")
    parser.add_flag("--trust_remote_code", help="for Hub models that need their own code")
    return parser


check = check_model_argument  # a mistyped model path is named before torch is loaded


def run(args) -> None:
    from hspnet.apps.onnx_export import run_export

    run_export(args)


def main(argv: list[str] | None = None, prog: str | None = "hspnet export-onnx", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input (``--debug``: the traceback), 2 on a usage error."""
    return run_command(build_parser(prog), run, argv, check=check, before_run=before_run)
