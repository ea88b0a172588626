"""Errors raised while reading datasets: every message names the file, and the line or field where known."""

from __future__ import annotations

import os


def _location(file, line=None, field=None) -> str:
    where = os.fspath(file) if file is not None else ""
    if line is not None:
        where = f"{where}, line {line}" if where else f"line {line}"
    if field is not None:
        where = f"{where}, field {field!r}" if where else f"field {field!r}"
    return where


class DatasetFormatError(ValueError):
    """A dataset file is missing, malformed or inconsistent.

    Attributes:
        file: the offending file (or folder), if any.
        line: the 1-based line number in ``file``, if the problem is on one line.
        field: the field (column, JSON key, XML tag) at fault, if any.
        reason: the message without the location.
    """

    def __init__(self, reason: str, *, file=None, line: int | None = None, field: str | None = None):
        self.file = os.fspath(file) if file is not None else None
        self.line = line
        self.field = field
        self.reason = reason
        where = _location(file, line, field)
        super().__init__(f"{where}: {reason}" if where else reason)


class MissingFileError(DatasetFormatError, FileNotFoundError):
    """A root folder or an annotation file that the layout requires does not exist."""


class ImageError(DatasetFormatError):
    """Images listed by the annotations are missing or unreadable (``on_missing_image="error"``).

    Attributes:
        missing: the missing image paths.
        unreadable: ``(path, reason)`` for each image that exists but cannot be opened.
    """

    def __init__(self, reason: str, *, missing=(), unreadable=(), file=None):
        self.missing = list(missing)
        self.unreadable = list(unreadable)
        super().__init__(reason, file=file)


def read_json_file(path: str):
    """Parse a UTF-8 JSON file; malformed content raises `DatasetFormatError` naming the file, line and column."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DatasetFormatError(
            f"invalid JSON: {error.msg} (column {error.colno})", file=path, line=error.lineno
        ) from None
    except UnicodeDecodeError as error:
        raise DatasetFormatError(f"not UTF-8 text ({error.reason})", file=path) from None
