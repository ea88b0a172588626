"""The output folder of a training run: one run at a time, never overwritten silently, every file whole.

- :class:`OutputDirLock`: the output folder is locked (``fcntl.flock``, released by the kernel when the process ends)
  by the main process; a second run on it fails at once naming the holder.
- :func:`plan_folders`: a folder holding an earlier run is only replaced with ``--overwrite_output_dir``, by a
  complete new run (trained in ``<output_dir>.partial``, swapped in at the end by :func:`swap_in`); files no run
  writes stop it (:func:`foreign_entries`).
- :func:`save_model_files`: the model written through a temporary folder, each file renamed into place;
  :class:`writing`: a failed write becomes one ``OSError`` naming the file.
- :func:`checkpoint_dirs`: the training states under ``checkpoints/``, oldest first.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass

from hspnet.hub import transfer as hub
from hspnet.utils.errors import one_line

logger = logging.getLogger("hspnet.train")


class OutputDirInUseError(OSError):
    """Another training run holds the lock on the output folder."""


LOCK_NAME = ".hspnet-train.lock"
"""Lock file inside the output folder (and inside the staging folder of an `--overwrite_output_dir` run)."""
BEST_MARKER_NAME = ".hspnet-best.json"
"""Which run, epoch and step the best model in the folder comes from (checked on resume)."""
STAGING_SUFFIX = ".partial"
"""`--overwrite_output_dir` trains into `<output_dir>.partial` and swaps it in only when the run is complete."""
REPLACED_SUFFIX = ".replaced"
RUN_ARTIFACTS = hub.RUN_FILES + (LOCK_NAME, BEST_MARKER_NAME)
"""Every entry a training run writes beside the model files (:data:`hspnet.hub.transfer.RUN_FILES`, the lock and the
best-model marker)."""


def make_folder(path: str, what: str) -> None:
    """Create `path` (and its parents); errors name the folder and the reason."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OSError(f"{what} {path!r}: cannot create this folder ({error.strerror or one_line(error)})") from None


class writing:
    """Context manager: a failure while writing `path` becomes one `OSError` naming it (PyTorch reports a full disk
    as a `RuntimeError` such as "unexpected pos", safetensors as `SafetensorError`, Python's `OSError` often
    without the file name)."""

    def __init__(self, path: str, what: str = ""):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or not isinstance(error, Exception) or isinstance(error, (OutputDirInUseError,)):
            return False
        if isinstance(error, OSError) and getattr(error, "_hspnet_named", False):
            return False
        if isinstance(error, (OSError, RuntimeError)) or type(error).__name__ == "SafetensorError":
            reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
            what = f"{self.what} " if self.what else ""
            named = OSError(f"cannot write {what}{self.path}: {reason} (is the disk full or the folder not writable?)")
            named.errno = getattr(error, "errno", None)
            named._hspnet_named = True
            raise named from error
        return False


class OutputDirLock:
    """An exclusive lock on an output folder: `fcntl.flock` on `<folder>/.hspnet-train.lock`, which records the
    holder's PID, host and start time. The kernel releases a `flock` when its process ends, however it ends, so a
    run killed with SIGKILL leaves no stale lock (the file stays, the lock does not). A second `acquire` (from any
    process) fails at once with :class:`OutputDirInUseError` naming the folder and the holder. `release` removes the
    file. On systems without `fcntl` it does nothing but warn."""

    def __init__(self, folder: str):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self._handle = None

    def acquire(self) -> "OutputDirLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("no fcntl on this system: %s is not locked against a second run", self.folder)
            return self
        import socket

        make_folder(self.folder, "output_dir")
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")  # never truncate a file someone else may hold
            except OSError as error:
                raise OSError(f"output_dir {self.folder!r}: cannot create the lock file {LOCK_NAME} "
                              f"({error.strerror or one_line(error)})") from None
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = self.describe_holder(handle.read())
                handle.close()
                raise OutputDirInUseError(
                    f"output_dir {self.folder!r} is in use by another training run ({holder}; lock file "
                    f"{self.path}): wait until it ends, or choose another --output_dir"
                ) from None
            except OSError as error:
                handle.close()
                raise OSError(f"output_dir {self.folder!r}: cannot lock {self.path} "
                              f"({error.strerror or one_line(error)})") from None
            try:  # the previous holder may have removed the file between our open and our lock: lock the new one
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        self._handle = handle
        return self

    @staticmethod
    def describe_holder(text: str) -> str:
        try:
            holder = json.loads(text)
            return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        except (ValueError, KeyError, TypeError):
            return "a process that has not written its details yet"

    @property
    def held(self) -> bool:
        return self._handle is not None

    def moved_to(self, folder: str) -> None:
        """The locked folder was renamed to `folder` (the lock file moved with it)."""
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        handle.close()


def holds_a_run(folder: str) -> bool:
    return os.path.isdir(folder) and any(
        os.path.exists(os.path.join(folder, name))
        for name in ("config.json", "model.safetensors", "checkpoints", "all_results.json")
    )


def foreign_entries(folder: str) -> list[str]:
    """Entries of an output folder that a training run does not write (model files, `all_results.json`,
    `train.log`, `runs/`, `checkpoints/`, `eval_*` reports of scripts/evaluate.py, hidden temporary files):
    `--overwrite_output_dir` refuses to replace a folder holding any, since they would be lost."""
    foreign = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in RUN_ARTIFACTS or _is_temporary(name) or (name.startswith("eval_") and os.path.isdir(path)):
            continue
        if os.path.isdir(path) or not hub.is_model_file(name):
            foreign.append(name + ("/" if os.path.isdir(path) else ""))
    return foreign


