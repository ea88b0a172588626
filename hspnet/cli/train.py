"""`hspnet train` (= `accelerate launch scripts/train.py`): :func:`hspnet.training.train` over the options of
:class:`hspnet.training.arguments.TrainingConfig` (a YAML file given with `--config`, then the flags)."""

from __future__ import annotations

import sys

from hspnet.training.arguments import build_argument_parser, parse_training_namespace, training_config
from hspnet.utils.command_line import CommandParser, run_command


def build_parser(prog: str | None = "hspnet train") -> CommandParser:
    return build_argument_parser(prog=prog)


def run(args, argv: list[str] | None = None) -> None:
    """Train; `argv` (the options as typed) is what the command printed on Ctrl-C repeats to resume."""
    from hspnet.training.loop import train

    train(training_config(args), argv=argv)


def main(argv: list[str] | None = None, prog: str | None = "hspnet train", before_run=None) -> int:
    """0 on success, 1 with a one-line ``error:`` on bad input or a failed run, 2 on a usage error, 130 on Ctrl-C
    (with the last checkpoint and the command that resumes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command(build_parser(prog), lambda args: run(args, argv), argv, parse=parse_training_namespace,
                       before_run=before_run)
