"""Writing outputs safely: every file a tool writes appears whole or not at all, and never replaces an input.

- :func:`atomic_write`: a context manager giving a file object on a temporary file in the target's folder; on a
  clean exit the temporary file is flushed, synced and renamed over the target (an atomic replace on POSIX); on an
  error it is removed and the old target, if any, is untouched. A link is followed (the file it points to is
  replaced); a device or FIFO target (``/dev/stdout``) is written into directly, never replaced.
- :func:`write_text` / :func:`write_json`: the same for a string / a JSON document.
- :func:`refuse_inputs_as_output`: ``ValueError`` when an output path is one of the input files.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from typing import Any, Iterable, Iterator


def special_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, from its `st_mode` ("a FIFO", "a folder", ...), or
    None for a regular file. Asked before opening anything, since opening a FIFO blocks."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write ``path`` through a temporary file that is renamed over it only when the block ends without error."""
    path = os.path.realpath(os.fspath(path))  # through links: replace the file a link points to, not the link
    if os.path.exists(path) and not os.path.isfile(path):
        # a device or FIFO (/dev/stdout, /dev/full, a pipe): write into it; renaming over it would replace the node
        with open(path, mode, encoding=None if "b" in mode else encoding) as stream:
            yield stream
        return
    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    binary = "b" in mode
    try:
        with os.fdopen(handle, mode, encoding=None if binary else encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if os.path.exists(path):  # keep the permission bits of the file being replaced
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path) as stream:
        stream.write(text)
    return os.fspath(path)


def write_json(path: str | os.PathLike, value: Any, indent: int = 2) -> str:
    """Write ``value`` as JSON (UTF-8, sorted as given, trailing newline) to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (also through links); False when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def refuse_inputs_as_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "--output"):
    """Raise ``ValueError`` if ``output`` is one of ``inputs`` (writing it would destroy that input)."""
    for item in inputs:
        if same_file(output, item):
            raise ValueError(f"{os.fspath(output)}: {what} is one of the input files; choose another output path")
