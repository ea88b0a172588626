"""Moving model folders and training states to and from the Hugging Face Hub.

- :func:`model_files`: which files of a folder make up the model (what ``save_pretrained`` wrote, the card, other
  top-level JSON such as ``conversion.json`` and :data:`TRAINING_ARGS_NAME`; never hidden files or what a training
  run writes beside the model, :data:`RUN_FILES`): the one answer, for uploads, resumes, Space copies and outputs;
- :func:`push_folder_to_hub`: those files uploaded in ONE commit (all files appear together on the Hub, or none);
- :class:`HubUploader`: what `--hub_strategy` pushes while training runs (Trainer's ``hub_strategy`` meanings), in a
  background thread, from snapshots taken at save time, never blocking or breaking training;
- :func:`download_checkpoint`: `--resume_from_checkpoint hub`: the last pushed training state, with the best model
  of that moment, downloaded into a fresh output folder (every name it lists checked first).
- ``hspnet push FOLDER REPO_ID`` is :mod:`hspnet.cli.push`.

Repository layout written during training (`hub_strategy` checkpoint / all_checkpoints)::

    README.md, config.json, model.safetensors, *.py, preprocessor_config.json   the best model so far (and its card)
    last-checkpoint/                 the newest training state (see hspnet.training.checkpoint)
        hspnet_checkpoint.json       its name, step, epoch and the best-model marker
        best-model/                  the best model as of that state (the Hub stores identical files once)
    checkpoints/epoch_1-step_40/     all_checkpoints only: every state, laid out like last-checkpoint/
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from typing import Iterable

from hspnet.utils.errors import one_line
from hspnet.utils.files import plain_file_name, read_json_file

logger = logging.getLogger("hspnet.hub")


HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
"""`--hub_strategy` values, with the meanings of `transformers.TrainingArguments.hub_strategy`:

- ``end``: the final model and card once, when training ends;
- ``every_save``: also the best model so far and an "in progress" card each time a training state is saved;
- ``checkpoint``: as every_save, plus the newest training state in ``last-checkpoint/`` (enough to resume);
- ``all_checkpoints``: as checkpoint, plus every saved state in its own folder ``checkpoints/<name>/``."""


LAST_CHECKPOINT = "last-checkpoint"


CHECKPOINT_INFO_NAME = "hspnet_checkpoint.json"
"""In each pushed checkpoint folder: its local name, step, epoch, run id and best-model marker."""


BEST_MODEL_FOLDER = "best-model"
"""In each pushed checkpoint folder: the best model as of that training state."""


SNAPSHOT_PREFIX = ".hub-"
"""Temporary folders of this module inside an output folder (snapshots being uploaded, downloads)."""


MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".py", ".bin")
"""A top-level file with one of these endings (or the card ``README.md``, or one of :data:`TOKENIZER_FILE_NAMES`) is
part of the model, unless hidden or one of :data:`RUN_FILES`."""


TOKENIZER_FILE_NAMES = ("merges.txt", "vocab.txt", "tokenizer.model")
"""Tokenizer files that are not JSON (the model's tokenizer, which ``save_pretrained`` saves for ``set_labels``, is
``tokenizer.json`` + ``tokenizer_config.json`` with transformers 5; older or other tokenizers add these)."""


TRAINING_ARGS_NAME = "training_args.json"
"""Every option of a training run (and facts about the run under ``"run"``), written by training into each checkpoint
(compared on resume) and beside the trained model, where it is part of the model folder (evaluation and the demo
read the base CLIP, the seed and the dataset from it)."""


RUN_FILES = ("all_results.json", "train.log", "runs", "checkpoints")
"""What a training run writes beside its model (results, log, TensorBoard logs, training states): not part of the
model, never uploaded or copied with it. (The run's lock and best-model marker are hidden files, never model files
either.)"""


_CHECKPOINT_NAME = re.compile(r"epoch_\d+-step_\d+|step_\d+")


class HubUploadError(OSError):
    """An upload to the Hub that the run needed (the final model) failed."""


def redact(text: str, token: str | None = None) -> str:
    """`text` with `token` and every other token in effect (environment, stored login) replaced by `***` (error
    messages of HTTP libraries may quote request headers); see :mod:`hspnet.utils.redaction`."""
    from hspnet.utils.redaction import redact as redact_tokens

    return redact_tokens(text, token)


def is_model_file(name: str) -> bool:
    return name in ("README.md", *TOKENIZER_FILE_NAMES) or (name.endswith(MODEL_FILE_SUFFIXES)
                                                             and not name.startswith("."))


def model_files(folder: str, exclude: Iterable[str] = RUN_FILES) -> list[str]:
    """The top-level files of `folder` that make up a model, sorted: what ``save_pretrained`` writes (config,
    weights, remote code, image processor, tokenizer), the card ``README.md``, other JSON beside them (``training_args.json``,
    ``conversion.json``). Never hidden files, folders, special files, or the names in `exclude` (by default what a
    training run writes beside the model)."""
    excluded = set(exclude)
    return sorted(name for name in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, name)) and name not in excluded and is_model_file(name))


def _hf_api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _commit(api, repo_id: str, files: list[tuple[str, str]], message: str) -> None:
    """One commit adding `files` (``(path_in_repo, local path)``): on the Hub they all appear together, or none."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=local)
                  for path_in_repo, local in sorted(files)]
    api.create_commit(repo_id=repo_id, operations=operations, commit_message=message)


