"""The output folder of a training run: one run at a time, never overwritten silently, every file whole.

- :class:`OutputDirLock`: the output folder is locked (``fcntl.flock``, released by the kernel when the process ends)
  by the main process; a second run on it fails at once naming the holder.
- :func:`plan_folders`: a folder holding an earlier run is only replaced with ``--overwrite_output_dir``, by a
  complete new run, trained in ``<output_dir>/.hspnet-next-run/`` (:data:`STAGING_NAME`) and swapped in at the end
  by :func:`swap_in`, which carries over what no training run writes (:func:`kept_entries`: the user's files,
  ``eval_*`` reports, ``.git``), one log line each. The staging folder lies inside the output folder, so that a run
  interrupted after its first checkpoint leaves nothing beside it (no ``<output_dir>.partial``) and its checkpoints
  stay where ``--resume_from_checkpoint latest --overwrite_output_dir true`` finds them
  (:func:`clean_up_interrupted`).
- :func:`save_model_files`: the model written through a temporary folder, each file renamed into place with the
  permissions of the user's umask;
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
STAGING_NAME = ".hspnet-next-run"
"""`--overwrite_output_dir` over an earlier run trains into `<output_dir>/.hspnet-next-run/` and swaps it in only when
the run is complete (inside the output folder: nothing of an interrupted run lies beside it)."""
PARTIAL_SUFFIX = ".partial"
"""A checkpoint being written (`checkpoints/<name>.partial`), renamed when complete."""
REPLACED_SUFFIX = ".replaced"
"""The earlier run's folder while :func:`swap_in` replaces it (`<output_dir>.replaced`, removed at once)."""
RUN_ARTIFACTS = hub.RUN_FILES + (LOCK_NAME, BEST_MARKER_NAME, STAGING_NAME)
"""Every entry a training run writes beside the model files (:data:`hspnet.hub.transfer.RUN_FILES`, the lock, the
best-model marker and the staging folder)."""


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


def kept_entries(folder: str) -> list[str]:
    """Entries of an earlier run's output folder that no training run writes, which `--overwrite_output_dir` keeps:
    everything but the files of the model (top-level `README.md`, `*.json`, `*.safetensors`, `*.py`, `*.bin`: the new
    run writes its own), what a run writes beside them (:data:`RUN_ARTIFACTS`) and temporary files. So the user's
    notes, an `eval_<data>_<split>/` report of `hspnet evaluate`, a `.git` folder or `.gitattributes` stay, as they
    would with transformers' `Trainer`, which never deletes what it did not write. Sorted names."""
    kept = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in RUN_ARTIFACTS or _is_temporary(name):
            continue
        if hub.is_model_file(name) and os.path.isfile(path) and not os.path.islink(path):
            continue
        kept.append(name)
    return kept


def describe_entry(folder: str, name: str) -> str:
    """`name`, with a `/` for a folder."""
    return name + ("/" if os.path.isdir(os.path.join(folder, name)) else "")


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
    remove_partial_checkpoints(folder)


