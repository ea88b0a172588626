"""Shared pieces of the command-line entry points: argparse value types (errors name the bad value) and the runner
that turns bad input into a one-line error and exit status 1."""

from __future__ import annotations

import argparse
import json
import os
import sys


def json_object(value: str) -> dict:
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {value!r}") from None
    if not isinstance(loaded, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_test\": 100}}', got {value!r}")
    return loaded


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def probability(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return number


def run_cli(parser: argparse.ArgumentParser, run, argv: list[str] | None = None) -> int:
    """Parse `argv` and call `run(args)`: 0 on success, 1 with `<prog>: error: <one line>` on bad input (`OSError`,
    `ValueError`, `ImportError`); a closed output pipe (e.g. `| head`) ends quietly, Ctrl-C gives 130."""
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar
    try:
        run(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, ValueError, ImportError) as error:
        print(f"{parser.prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