def _is_temporary(name: str) -> bool:
    """Temporary names of this module (`.best-*` model folders), of :mod:`hspnet.hub` (`.hub-*` upload snapshots
    and downloads) and of `hspnet.utils.files.atomic_write` (`.*.tmp`)."""
    return (name.startswith((".best-", hub.SNAPSHOT_PREFIX))
            or (name.startswith(".") and name.endswith(".tmp")))


def remove_leftovers(folder: str) -> None:
    """Temporary files of a run that was killed (we hold the lock: nobody else is writing them)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if _is_temporary(name):
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
    root = os.path.join(folder, "checkpoints")
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.endswith(".partial"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class RunFolders:
    """`output_dir`, and `working`: where this run writes (`output_dir`, or `<output_dir>.partial` for an
    `--overwrite_output_dir` run over an earlier one, swapped in when the run is complete)."""

    output_dir: str
    working: str

    @property
    def staging(self) -> bool:
        return self.working != self.output_dir


def plan_folders(config) -> RunFolders:
    """Where the run writes. A fresh run into a folder holding an earlier run needs `--overwrite_output_dir`; that
    folder is then only replaced once the new run is complete (the new run works in `<output_dir>.partial`). A
    resume continues in place, or in `<output_dir>.partial` when resuming an interrupted overwrite run."""
    output_dir = os.path.normpath(config.output_dir)
    if os.path.basename(output_dir) in ("", ".", ".."):  # the staging folder must be a sibling, not a child
        output_dir = os.path.abspath(output_dir)
    staging = output_dir + STAGING_SUFFIX
    if hub.parse_hub_resume(config.resume_from_checkpoint) is not None:
        if holds_a_run(output_dir):
            raise FileExistsError(
                f"--resume_from_checkpoint {config.resume_from_checkpoint}: output_dir {config.output_dir!r} already "
                "holds a run (a model or checkpoints); continue that one with --resume_from_checkpoint latest, or "
                "download the Hub's state into another --output_dir"
            )
        return RunFolders(output_dir, output_dir)
    if config.resume_from_checkpoint:
        resume = config.resume_from_checkpoint
        if resume != "latest" and _inside(resume, staging) and not config.overwrite_output_dir:
            raise ValueError(f"--resume_from_checkpoint {resume!r} belongs to an interrupted --overwrite_output_dir "
                             f"run (in {staging}); add --overwrite_output_dir true to continue it")
        if (config.overwrite_output_dir and checkpoint_dirs(staging)
                and (resume == "latest" or _inside(resume, staging))):
            return RunFolders(output_dir, staging)
        return RunFolders(output_dir, output_dir)
    if holds_a_run(output_dir):
        if not config.overwrite_output_dir:
            raise FileExistsError(
                f"output_dir {config.output_dir!r} already holds a model or checkpoints; pass "
                "--resume_from_checkpoint latest to continue, --overwrite_output_dir true to replace it, or another "
                "--output_dir."
            )
        foreign = foreign_entries(output_dir)
        if foreign:
            raise FileExistsError(
                f"--overwrite_output_dir: {config.output_dir!r} holds files that no training run wrote "
                f"({', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''}); they would be lost when it is "
                "replaced. Move them away or choose another --output_dir."
            )
        return RunFolders(output_dir, staging)
    return RunFolders(output_dir, output_dir)


def swap_in(folders: RunFolders, locks: list[OutputDirLock]) -> None:
    """Replace `output_dir` by the complete staging folder: rename the old one aside, rename the new one in, delete
    the old one. If the second rename fails, the old folder is put back and the error says where the new run is."""
    old = folders.output_dir + REPLACED_SUFFIX
    if os.path.exists(old):
        shutil.rmtree(old)
    try:
        os.rename(folders.output_dir, old)
    except OSError as error:
        raise OSError(f"could not move the previous run in {folders.output_dir} aside to {old} "
                      f"({error.strerror or one_line(error)}); {folders.output_dir} is unchanged and the complete "
                      f"new run is in {folders.working}") from None
    try:
        os.rename(folders.working, folders.output_dir)
    except OSError as error:
        os.rename(old, folders.output_dir)
        raise OSError(f"could not move the new run from {folders.working} to {folders.output_dir} "
                      f"({error.strerror or one_line(error)}); {folders.output_dir} is unchanged and the complete "
                      f"new run is in {folders.working}") from None
    for lock in locks:
        if lock.folder == folders.working:
            lock.moved_to(folders.output_dir)
        elif lock.folder == folders.output_dir:
            lock.moved_to(old)
    shutil.rmtree(old, ignore_errors=True)


def save_model_files(model, folder: str, save_function=None) -> list[str]:
    """`model.save_pretrained` into a temporary folder inside `folder`, then each file renamed into `folder`: a
    model file is always whole (a run killed while saving leaves the previous file). Returns the file names."""
    import tempfile

    temporary = tempfile.mkdtemp(prefix=".best-", dir=folder)
    try:
        with writing(folder, "the model to"):
            model.save_pretrained(temporary, **({"save_function": save_function} if save_function else {}))
        names = sorted(os.listdir(temporary), key=lambda name: (name.endswith(".safetensors"), name))
        for name in names:
            with writing(os.path.join(folder, name)):
                os.replace(os.path.join(temporary, name), os.path.join(folder, name))
        return names
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
    """Saved training states, as (global step, folder), oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = re.fullmatch(r"epoch_\d+-step_(\d+)|step_(\d+)", name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1) or match.group(2)), name.startswith("epoch"), os.path.join(root, name)))
    # at equal steps the epoch checkpoint (written after that epoch's evaluation) is the later one
    return [(step, path) for step, _, path in sorted(found)]