def _tree_files(folder: str, prefix: str = "") -> list[tuple[str, str]]:
    """``(path_in_repo, local path)`` of every file under `folder`, placed under `prefix`."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            local = os.path.join(root, name)
            relative = os.path.relpath(local, folder).replace(os.sep, "/")
            found.append((f"{prefix}{relative}", local))
    return found


def push_folder_to_hub(folder: str, repo_id: str | None, token: str | None = None, private: bool = False, *,
                       files: list[str] | None = None, exclude: Iterable[str] = RUN_FILES,
                       commit_message: str = "Upload HSPNet model", required: Iterable[str] = (
                           "config.json", "model.safetensors", "README.md")) -> str:
    """Upload the model files of `folder` (:func:`model_files`, or the names in `files`) to `repo_id` (created if
    needed; `private` applies to a new repository) in one commit. Returns the repository id. A missing required
    file stops it before anything is sent."""
    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/hspnet-coco)")
    missing = [name for name in required if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"{folder} is missing {missing}; nothing was uploaded")
    names = model_files(folder, exclude) if files is None else list(files)
    api = _hf_api(token)
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    _commit(api, repo_id, [(name, os.path.join(folder, name)) for name in names], commit_message)
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return repo_id


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (instant, no space; the files linked are only ever replaced by renames, never rewritten, so the
    link keeps the content of the moment), or a copy where links are impossible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _link_tree(source: str, target: str) -> None:
    shutil.copytree(source, target, copy_function=_link_or_copy)


def _merge_checkpoint_folders(source: str, target: str) -> None:
    """Move ``source/checkpoints/<name>`` folders that `target` lacks into ``target/checkpoints/``."""
    root = os.path.join(source, "checkpoints")
    if not os.path.isdir(root):
        return
    os.makedirs(os.path.join(target, "checkpoints"), exist_ok=True)
    for name in os.listdir(root):
        destination = os.path.join(target, "checkpoints", name)
        if not os.path.exists(destination):
            os.replace(os.path.join(root, name), destination)


def _checkpoint_order(name: str) -> tuple[int, bool]:
    """Sort key of a checkpoint folder name: its step; at equal steps the epoch checkpoint is the later one."""
    match = re.search(r"step_(\d+)$", name)
    return (int(match.group(1)) if match else -1, name.startswith("epoch"))


def _prune_checkpoint_folders(folder: str, keep: int | None) -> list[str]:
    """Remove all but the newest `keep` folders of ``folder/checkpoints`` (None: keep all); returns the removed."""
    root = os.path.join(folder, "checkpoints")
    if keep is None or not os.path.isdir(root):
        return []
    names = sorted(os.listdir(root), key=_checkpoint_order)
    dropped = names[: max(0, len(names) - keep)]
    for name in dropped:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return dropped


@dataclass
class _Snapshot:
    path: str
    message: str
    step: int
    epoch: int


class HubUploader:
    """Pushes a training run to `repo_id` following `strategy` (:data:`HUB_STRATEGIES`).

    :meth:`save` (called by the training loop at each saved training state) takes a snapshot (hard links, or copies,
    of the files in a hidden folder ``.hub-*`` of the output folder) and returns at once; one background thread
    uploads snapshots in order, each in one commit. If a snapshot is still waiting when the next save comes, the
    newer one replaces it (``superseded``; for all_checkpoints the waiting checkpoint folders go along with it). A
    failed upload is logged with its reason and counted; the next save uploads what is current then (for
    all_checkpoints, also the checkpoint folders that failed). Nothing here raises into the training loop.

    `keep_checkpoints` (all_checkpoints; e.g. the run's checkpoints_total_limit) bounds the checkpoint folders held
    for a retry while the Hub fails: older ones are dropped with a warning, so that a long outage cannot fill the
    disk with states that the output folder itself has rotated away.

    :meth:`final` uploads the final model and card (after waiting for the uploads in flight) and raises
    :class:`HubUploadError` if that fails. :meth:`report` is the ``hub`` entry of ``all_results.json``."""

    def __init__(self, repo_id: str, *, folder: str, strategy: str = "end", token: str | None = None,
                 private: bool = False, log: logging.Logger | None = None, keep_checkpoints: int | None = None):
        if strategy not in HUB_STRATEGIES:
            raise ValueError(f"hub_strategy must be one of {HUB_STRATEGIES}, got {strategy!r}")
        self.repo_id, self.folder, self.strategy = repo_id, folder, strategy
        self.private, self.log = private, log or logger
        self.keep_checkpoints = keep_checkpoints
        self._token = token
        self._api = None
        self._repo_ready = False
        self._cond = threading.Condition()
        self._pending: _Snapshot | None = None
        self._current: _Snapshot | None = None
        self._busy = False
        self._closed = False
        self._sequence = 0
        self.uploads_done = self.uploads_failed = self.uploads_superseded = 0
        self.last_error: str | None = None
        self.last_uploaded: dict | None = None
        self.checkpoints_dropped: list[str] = []
        self.final_upload: str = "pending"

    # paths ----------------------------------------------------------------------------------------------------------

    @property
    def _carry(self) -> str:
        """Checkpoint folders (all_checkpoints) whose upload failed, waiting for the next one."""
        return os.path.join(self.folder, f"{SNAPSHOT_PREFIX}carry")

    def moved_to(self, folder: str) -> None:
        """The output folder was renamed (an `--overwrite_output_dir` run swapped in); only call when idle."""
        self.folder = folder

    # the training side ------------------------------------------------------------------------------------------

    @property
    def pushes_checkpoints(self) -> bool:
        return self.strategy in ("checkpoint", "all_checkpoints")

    def save(self, *, step: int, epoch: int, model_folder: str, model_file_names: list[str], card: str | None,
             checkpoint: str | None = None, checkpoint_info: dict | None = None) -> bool:
        """Queue the upload of the current state: the best model's files `model_file_names` in `model_folder` with
        `card` as README.md; for checkpoint / all_checkpoints also the training state folder `checkpoint` with
        `checkpoint_info`. Returns whether something was queued. Never raises (a failure is logged and counted)."""
        if self.strategy == "end" or self._closed:
            return False
        checkpoint = checkpoint if self.pushes_checkpoints else None
        if card is not None:  # the card is written into the snapshot, never into a linked local file
            model_file_names = [name for name in model_file_names if name != "README.md"]
        if not model_file_names and checkpoint is None:
            return False  # no best model yet and no state to push
        with self._cond:
            self._sequence += 1
            path = os.path.join(self.folder, f"{SNAPSHOT_PREFIX}upload-{self._sequence:06d}")
        try:
            os.makedirs(path)
            for name in model_file_names:
                _link_or_copy(os.path.join(model_folder, name), os.path.join(path, name))
            if card is not None and model_file_names:
                with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as handle:
                    handle.write(card)
            if checkpoint is not None:
                name = os.path.basename(os.path.normpath(checkpoint))
                targets = [LAST_CHECKPOINT] + ([f"checkpoints/{name}"] if self.strategy == "all_checkpoints" else [])
                info = dict(checkpoint_info or {}, format=1, name=name, step=step, epoch=epoch,
                            best_model_files=list(model_file_names))
                for target in targets:
                    target = os.path.join(path, *target.split("/"))
                    _link_tree(checkpoint, target)
                    if model_file_names:
                        os.makedirs(os.path.join(target, BEST_MODEL_FOLDER))
                        for file_name in model_file_names:
                            _link_or_copy(os.path.join(model_folder, file_name),
                                          os.path.join(target, BEST_MODEL_FOLDER, file_name))
                    info_path = os.path.join(target, CHECKPOINT_INFO_NAME)
                    if os.path.lexists(info_path):  # e.g. a state downloaded from the Hub: linked, not ours to write
                        os.unlink(info_path)
                    with open(info_path, "w", encoding="utf-8") as handle:
                        json.dump(info, handle, indent=2)
        except Exception as error:  # noqa: BLE001 - a full disk here must not stop training
            shutil.rmtree(path, ignore_errors=True)
            self._count_failure(f"could not prepare the upload of step {step}: {one_line(error)}", step)
            return False
        message = f"Training in progress, epoch {epoch}, step {step}"
        snapshot = _Snapshot(path, message, step, epoch)
        with self._cond:
            replaced = self._pending
            try:
                if os.path.isdir(self._carry):
                    _merge_checkpoint_folders(self._carry, path)
                    shutil.rmtree(self._carry, ignore_errors=True)
                if replaced is not None:
                    _merge_checkpoint_folders(replaced.path, path)
            except OSError as error:
                self._log(logging.WARNING, "earlier checkpoint folders are not carried to the upload of step %d: %s",
                          step, one_line(error))
            if replaced is not None:
                shutil.rmtree(replaced.path, ignore_errors=True)
                self.uploads_superseded += 1
            dropped = _prune_checkpoint_folders(path, self.keep_checkpoints)
            self._pending = snapshot
            start = not self._busy
            self._busy = True
        if replaced is not None:
            self._log(logging.INFO, "the upload of step %d to %s had not started yet: step %d replaces it",
                      replaced.step, self.repo_id, step)
        self._warn_dropped(dropped)
        if start:
            threading.Thread(target=self._work, name="hspnet-hub-upload", daemon=True).start()
        return True

    # the background thread ------------------------------------------------------------------------------------------

    def _api_ready(self):
        if self._api is None:
            self._api = _hf_api(self._token)
        if not self._repo_ready:
            url = self._api.create_repo(self.repo_id, exist_ok=True, private=self.private)
            self.repo_id = getattr(url, "repo_id", None) or self.repo_id
            self._repo_ready = True
        return self._api

    def _work(self) -> None:
        while True:
            with self._cond:
                snapshot, self._pending = self._pending, None
                self._current = snapshot
                if snapshot is None:
                    self._busy = False
                    self._cond.notify_all()
                    return
            error = None
            try:
                _commit(self._api_ready(), self.repo_id, _tree_files(snapshot.path), snapshot.message)
            except BaseException as caught:  # noqa: BLE001 - reported, never raised into training
                error = caught
            dropped = []
            with self._cond:
                self._current = None
                if error is None:
                    self.uploads_done += 1
                    self.last_uploaded = {"step": snapshot.step, "epoch": snapshot.epoch}
                elif self.strategy == "all_checkpoints":  # keep its checkpoint folders for the next upload
                    target = self._pending.path if self._pending else self._carry
                    try:
                        _merge_checkpoint_folders(snapshot.path, target)
                        dropped = _prune_checkpoint_folders(target, self.keep_checkpoints)
                    except OSError as merge_error:
                        self._log(logging.WARNING, "checkpoint folders of step %d are not kept for the next upload: "
                                  "%s", snapshot.step, one_line(merge_error))
                shutil.rmtree(snapshot.path, ignore_errors=True)
            if error is None:
                self._log(logging.INFO, "pushed step %d (epoch %d) to the Hub: %s", snapshot.step, snapshot.epoch,
                          self.repo_id)
            else:
                self._count_failure(f"the upload of step {snapshot.step} to {self.repo_id} failed: "
                                    f"{type(error).__name__}: {one_line(error)}; the next save uploads the "
                                    "current state again", snapshot.step)
                self._warn_dropped(dropped)

    def _warn_dropped(self, dropped: list[str]) -> None:
        if dropped:
            with self._cond:
                self.checkpoints_dropped += dropped
            self._log(logging.WARNING, "the Hub is behind: checkpoint folder(s) %s will not be uploaded (only the "
                      "newest %d not yet uploaded are kept for a retry)", dropped, self.keep_checkpoints)

    def _count_failure(self, message: str, step: int) -> None:
        message = redact(message, self._token)
        with self._cond:
            self.uploads_failed += 1
            self.last_error = message
        self._log(logging.WARNING, "%s", message)

    def _log(self, level: int, message: str, *args) -> None:
        try:  # a log that cannot be written must not kill the upload thread (training reports it itself)
            self.log.log(level, message, *args)
        except Exception:  # noqa: BLE001
            pass

    # the end ----------------------------------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until every queued upload has finished (successfully or not)."""
        with self._cond:
            if self._busy:
                waiting = [s.step for s in (self._current, self._pending) if s is not None]
                self._log(logging.INFO, "waiting for the upload of step(s) %s to %s to finish", waiting, self.repo_id)
            while self._busy:
                self._cond.wait()

    def final(self, model_folder: str, model_file_names: list[str], message: str = "End of training") -> str:
        """Wait for the uploads in flight, then upload the final model and card in one commit (all_checkpoints: with
        the checkpoint folders whose upload failed). Raises :class:`HubUploadError` naming the repository."""
        self.wait()
        missing = [name for name in ("config.json", "model.safetensors", "README.md") if name not in model_file_names]
        if missing:
            self.final_upload = "failed"
            raise HubUploadError(f"the final upload to the Hub repository {self.repo_id} was not attempted: "
                                 f"{model_folder} is missing {missing}")
        files = [(name, os.path.join(model_folder, name)) for name in model_file_names]
        if os.path.isdir(self._carry):
            files += _tree_files(os.path.join(self._carry, "checkpoints"), "checkpoints/")
        try:
            _commit(self._api_ready(), self.repo_id, files, message)
        except Exception as error:  # noqa: BLE001 - one clear error for the caller
            self.final_upload = "failed"
            self.last_error = redact(f"the final upload failed: {type(error).__name__}: {one_line(error)}",
                                     self._token)
            raise HubUploadError(redact(
                f"the final upload to the Hub repository {self.repo_id} failed ({type(error).__name__}: "
                f"{one_line(error)}); the trained model is intact in {model_folder} (upload it later with: hspnet push "
                f"{model_folder} {self.repo_id})", self._token)) from None
        self.final_upload = "done"
        shutil.rmtree(self._carry, ignore_errors=True)
        self._log(logging.INFO, "pushed the final model to the Hub: %s", self.repo_id)
        return self.repo_id

    def close(self, wait: bool = True) -> None:
        """Stop accepting saves; with `wait`, let the queued uploads finish. Removes the snapshots left."""
        self._closed = True
        if wait:
            self.wait()
        with self._cond:
            if self._pending is not None and not wait:
                shutil.rmtree(self._pending.path, ignore_errors=True)
                self._pending = None
            if not self._busy:
                shutil.rmtree(self._carry, ignore_errors=True)

    def report(self) -> dict:
        """Counts of this process's uploads, for ``all_results.json`` (no secrets)."""
        with self._cond:
            return {"repo_id": self.repo_id, "strategy": self.strategy, "uploads_done": self.uploads_done,
                    "uploads_failed": self.uploads_failed, "uploads_superseded": self.uploads_superseded,
                    "last_uploaded": self.last_uploaded, "last_error": self.last_error,
                    "final_upload": self.final_upload,
                    **({"checkpoints_not_uploaded": list(self.checkpoints_dropped)} if self.checkpoints_dropped
                       else {})}


def parse_hub_resume(value: str | None) -> str | None:
    """The checkpoint folder in the repository that `--resume_from_checkpoint` names: ``hub`` ->
    ``last-checkpoint``, ``hub:checkpoints/epoch_1-step_40`` -> that folder; None for a local resume."""
    if not value or not (value == "hub" or value.startswith("hub:")):
        return None
    folder = value[4:].strip("/") if value.startswith("hub:") else LAST_CHECKPOINT
    if not folder or ".." in folder.split("/"):
        raise ValueError(f"--resume_from_checkpoint {value!r}: expected 'hub' or 'hub:FOLDER_IN_THE_REPOSITORY' "
                         "(e.g. hub:checkpoints/epoch_1-step_40)")
    return folder


def download_checkpoint(repo_id: str, folder: str, *, path_in_repo: str = LAST_CHECKPOINT, token: str | None = None,
                        revision: str | None = None) -> tuple[str, dict]:
    """Download the training state `path_in_repo` of `repo_id` (pushed by :class:`HubUploader`) into `folder`, laid
    out as the run that pushed it had it: the state in ``folder/checkpoints/<its name>/``, the best model of that
    moment in `folder` itself. Returns ``(checkpoint folder, its hspnet_checkpoint.json)``; the caller writes the
    best-model marker from ``info["best_model"]``. Errors name the repository and the folder."""
    import tempfile

    from huggingface_hub import snapshot_download

    where = f"{path_in_repo}/ of the Hub repository {repo_id}"
    os.makedirs(folder, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix=f"{SNAPSHOT_PREFIX}download-", dir=folder)
    try:
        try:
            snapshot_download(repo_id, allow_patterns=[f"{path_in_repo}/*"], local_dir=temporary, token=token,
                              revision=revision)
        except Exception as error:  # noqa: BLE001 - offline, not found, no access: one line
            raise OSError(redact(f"cannot download {where} ({type(error).__name__}: {one_line(error)})",
                                 token)) from None
        source = os.path.join(temporary, *path_in_repo.split("/"))
        info_path = os.path.join(source, CHECKPOINT_INFO_NAME)
        if not os.path.isfile(info_path):
            raise FileNotFoundError(
                f"{where} holds no training state pushed by hspnet (no {CHECKPOINT_INFO_NAME}); push one with "
                "--push_to_hub true --hub_strategy checkpoint")
        try:
            info = read_json_file(info_path, CHECKPOINT_INFO_NAME)
            name = info["name"]
        except (ValueError, KeyError, TypeError) as error:  # the reason without the temporary download path
            reason = getattr(error, "reason", None) or one_line(error)
            raise ValueError(f"{where}: {CHECKPOINT_INFO_NAME} is corrupt ({reason})") from None
        if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
            raise ValueError(f"{where}: {CHECKPOINT_INFO_NAME} names no checkpoint folder (name {name!r})")
        target = os.path.join(folder, "checkpoints", name)
        if os.path.exists(target):
            raise FileExistsError(f"{target} exists already; resume from the Hub into an empty --output_dir")
        best = os.path.join(source, BEST_MODEL_FOLDER)
        best_files = info.get("best_model_files") or []
        if not isinstance(best_files, list):
            raise ValueError(f"{where}: {CHECKPOINT_INFO_NAME}: best_model_files is not a list; nothing was taken")
        for file_name in best_files:  # every name checked before any file is moved
            plain_file_name(file_name, f"{where}: {CHECKPOINT_INFO_NAME} lists in best_model_files")
            if not is_model_file(file_name):
                raise ValueError(f"{where}: {CHECKPOINT_INFO_NAME} lists {file_name!r} in best_model_files, which is "
                                 "not a model file; refused, nothing was taken")
            if not os.path.isfile(os.path.join(best, file_name)) or os.path.islink(os.path.join(best, file_name)):
                raise FileNotFoundError(f"{where}: {BEST_MODEL_FOLDER}/{file_name} is missing")
        for file_name in best_files:
            os.replace(os.path.join(best, file_name), os.path.join(folder, file_name))
        shutil.rmtree(best, ignore_errors=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)
        logger.info("downloaded %s (step %s) into %s", where, info.get("step"), target)
        return target, info
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

