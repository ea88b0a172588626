"""The `hspnet` command: one entry point, a subcommand per front end.

    hspnet train --config configs/demo.yaml        # = accelerate launch scripts/train.py ... (one process)
    hspnet evaluate --model outputs/demo --dataset demo
    hspnet predict --model outputs/demo photos/
    hspnet prepare demo --output data/demo
    hspnet convert hspnet+coco.ckpt hspnet-coco --relation relation+super+rn50.npy

Every subcommand follows one convention (`hspnet.utils.errors.run_cli`): bad input ends with one line
`hspnet <command>: error: ...` and exit status 1; `--debug` shows the traceback instead. Subcommands are imported
only when used, so `hspnet --help` is instant.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> ("module:function", one-line help); the function takes (argv, prog) and returns an exit status
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hspnet.training.loop:main", "train HSPNet (accelerate; YAML config + flags)"),
    "evaluate": ("hspnet.apps.evaluate:main", "metrics of a trained model on a dataset split"),
    "predict": ("hspnet.apps.predict:main", "labels for image files or folders"),
    "prepare": ("hspnet.data.cli:main", "build a dataset (COCO, VOC, NUS-WIDE, CUB, folders, demo)"),
    "convert": ("hspnet.conversion.cli:main", "convert the authors' released checkpoints"),
    "export-onnx": ("hspnet.apps.onnx_export:main", "export a trained model to ONNX (checked with onnxruntime)"),
    "demo": ("hspnet.apps.demo.command:main", "a demo page (Gradio) for a trained model, or a Hugging Face Space folder"),
    "push": ("hspnet.hub.transfer:main", "upload a trained or converted model folder to the Hub (one commit)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hspnet <command> [options]   (hspnet <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hspnet: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return function(rest, prog=f"hspnet {name}")


if __name__ == "__main__":
    sys.exit(main())
