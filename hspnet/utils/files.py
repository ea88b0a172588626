"""Files and paths, safely: every file a tool writes appears whole or not at all and never replaces an input; every
file it reads is checked first and a bad one is an error naming it.

- :func:`atomic_write`: a context manager giving a file object on a temporary file in the target's folder; on a
  clean exit the temporary file is flushed, synced and renamed over the target (an atomic replace on POSIX); on an
  error it is removed and the old target, if any, is untouched. A link is followed (the file it points to is
  replaced); a device or FIFO target (``/dev/stdout``) is written into directly, never replaced.
- :func:`write_text` / :func:`write_json`: the same for a string / a JSON document; :func:`write_output`: the same
  for a command's output file, with one ``OSError`` naming the path on failure.
- :func:`create_new_file`: the one way a temporary file is made: ``os.open(..., 0o666)``, so a new file gets the
  permissions the user's umask gives (``tempfile.mkstemp`` would make it 0600, readable by its owner only);
  :func:`new_file_mode` is that mode, and :func:`give_default_mode` sets it on a file another library wrote
  through a 0600 temporary file (``save_pretrained``'s weights). The process's umask is never changed (it is
  process-global).
- :func:`refuse_inputs_as_output`: ``ValueError`` when an output path is one of the input files.
- :func:`read_text_file` / :func:`read_json_file`: the one way to read a text or JSON input file (regular files only,
  checked by :func:`check_regular_file`; UTF-8; a JSON key given twice refused), with errors naming the file, the
  line and the key.
- :func:`path_inside` / :func:`plain_file_name`: names read from a file that must not lead elsewhere.
- :func:`is_hub_id`: the one rule telling a local path from a Hub repository id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from typing import Any, Callable, Iterable, Iterator

from hspnet.utils.errors import FileFormatError, one_line


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


def create_new_file(folder: str | os.PathLike, prefix: str = ".", suffix: str = ".tmp") -> tuple[int, str]:
    """``(descriptor, path)`` of a new, empty file ``folder/<prefix><random><suffix>`` opened for writing, created
    with ``os.open(path, O_CREAT | O_EXCL, 0o666)``: the kernel applies the umask, so the file gets the permissions
    any new file of the user gets (``tempfile.mkstemp`` gives 0600 whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = os.path.join(os.fspath(folder), f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file (100 names taken)")


def new_file_mode(folder: str | os.PathLike) -> int:
    """The permission bits a new file in `folder` gets (``0o666`` less the umask), read from a file created there and
    removed at once: the umask itself is never read with ``os.umask``, which changes it for every thread."""
    handle, path = create_new_file(folder, ".hspnet-mode-", ".tmp")
    try:
        return stat.S_IMODE(os.fstat(handle).st_mode)
    finally:
        os.close(handle)
        os.unlink(path)


def new_folder_mode(parent: str | os.PathLike) -> int:
    """The permission bits a new folder in `parent` gets (``0o777`` less the umask), read from a folder created there
    and removed at once (never with ``os.umask``, which changes it for every thread): the mode a staging folder made by
    ``tempfile.mkdtemp`` (0700) is given before it becomes a user's folder."""
    for _ in range(100):
        probe = os.path.join(os.fspath(parent), f".hspnet-mode-{secrets.token_hex(6)}")
        try:
            os.mkdir(probe, 0o777)
        except FileExistsError:
            continue
        try:
            return stat.S_IMODE(os.stat(probe).st_mode)
        finally:
            os.rmdir(probe)
    raise FileExistsError(f"{parent}: could not create a probe folder (100 names taken)")


def give_default_mode(paths: Iterable[str | os.PathLike], mode: int) -> None:
    """Set the permission bits `mode` (from :func:`new_file_mode`) on regular files that were just written by another
    library through a ``mkstemp`` temporary file (0600), as if they had been created with the user's umask; links
    are left alone."""
    for path in paths:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)


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
    handle, temporary = create_new_file(folder, f".{os.path.basename(path)}.", ".tmp")  # the umask's permissions
    binary = "b" in mode
    try:
        with os.fdopen(handle, mode, encoding=None if binary else encoding) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if os.path.exists(path):  # keep the permission bits of the file being replaced
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
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


def write_output(path: str | os.PathLike, data: str | bytes) -> str:
    """Write ``data`` (text as UTF-8, or bytes) to the file ``path``: atomically (a temporary file in the same
    folder renamed over it, so an existing file is replaced whole or left intact), creating missing parent folders.
    An existing FIFO or device (``/dev/stdout``, a pipe from ``>(...)``) is written directly. Any failure (full disk,
    unwritable folder, a parent that is a file) raises ``OSError`` whose one-line message names ``path``."""
    path = os.fspath(path)
    binary = isinstance(data, bytes)
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: is a folder; give a file name")
        target = os.path.realpath(path) if os.path.islink(path) else path  # write through a link, keep the link
        special = os.path.exists(target) and special_kind(os.stat(target).st_mode) is not None
        if special:
            with open(target, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
                stream.write(data)
        else:
            parent = os.path.dirname(os.path.abspath(target))
            if os.path.lexists(parent) and not os.path.isdir(parent):
                raise NotADirectoryError(f"{path}: cannot write it, {parent} is not a folder")
            os.makedirs(parent, exist_ok=True)
            with atomic_write(target, "wb" if binary else "w") as stream:
                stream.write(data)
    except IsADirectoryError:
        raise
    except OSError as error:
        if path in str(error) and not getattr(error, "filename", None):
            raise
        reason = error.strerror or one_line(error)
        raise OSError(f"{path}: cannot write it ({reason})") from error
    return path


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


# ---------------------------------------------------------------------------------------------------------------------
# Reading text and JSON input files
# ---------------------------------------------------------------------------------------------------------------------

ErrorFactory = Callable[..., Exception]
"""What the readers below raise: called as ``error(reason, file=path, line=..., field=...)``; by default
:class:`~hspnet.utils.errors.FileFormatError` (a layer passes its own subclass, or a function building its own
error)."""


def check_regular_file(path: str | os.PathLike, what: str = "file", *, error: ErrorFactory = FileFormatError,
                       missing: ErrorFactory | None = None) -> str:
    """``path`` if it is a regular file. A missing path raises ``missing`` (default ``error``); a folder, a FIFO or a
    device raises ``error``; both name the file, and ``what`` says which file it is (``"the hierarchy file is a
    FIFO, not a regular file"``). Asked before every ``open`` of an input file: opening a FIFO blocks."""
    path = os.fspath(path)
    try:
        kind = special_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise (missing or error)(f"{what} not found", file=path) from None
    except OSError as caught:
        raise error(f"cannot access this {what} ({caught.strerror or one_line(caught)})", file=path) from None
    if kind is not None:
        raise error(f"the {what} is {kind}, not a regular file", file=path)
    return path


def read_text_file(path: str | os.PathLike, what: str = "file", *, error: ErrorFactory = FileFormatError,
                   missing: ErrorFactory | None = None) -> str:
    """The text of the UTF-8 file ``path`` (a leading byte-order mark, as Excel writes, is dropped), checked first
    by :func:`check_regular_file`; bytes that are not UTF-8 raise ``error`` naming the file and the line."""
    path = check_regular_file(path, what, error=error, missing=missing)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as caught:
        line = data.count(b"\n", 0, caught.start) + 1
        raise error(f"not UTF-8 text ({caught.reason} at byte {caught.start})", file=path, line=line) from None


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


def _duplicate_key_position(text: str) -> tuple[str, int] | None:
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


def parse_json_text(text: str, path: str | os.PathLike, line: int | None = None, *,
                    error: ErrorFactory = FileFormatError) -> Any:
    """Parse JSON ``text`` read from ``path`` (line ``line`` of a JSON Lines file, if given). Malformed JSON and an
    object with the same key twice (``json`` would silently keep the last value) raise ``error`` naming the file,
    the line and the key."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as caught:
        where = caught.lineno if line is None else line
        raise error(f"invalid JSON: {caught.msg} (column {caught.colno})", file=path, line=where) from None
    except _DuplicateKey as duplicate:
        found = _duplicate_key_position(text)
        where = line
        if found is not None and found[0] == duplicate.key and line is None:
            where = text.count("\n", 0, found[1]) + 1
        raise error(f"the key {duplicate.key!r} appears twice in the same JSON object (only one value could be kept)",
                    file=path, line=where, field=duplicate.key) from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", *, error: ErrorFactory = FileFormatError,
                   missing: ErrorFactory | None = None) -> Any:
    """The JSON document in the file ``path``: :func:`read_text_file` then :func:`parse_json_text` (a regular file,
    UTF-8 with an optional byte-order mark, valid JSON, no key twice in one object); ``error`` (``missing`` for a
    missing file) naming the file, the line and the key otherwise."""
    return parse_json_text(read_text_file(path, what, error=error, missing=missing), path, error=error)
