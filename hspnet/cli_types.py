"""Shared pieces of the command-line entry points: argparse value types (errors name the bad value) and the runner
that turns bad input into a one-line error and exit status 1."""

from __future__ import annotations

import argparse
import json
import math
import numbers
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


def number_type(kind: type, what: str, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: a finite `kind` (int or float) in `[low, high]` (`low` excluded with `low_open`); anything
    else raises `expected <what>, got '<value>'`."""

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        bad = (
            number is None
            or (kind is float and not math.isfinite(number))
            or (low is not None and (number < low or (low_open and number == low)))
            or (high is not None and number > high)
        )
        if bad:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    return parse


positive_int = number_type(int, "a positive integer", 1)
probability = number_type(float, "a number in [0, 1]", 0.0, 1.0)


def check_probability(value, name: str, allow_none: bool = True) -> float | None:
    """What `probability` checks on the command line, for a Python value (a library argument): `value` as a float if
    it is a finite number in `[0, 1]` (or None when allowed); `ValueError` naming `name` otherwise (NaN, inf, strings
    and booleans included)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value!r}")
    return float(value)


def check_positive_int(value, name: str, allow_none: bool = False, minimum: int = 1) -> int | None:
    """What `positive_int` checks on the command line, for a Python value: `value` if it is an integer `>= minimum`
    (or None when allowed); `ValueError` naming `name` otherwise (floats, strings and booleans included)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors that mean "bad input" (a file, a value, a missing package), not a bug: the project's own errors
    (all `ValueError` / `OSError` subclasses), and the errors libraries raise on bad files (malformed YAML, an
    unreadable safetensors file, a pickle that is not one)."""
    import pickle

    types: list[type[BaseException]] = [OSError, ValueError, ImportError, pickle.UnpicklingError, EOFError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        pass
    try:
        from safetensors import SafetensorError

        types.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(types)


def one_line(error: BaseException | str) -> str:
    """The message of `error` on one line (white space folded), or its type name when it has no message."""
    text = " ".join(str(error).split())
    return text or (type(error).__name__ if isinstance(error, BaseException) else "")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add `--debug` (show the full traceback instead of the one-line error) unless the parser has it."""
    if not any("--debug" in action.option_strings for action in parser._actions):
        parser.add_argument("--debug", action="store_true", help="on error, show the full traceback")


def run_cli(parser: argparse.ArgumentParser, run, argv: list[str] | None = None) -> int:
    """Parse `argv` and call `run(args)`: 0 on success; on bad input (see `user_error_types`) one line
    `<prog>: error: <message>` on stderr and exit status 1, or the traceback with `--debug`. A closed output pipe
    (e.g. `| head`) ends quietly, Ctrl-C gives 130."""
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar
    try:
        run(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    except user_error_types() as error:
        if getattr(args, "debug", False):
            raise
        from hspnet.redaction import redact

        print(f"{parser.prog}: error: {redact(one_line(error), getattr(args, 'hub_token', None))}", file=sys.stderr)
        return 1
    return 0
