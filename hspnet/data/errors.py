"""Errors raised while reading datasets: every message names the file, and the line or field where known.

Text and JSON files are read by :func:`hspnet.utils.files.read_text_file` / ``read_json_file`` with
``error=DatasetFormatError`` (and ``missing=MissingFileError`` where a file may be missing)."""

from __future__ import annotations

from hspnet.utils.errors import FileFormatError
from hspnet.utils.files import check_regular_file, path_inside


class DatasetFormatError(FileFormatError):
    """A dataset file is missing, malformed or inconsistent (the message names the file, and the line or field
    where known; see :class:`~hspnet.utils.errors.FileFormatError` for the attributes)."""


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
    """``path`` if it is a regular file (:func:`~hspnet.utils.files.check_regular_file`): a missing path raises
    :class:`MissingFileError`; a folder, FIFO or device :class:`DatasetFormatError` naming it (opening a FIFO would
    block the build forever, so this is asked before every ``open`` of an input file)."""
    return check_regular_file(path, what, error=DatasetFormatError, missing=MissingFileError)


def listed_path(root, name: str, *, file, line: int | None = None, field: str | None = None, start=None) -> str:
    """The path of an image (or annotation) that a file lists as `name`, relative to `start` (default `root`); a name
    that leads outside `root` (absolute, a drive, ``..`` above it) raises :class:`DatasetFormatError` naming the file
    and line."""
    try:
        return path_inside(root, name, "listed name", start=start)
    except ValueError as error:
        raise DatasetFormatError(str(error).removeprefix("listed name: "), file=file, line=line, field=field) from None
