"""Errors raised while reading datasets: every message names the file, and the line or field where known."""

from __future__ import annotations

import os

from hspnet.utils.files import path_inside, special_kind


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


def check_input_file(path, what: str = "file") -> str:
    """``path`` if it is a regular file. A missing path raises :class:`MissingFileError`; a folder, FIFO or device
    raises :class:`DatasetFormatError` naming it (opening a FIFO would block the build forever, so this is asked
    before every ``open`` of an input file)."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MissingFileError(f"{what} not found", file=path) from None
    except OSError as error:
        raise DatasetFormatError(f"cannot access this {what} ({error.strerror or error})", file=path) from None
    kind = special_kind(mode)
    if kind is not None:
        raise DatasetFormatError(f"the {what} is {kind}, not a regular file", file=path)
    return path




def listed_path(root, name: str, *, file, line: int | None = None, field: str | None = None, start=None) -> str:
    """The path of an image (or annotation) that a file lists as `name`, relative to `start` (default `root`); a name
    that leads outside `root` (absolute, a drive, ``..`` above it) raises :class:`DatasetFormatError` naming the file
    and line."""
    try:
        return path_inside(root, name, "listed name", start=start)
    except ValueError as error:
        raise DatasetFormatError(str(error).removeprefix("listed name: "), file=file, line=line, field=field) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _reject_duplicate_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return out


def duplicate_key_position(text: str) -> tuple[str, int] | None:
    """``(key, offset)`` of the first key that repeats a key of the same JSON object in ``text`` (valid JSON), or
    None. A small scanner: only called after a duplicate was found, to name its line."""
    from json.decoder import scanstring

    stack: list[set | None] = []
    position, length = 0, len(text)
    while position < length:
        char = text[position]
        if char == "{":
            stack.append(set())
        elif char == "[":
            stack.append(None)
        elif char in "]}":
            if stack:
                stack.pop()
        elif char == '"':
            value, end = scanstring(text, position + 1)
            after = end
            while after < length and text[after] in " \t\r\n":
                after += 1
            if after < length and text[after] == ":" and stack and stack[-1] is not None:
                if value in stack[-1]:
                    return value, position
                stack[-1].add(value)
            position = end
            continue
        position += 1
    return None


def parse_json_text(text: str, path, line: int | None = None):
    """Parse JSON ``text`` read from ``path`` (line ``line`` of a JSON Lines file, if given). Malformed JSON and an
    object with the same key twice (``json`` would silently keep the last value) raise :class:`DatasetFormatError`
    naming the file, the line and the key."""
    import json

    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as error:
        where = error.lineno if line is None else line
        raise DatasetFormatError(f"invalid JSON: {error.msg} (column {error.colno})", file=path, line=where) from None
    except _DuplicateKey as duplicate:
        found = duplicate_key_position(text)
        where = line
        if found is not None and found[0] == duplicate.key and line is None:
            where = text.count("\n", 0, found[1]) + 1
        raise DatasetFormatError(
            f"the key {duplicate.key!r} appears twice in the same JSON object (only one value could be kept)",
            file=path,
            line=where,
            field=duplicate.key,
        ) from None


def read_text_file(path, what: str = "file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark, as Excel writes, is dropped); a missing file, a FIFO or
    a device, and bytes that are not UTF-8 raise :class:`DatasetFormatError` naming the file (and the line)."""
    path = check_input_file(path, what)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetFormatError(
            f"not UTF-8 text ({error.reason} at byte {error.start})", file=path, line=line
        ) from None


def read_json_file(path: str, what: str = "JSON file"):
    """Parse a UTF-8 JSON file (a byte-order mark is allowed); malformed content or a key given twice in one object
    raises `DatasetFormatError` naming the file, line and column / key."""
    return parse_json_text(read_text_file(path, what), path)
