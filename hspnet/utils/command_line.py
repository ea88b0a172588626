"""Command lines that behave alike, whichever subcommand: :class:`CommandParser` and :func:`run_command`.

Every `hspnet` subcommand (and the `scripts/`) parses with a :class:`CommandParser`, an `argparse.ArgumentParser`
that

- accepts both spellings of every long option, ``--option_name`` and ``--option-name`` (as transformers'
  `HfArgumentParser` does), whichever one the option was declared with;
- never guesses: prefix abbreviations are off (``--epoch 3`` is an error, not ``--epochs 3``);
- answers a usage error with ONE line on stderr, ``<prog>: error: <what>``, with the closest valid spelling of an
  unknown option or choice, and exit status 2;
- gives boolean options one form (:meth:`CommandParser.add_flag`): ``--name``, ``--name true|false`` and, for an option
  that is on by default, ``--no_name``.

:func:`run_command` runs a parsed command with the project's convention for everything after parsing (the exit
statuses are :data:`EXIT_STATUSES`):

    0    success
    1    bad input or a failed run: one line ``<prog>: error: <message>`` (``--debug`` shows the traceback)
    2    a usage error: an unknown, missing or malformed option or command (one line, as above)
    130  interrupted (Ctrl-C)

This module imports only the standard library, so that a parser is built and ``--help`` answered without loading
torch or transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
import typing
from typing import Any, Callable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILURE: "bad input or a failed run (one line naming the culprit; --debug shows the traceback)",
    EXIT_USAGE: "usage error: an unknown, missing or malformed option or command (one line, with a suggestion)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

# Option names users bring from other tools (transformers' TrainingArguments, timm, ...) -> the name meaning the same
# here, suggested when no spelling is close. Only names whose meaning is the same.
FAMILIAR_NAMES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "max_steps": "max_train_steps",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "dataloader_num_workers": "num_workers",
    "workers": "num_workers",
    "warmup_ratio": "pct_start",
    "early_stopping_patience": "patience",
    "save_total_limit": "checkpoints_total_limit",
    "save_steps": "checkpointing_steps",
    "data_dir": "dataset_root",
    "root": "dataset_root",
    "model": "model_name_or_path",
    "output": "output_dir",
    "topk": "top_k",
    "k": "top_k",
}


def parse_bool(value: Any) -> bool:
    """``true/false``, ``yes/no``, ``1/0``, ``on/off`` (any case) -> bool; anything else is a usage error."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


def other_spelling(option: str) -> str | None:
    """``--option_name`` <-> ``--option-name`` (None for a short option or a name without a separator)."""
    if not option.startswith("--"):
        return None
    body = option[2:]
    if "_" in body:
        return "--" + body.replace("_", "-")
    if "-" in body:
        return "--" + body.replace("-", "_")
    return None


def _canonical(option: str) -> str:
    return option.replace("-", "_").lstrip("_")


class CommandParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` with the project's conventions (see the module docstring). Subparsers of a
    `CommandParser` are `CommandParser`s too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    # -- declaring options ------------------------------------------------------------------------------------------

    def add_flag(self, name: str, *aliases: str, default: bool = False, help: str | None = None,
                 container=None) -> argparse.Action:
        """A boolean option: ``--name`` (true), ``--name BOOL``; when `default` is true also ``--no_name``. `container`:
        an argument group of this parser to list it under."""
        container = container or self
        action = container.add_argument(name, *aliases, nargs="?", const=True, default=default, type=parse_bool,
                                        metavar="BOOL", help=help)
        if default:
            container.add_argument("--no_" + name.lstrip("-"), dest=action.dest, action="store_false",
                                   default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS if help is None else f"the same as {name} false")
        return action

    def _add_spellings(self) -> None:
        """Give every long option its other spelling (``_`` <-> ``-``), unless that is an option of its own."""
        for action in self._actions:
            for option in list(action.option_strings):
                other = other_spelling(option)
                if other and other not in self._option_string_actions:
                    action.option_strings.append(other)
                    self._option_string_actions[other] = action

    # -- parsing ----------------------------------------------------------------------------------------------------

    def parse_known_args(self, args=None, namespace=None):
        self._add_spellings()
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown_arguments(extras, namespace))
        return namespace

    def format_help(self) -> str:
        self._add_spellings()
        return super().format_help()

    def option_strings(self, namespace: argparse.Namespace | None = None) -> list[str]:
        """Every long option this parser (and the subcommand chosen in `namespace`) accepts, in one spelling."""
        self._add_spellings()
        found = [s for s in self._option_string_actions if s.startswith("--") and "-" not in s[2:]]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and namespace is not None:
                chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
                if isinstance(chosen, CommandParser):
                    found += chosen.option_strings()
        return found

    def _unknown_arguments(self, extras: list[str], namespace) -> str:
        first = extras[0]
        if not first.startswith("-") or first == "-":
            return f"unexpected argument {first!r}" + (f" (and {len(extras) - 1} more)" if len(extras) > 1 else "")
        name = first.split("=", 1)[0]
        hint = suggest_option(name, self.option_strings(namespace))
        return f"unknown option {name}" + (f"; did you mean {hint}?" if hint else "")

    def error(self, message: str):
        """A usage error: one line ``<prog>: error: <message>`` (with the closest valid choice of a mistyped one),
        exit status 2."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'|(\S+?)(?:,|$)", choice.group(2))
            names = [quoted or bare for quoted, bare in options]
            close = difflib.get_close_matches(choice.group(1), names, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        text = re.sub(r"(--[\w-]+)(?:/-{1,2}[\w-]+)+", r"\1", " ".join(message.split()))  # one spelling per option
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def suggest_option(name: str, valid: list[str]) -> str | None:
    """The valid option closest to `name` (any spelling), or the one a familiar name from another tool means."""
    by_key = {_canonical(option): option for option in valid}
    key = _canonical(name)
    if key in by_key:
        return by_key[key]
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.75)
    if close:
        return by_key[close[0]]
    familiar = FAMILIAR_NAMES.get(key)
    if familiar in by_key:
        return by_key[familiar]
    close = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    return by_key[close[0]] if close else None


def suggest_command(name: str, commands) -> str | None:
    close = difflib.get_close_matches(name, list(commands), n=1, cutoff=0.5)
    return close[0] if close else None


# ---------------------------------------------------------------------------------------------------------------------
# A parser over a dataclass (one option per field, the field's help in metadata={"help": ...})
# ---------------------------------------------------------------------------------------------------------------------


def add_dataclass_options(parser: CommandParser, cls, option_type: Callable[[str], tuple[Callable, str, bool]]) -> None:
    """One option per field of the dataclass `cls`: ``--field_name`` (and ``--field-name``), its help from
    ``metadata["help"]``, its default (shown by `--help` with `argparse.ArgumentDefaultsHelpFormatter`);
    `option_type(name)` gives ``(parse, metavar, optional)``. Boolean fields are
    :meth:`CommandParser.add_flag`s."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        help_text = field.metadata.get("help")
        if hints[field.name] is bool:
            parser.add_flag(f"--{field.name}", default=bool(default), help=help_text)
            continue
        parse, metavar, _ = option_type(field.name)
        parser.add_argument(f"--{field.name}", type=parse, default=default, metavar=metavar, help=help_text)


# ---------------------------------------------------------------------------------------------------------------------
# Running a command
# ---------------------------------------------------------------------------------------------------------------------


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show the full traceback instead of the one-line error) unless the parser has it."""
    if not any("--debug" in action.option_strings for action in parser._actions):
        parser.add_argument("--debug", action="store_true", help="on error, show the full traceback")


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any],
                argv: list[str] | None = None, *, parse: Callable | None = None,
                check: Callable[[argparse.Namespace], None] | None = None,
                before_run: Callable[[], None] | None = None) -> int:
    """Parse `argv` (``parse(parser, argv)``, default ``parser.parse_args``), ``check(args)`` (the checks that need
    nothing heavy, e.g. that a model path exists) and call ``run(args)``; the exit status (:data:`EXIT_STATUSES`).
    `before_run` is called once the command line is known to be good (the `hspnet` command loads the package
    there). A usage error exits through argparse (``SystemExit(2)``, one line); bad input
    (:func:`hspnet.utils.errors.user_error_types`) is one line ``<prog>: error: <message>`` and 1, the traceback with
    ``--debug``; a closed output pipe (``| head``) ends quietly; Ctrl-C gives 130."""
    from hspnet.utils.errors import one_line, user_error_types

    add_debug_flag(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, args = "--debug" in argv, None
    try:
        args = parse(parser, argv) if parse is not None else parser.parse_args(argv)
        debug = getattr(args, "debug", debug)
        if check is not None:
            check(args)
        if before_run is not None:
            before_run()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar
        run(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except user_error_types() as error:
        if debug:
            raise
        from hspnet.utils.redaction import redact

        print(f"{parser.prog}: error: {redact(one_line(error), getattr(args, 'hub_token', None))}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
