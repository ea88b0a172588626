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
import re
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


def path_inside(root: str | os.PathLike, name: str, what: str, start: str | os.PathLike | None = None) -> str:
    """``start/name`` (`start` defaults to `root`, and lies inside it) for a relative `name` read from a file (a file
    list, a checkpoint's index), refusing a name that would lead outside `root`: an absolute path, a drive, a ``..``
    that climbs above `root`, a NUL byte. Links are not followed (a folder of the user's may link elsewhere on
    purpose); the check is on the name. Raises ``ValueError`` starting with `what` (which should name the file and
    line the name was read from)."""
    text = os.fspath(name)
    root = os.fspath(root)
    prefix = [] if start is None else os.path.relpath(os.fspath(start), root).replace(os.sep, "/").split("/")
    parts = text.replace("\\", "/").split("/")
    if (not text or "\0" in text or os.path.isabs(text) or text.startswith(("/", "\\"))
            or (len(parts[0]) >= 2 and parts[0][1] == ":")):
        raise ValueError(f"{what}: {name!r} is not a path relative to {root} (absolute paths and drives are refused)")
    parts = [part for part in prefix if part != "."] + parts
    depth = 0
    for part in parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{what}: {name!r} leads outside {root} ('..' climbs above it); refused")
        elif part not in ("", "."):
            depth += 1
    return os.path.normpath(os.path.join(root, *[part for part in parts if part]))


def plain_file_name(name: object, what: str) -> str:
    """`name` if it is one file name (no folder part, not hidden, not ``.``/``..``), else ``ValueError`` starting
    with `what`."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or "/" in name
            or "\\" in name or "\0" in name or (len(name) >= 2 and name[1] == ":")):
        raise ValueError(f"{what}: {name!r} is not a plain file name; refused")
    return name


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether a model name means a Hub repository (``namespace/name``) rather than a local path: the one rule of the
    project. A name that exists locally is a path; so is anything absolute, starting with ``.`` or ``~``, with a
    backslash or more than one ``/``, or whose first part is an existing local folder (``outputs/dem`` beside an
    ``outputs/`` folder is a mistyped path, not a repository); a bare ``namespace/name`` is a Hub id."""
    text = os.fspath(name)
    if os.path.exists(os.path.expanduser(text)) or not _HUB_ID.fullmatch(text):
        return False
    return not os.path.isdir(text.split("/", 1)[0])
