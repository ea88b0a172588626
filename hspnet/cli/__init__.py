"""The `hspnet` command: one entry point, a subcommand per application, each in its own module here.

    hspnet train --config configs/demo.yaml        # = accelerate launch scripts/train.py ... (one process)
    hspnet evaluate --model_name_or_path outputs/demo --dataset demo
    hspnet predict --model_name_or_path outputs/demo photos/
    hspnet prepare demo --output_dir data/demo
    hspnet convert hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy

Every subcommand module has ``build_parser(prog)`` (a :class:`~hspnet.utils.command_line.CommandParser`: both
spellings of every option, no abbreviations, one-line usage errors with a suggestion), ``run(args)`` and ``main``;
every one follows the exit statuses of :data:`hspnet.utils.command_line.EXIT_STATUSES` (0 success, 1 bad input or a
failed run, 2 usage error, 130 interrupted).

Building a parser imports neither torch nor transformers: through the `hspnet` console command (the
`hspnet_command` module), ``--help``, ``--version`` and usage errors answer without loading the package's model
layer; the package is loaded once the command line is known to be good.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from hspnet.utils.command_line import EXIT_USAGE, suggest_command

# subcommand -> (module of this package, one-line help); each module has build_parser(prog), run(args) and main
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hspnet.cli.train", "train HSPNet (accelerate; YAML config + flags)"),
    "evaluate": ("hspnet.cli.evaluate", "metrics of a trained model on a dataset split"),
    "predict": ("hspnet.cli.predict", "labels for image files or folders"),
    "calibrate": ("hspnet.cli.calibrate", "per-label thresholds chosen on a fully labelled split, stored in the model"),
    "prepare": ("hspnet.cli.prepare", "build a dataset (COCO, VOC, NUS-WIDE, CUB, folders, demo)"),
    "convert": ("hspnet.cli.convert", "convert the authors' released checkpoints"),
    "export-onnx": ("hspnet.cli.export_onnx", "export a trained model to ONNX (checked with onnxruntime)"),
    "demo": ("hspnet.cli.demo", "a demo page (Gradio) for a trained model, or a Hugging Face Space folder"),
    "push": ("hspnet.cli.push", "upload a trained or converted model folder to the Hub (one commit)"),
}


def version() -> str:
    """The installed distribution's version (setup.cfg reads it from `hspnet.__version__`)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("hspnet")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hspnet <command> [options]   (hspnet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help     this list", "  -V, --version  the version of hspnet", "",
              "exit status: 0 success, 1 bad input or a failed run (one line; --debug shows the traceback), "
              "2 usage error, 130 interrupted"]
    return "\n".join(lines)


def command_module(name: str):
    """The module of the subcommand `name` (see :data:`COMMANDS`)."""
    return importlib.import_module(COMMANDS[name][0])


def build_parser(name: str):
    """The parser of the subcommand `name`, as `hspnet <name>` builds it."""
    return command_module(name).build_parser(f"hspnet {name}")


def main(argv: list[str] | None = None, *, before_run: Callable[[], None] | None = None) -> int:
    """`hspnet <command> ...`: the exit status. `before_run` is called once the command line is known to be good."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] in ("-V", "--version"):
        print(f"hspnet {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        what = "option" if name.startswith("-") else "command"
        hint = suggest_command(name, COMMANDS) if what == "command" else None
        print(f"hspnet: error: unknown {what} {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
              + " (see hspnet --help)", file=sys.stderr)
        return EXIT_USAGE
    return command_module(name).main(rest, prog=f"hspnet {name}", before_run=before_run)


__all__ = ["COMMANDS", "build_parser", "command_module", "main", "usage", "version"]
