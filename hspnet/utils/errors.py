"""The one convention for bad input: a user's mistake (a file, a value, a missing package) ends a command with ONE line
``<prog>: error: <message>`` and exit status 1 (:func:`run_cli`); :func:`one_line` folds a message onto one line,
:func:`user_error_types` says which exceptions count as bad input rather than bugs, and :class:`FileFormatError`
(worded by :func:`located`) is a bad input file named with its line and field.
"""

from __future__ import annotations

import argparse
import os
import sys


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
        from hspnet.utils.redaction import redact

        print(f"{parser.prog}: error: {redact(one_line(error), getattr(args, 'hub_token', None))}", file=sys.stderr)
        return 1
    return 0


def located(reason: str, file=None, line: int | None = None, field: str | None = None) -> str:
    """``"path, line 3, field 'name': reason"``, with the parts that are known: how every error about a file reads."""
    parts = [os.fspath(file)] if file is not None and os.fspath(file) else []
    if line is not None:
        parts.append(f"line {line}")
    if field is not None:
        parts.append(f"field {field!r}")
    return f"{', '.join(parts)}: {reason}" if parts else reason


class FileFormatError(ValueError):
    """An input file that is not what it should be (missing, not a regular file, not UTF-8, malformed,
    inconsistent); the message starts with the file, and the line or field where known (:func:`located`).

    Attributes: ``file`` (the path, if any), ``line`` (1-based), ``field`` (a column, JSON key, XML tag) and
    ``reason`` (the message without the location)."""

    def __init__(self, reason: str, *, file=None, line: int | None = None, field: str | None = None):
        self.file = os.fspath(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(located(reason, file, line, field))