def remove_partial_checkpoints(folder: str) -> None:
    """Checkpoints that were being written when a run stopped (`checkpoints/<name>.partial`)."""
    root = os.path.join(folder, "checkpoints")
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.endswith(PARTIAL_SUFFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class RunFolders:
    """`output_dir`, and `working`: where this run writes (`output_dir`, or `<output_dir>/.hspnet-next-run` for an
    `--overwrite_output_dir` run over an earlier one, swapped in when the run is complete)."""

    output_dir: str
    working: str

    @property
    def staging(self) -> bool:
        return self.working != self.output_dir


def plan_folders(config) -> RunFolders:
    """Where the run writes. A fresh run into a folder holding an earlier run needs `--overwrite_output_dir`; that
    folder is then only replaced once the new run is complete (the new run works in
    `<output_dir>/.hspnet-next-run`). A resume continues in place, or in the staging folder when resuming an
    interrupted overwrite run (`--overwrite_output_dir true` with `latest` or one of its checkpoints)."""
    output_dir = os.path.normpath(config.output_dir)
    if os.path.basename(output_dir) in ("", ".", ".."):  # swap_in renames the folder: it needs a name
        output_dir = os.path.abspath(output_dir)
    staging = os.path.join(output_dir, STAGING_NAME)
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
        if resume == "latest" and checkpoint_dirs(staging) and not checkpoint_dirs(output_dir):
            raise ValueError(f"--resume_from_checkpoint latest: the checkpoints under {output_dir} belong to an "
                             f"interrupted --overwrite_output_dir run (in {staging}); add --overwrite_output_dir true "
                             "to continue it")
        return RunFolders(output_dir, output_dir)
    if holds_a_run(output_dir):
        if not config.overwrite_output_dir:
            raise FileExistsError(
                f"output_dir {config.output_dir!r} already holds a model or checkpoints; pass "
                "--resume_from_checkpoint latest to continue, --overwrite_output_dir true to replace it, or another "
                "--output_dir."
            )
        return RunFolders(output_dir, staging)
    return RunFolders(output_dir, output_dir)


def swap_in(folders: RunFolders, locks: list[OutputDirLock], log=logger) -> list[str]:
    """Replace `output_dir` by the complete staging folder inside it: rename the old folder aside
    (`<output_dir>.replaced`), rename the staging folder (now inside that one) to `output_dir`, move every entry of
    :func:`kept_entries` from the old folder into the new one (one log line each), delete the old folder. If the
    second rename fails, the old folder is put back and the error says where the new run is; an entry that cannot be
    moved stays with the old folder, which is then kept and named in a warning. Ctrl-C waits until the swap is done.
    Returns the names kept."""
    with interrupts_deferred():
        old = folders.output_dir + REPLACED_SUFFIX
        if os.path.exists(old):
            shutil.rmtree(old)
        try:
            os.rename(folders.output_dir, old)
        except OSError as error:
            raise OSError(f"could not move the previous run in {folders.output_dir} aside to {old} "
                          f"({error.strerror or one_line(error)}); {folders.output_dir} is unchanged and the complete "
                          f"new run is in {folders.working}") from None
        moved_staging = os.path.join(old, os.path.relpath(folders.working, folders.output_dir))
        try:
            os.rename(moved_staging, folders.output_dir)
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
        kept, stuck = [], []
        for name in kept_entries(old):
            shown = describe_entry(old, name)
            try:
                if os.path.lexists(os.path.join(folders.output_dir, name)):
                    raise FileExistsError(f"the new run wrote {name} too")
                os.rename(os.path.join(old, name), os.path.join(folders.output_dir, name))
            except OSError as error:
                stuck.append(f"{shown} ({error.strerror or one_line(error)})")
                continue
            kept.append(name)
            log.info("kept %s of the previous %s in the new one (no training run writes it)", shown,
                     folders.output_dir)
        if stuck:
            log.warning("could not keep %s in the new %s; the previous run's folder is left as %s",
                        ", ".join(stuck), folders.output_dir, old)
        else:
            shutil.rmtree(old, ignore_errors=True)
        return kept


class interrupts_deferred:
    """Context manager: a Ctrl-C (SIGINT) during the block is held back and raised as `KeyboardInterrupt` when the
    block ends, so that a few renames that must happen together do (main thread only; elsewhere it does nothing)."""

    def __enter__(self):
        import signal
        import threading

        self.received, self.installed, self.previous = False, False, None
        if threading.current_thread() is threading.main_thread():
            def hold(signum, frame):
                self.received = True

            self.previous, self.installed = signal.signal(signal.SIGINT, hold), True
        return self

    def __exit__(self, kind, error, traceback):
        import signal

        if self.installed:  # None: a handler not set from Python; the default then
            signal.signal(signal.SIGINT, signal.SIG_DFL if self.previous is None else self.previous)
        if self.received and error is None:
            raise KeyboardInterrupt
        return False


def moved_path(path: str | None, folders: RunFolders) -> str | None:
    """Where `path` (inside the staging folder, or anywhere) is after :func:`swap_in`."""
    if path is None or os.path.relpath(path, folders.working).split(os.sep)[0] == "..":
        return path
    return os.path.join(folders.output_dir, os.path.relpath(path, folders.working))


def clean_up_interrupted(folders: RunFolders) -> bool:
    """After Ctrl-C (main process, with the lock held): checkpoints left half-written are removed, and the staging
    folder of an `--overwrite_output_dir` run is removed too unless it holds something to keep (a checkpoint to
    resume, or a best model so far): nothing is left beside `output_dir` either way. Returns whether the staging
    folder was removed."""
    remove_partial_checkpoints(folders.working)
    if not folders.staging or not os.path.isdir(folders.working):
        return False
    if checkpoint_dirs(folders.working) or os.path.exists(os.path.join(folders.working, "model.safetensors")):
        return False
    shutil.rmtree(folders.working, ignore_errors=True)
    return True


def save_model_files(model, folder: str, save_function=None) -> list[str]:
    """`model.save_pretrained` into a temporary folder inside `folder`, then each file renamed into `folder`: a
    model file is always whole (a run killed while saving leaves the previous file). Every file gets the permissions
    a new file of the user gets (transformers writes the weights through a 0600 temporary file). Returns the file
    names."""
    import tempfile

    from hspnet.utils.files import give_default_mode, new_file_mode

    temporary = tempfile.mkdtemp(prefix=".best-", dir=folder)
    try:
        with writing(folder, "the model to"):
            model.save_pretrained(temporary, **({"save_function": save_function} if save_function else {}))
            names = sorted(os.listdir(temporary), key=lambda name: (name.endswith(".safetensors"), name))
            give_default_mode([os.path.join(temporary, name) for name in names], new_file_mode(temporary))
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
