"""The plain-text annotation files: the authors' list format (``file_name,idx idx ...``), single-positive lists,
label indices, text lines (UTF-8, BOM dropped, any line end; FIFOs refused) and the required files and folders of a
layout. Errors name the file and the line."""

from __future__ import annotations

import os
from collections.abc import Iterable

from hspnet.data.errors import DatasetFormatError, MissingFileError, check_input_file
from hspnet.utils.files import read_text_file


def normalise_key(name: str) -> str:
    return name.strip().replace("\\", "/")


def read_label_list(
    path: str | os.PathLike, num_labels: int | None = None, *, allow_empty: bool = True
) -> list[tuple[str, list[int], int]]:
    """Read the authors' list format: ``file_name,idx idx ...`` per line (a space after the comma is allowed, as in
    ``cub_train.txt``). Returns ``(file_name, label indices, line number)``; blank lines are skipped.

    Raises :class:`DatasetFormatError` (with the file and line) for a line without a comma, a non-integer or
    out-of-range index, or a file name listed twice.
    """
    path = check_input_file(os.fspath(path), "label list")
    entries: list[tuple[str, list[int], int]] = []
    first_line: dict[str, int] = {}
    for number, line in iter_text_lines(path):
        if "," not in line:
            raise DatasetFormatError(f"expected 'file_name,label indices', got {line!r}", file=path, line=number)
        name, _, rest = line.rpartition(",")
        name = normalise_key(name)
        if not name:
            raise DatasetFormatError("empty file name", file=path, line=number)
        labels = []
        for token in rest.split():
            labels.append(parse_label_index(token, num_labels, file=path, line=number))
        if not labels and not allow_empty:
            raise DatasetFormatError(f"no label index for {name!r}", file=path, line=number)
        if name in first_line:
            raise DatasetFormatError(
                f"image {name!r} is listed twice (first on line {first_line[name]})", file=path, line=number
            )
        first_line[name] = number
        entries.append((name, sorted(set(labels)), number))
    return entries


def read_observed_labels(path: str | os.PathLike, num_labels: int | None = None) -> dict[str, tuple[int, int]]:
    """Read a single-positive list (``coco_train_singlelabel.txt``, ``voc_train.txt``, ``cub_train.txt`` formats):
    ``{file_name: (label index, line number)}``; every line must carry exactly one label index."""
    out: dict[str, tuple[int, int]] = {}
    for name, labels, number in read_label_list(path, num_labels, allow_empty=False):
        if len(labels) != 1:
            raise DatasetFormatError(
                f"a single-positive list needs exactly one label per image, {name!r} has {len(labels)}",
                file=path,
                line=number,
            )
        out[name] = (labels[0], number)
    return out


def read_label_set_file(path: str | os.PathLike, what: str = "labels file") -> list[tuple[str, str | None, int]]:
    """Read a file of labels to score at inference (``hspnet predict --labels`` / ``--add_labels``, the label names
    of ``set_labels``): one label per line, optionally followed by a TAB and the name (or index) of its group; blank
    lines and lines starting with ``#`` are skipped; UTF-8. Returns ``(label, group or None, line number)``.

    Raises :class:`DatasetFormatError` naming the file and line for a line with more than one TAB, an empty label or
    group, a label listed twice, or a file without any label."""
    path = check_input_file(os.fspath(path), what)
    entries: list[tuple[str, str | None, int]] = []
    first_line: dict[str, int] = {}
    import io

    text = read_text_file(path, what, error=DatasetFormatError, missing=MissingFileError)
    for number, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.rstrip("\n").strip(" ")  # not the TABs: a leading TAB is an empty label, not a label's absence
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [field.strip() for field in line.rstrip("\t").split("\t")]
        if len(fields) > 2:
            raise DatasetFormatError(f"expected 'label' or 'label<TAB>group', got {len(fields)} TAB-separated fields",
                                     file=path, line=number)
        name, group = fields[0], (fields[1] if len(fields) == 2 else None)
        if not name or group == "":
            raise DatasetFormatError(f"empty {'label' if not name else 'group'} in {line!r}", file=path, line=number)
        if name in first_line:
            raise DatasetFormatError(f"label {name!r} is listed twice (first on line {first_line[name]})", file=path,
                                     line=number)
        first_line[name] = number
        entries.append((name, group, number))
    if not entries:
        raise DatasetFormatError(f"no label name in the {what} (one per line; blank lines and # comments are "
                                 "skipped)", file=path)
    return entries


def parse_label_index(token: str, num_labels: int | None, *, file=None, line=None, field=None) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DatasetFormatError(
            f"label index {token!r} is not an integer", file=file, line=line, field=field
        ) from None
    if value < 0 or (num_labels is not None and value >= num_labels):
        bound = f"0..{num_labels - 1}" if num_labels is not None else ">= 0"
        raise DatasetFormatError(f"label index {value} is out of range ({bound})", file=file, line=line, field=field)
    return value


def iter_text_lines(path: str, what: str = "file") -> Iterable[tuple[int, str]]:
    """``(line number, stripped line)`` for the non-blank lines of a UTF-8 text file (a byte-order mark is
    dropped; ``\\n``, ``\\r\\n`` and ``\\r`` end lines). A FIFO or device is refused, never opened."""
    import io

    text = read_text_file(path, what, error=DatasetFormatError, missing=MissingFileError)
    for number, raw in enumerate(io.StringIO(text, newline=None), start=1):
        line = raw.strip()
        if line:
            yield number, line


def first_existing(folder: str, names) -> str | None:
    """The first of ``names`` (relative to ``folder``) that exists there, as a path; None when none does."""
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


def require_file(path: str, what: str) -> str:
    """``path`` if it is a regular file, else :class:`MissingFileError` / :class:`DatasetFormatError` naming it."""
    return check_input_file(path, what)


def require_dir(path: str | os.PathLike | None, what: str) -> str:
    if path is None:
        raise MissingFileError(f"no {what} given")
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise MissingFileError(f"{what} does not exist or is not a folder", file=path)
    return path
