"""Resuming a run exactly, or not at all: what a checkpoint records about its run and the checks made before loading it.

- :func:`run_settings`: what ``training_args.json`` (:data:`hspnet.hub.transfer.TRAINING_ARGS_NAME`) records: every
  option of the run except secrets, plus under ``"run"`` the number of processes, the mixed precision and device in
  use, the library versions and a fingerprint of the data. Written into every checkpoint and beside the trained
  model.
- :func:`check_resume_settings`: a resume with other result-changing settings or other data is refused, listing
  every difference (:func:`settings_differences`, :func:`dataset_differences`).
- :func:`check_best_model`: the output folder holds the best model the checkpoint's run saved.
- :class:`TrainingState`: the loop's progress, stored in the checkpoint's ``training_state.json``
  (:mod:`hspnet.training.checkpoint` reads and writes the checkpoint files).
- :func:`training_threads`: torch's thread count on the CPU, fixed for the run (float sums depend on it; the
  launchers set it differently), recorded under ``"run"``.
- :func:`resume_command`: the command that continues an interrupted run (printed on Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.training.checkpoint import read_checkpoint_json
from hspnet.training.run_folder import BEST_MARKER_NAME, checkpoint_dirs
from hspnet.utils.files import read_json_file

logger = logging.getLogger("hspnet.train")


class ResumeMismatchError(ValueError):
    """A checkpoint was written by a run whose settings differ in something that changes the result."""


RESUME_SAFE_OPTIONS = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint",          # where and how it writes
    "with_tracking", "report_to", "logging_steps",                          # logging
    "checkpointing_steps", "checkpoints_total_limit", "evaluate_before_training",  # what is saved / reported
    "push_to_hub", "hub_strategy", "hub_model_id", "hub_token", "hub_private_repo", "license",  # upload
    "num_workers",       # data loading processes: the order comes from the seeded sampler, the transform is fixed
    "release_memory_between_chunks",  # memory only
    "torch_num_threads",  # compared as what the run actually uses (a warning: float sums split differently)
    "dataset_root", "cache_dir",  # where the data lies: its content is compared instead (labels, images, positives)
    "trust_remote_code",
    "mixed_precision", "cpu",  # compared as what the run actually uses (precision: refused; device: a warning)
)
"""Options that may differ on `--resume_from_checkpoint`: they cannot change the trained weights or the selection.
Every other option (model, data, recipe, loss, seed, batch sizes, epochs, patience...) must be the same, and so must
the number of processes and the mixed precision in use, and the dataset's content."""
DATASET_OPTIONS = ("dataset", "dataset_options", "protocol", "max_train_samples", "max_eval_samples")


@dataclass
class TrainingState:
    """Progress that must survive a restart (JSON in the checkpoint's `training_state.json`).

    `run_id` names the run (kept across resumes; the best model's marker file carries it), `test_before_training`
    keeps the metrics of the untrained model so that a resumed run reports them too."""

    run_id: str = ""
    global_step: int = 0
    epoch: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    best_source: str = ""
    best_metrics: dict = field(default_factory=dict)
    evaluations_without_improvement: int = 0
    history: list = field(default_factory=list)
    test_before_training: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Set the fields from `state` (as :meth:`state_dict` gives it); an unknown field or a value of another type
        raises a `ValueError` naming the field."""
        for item in dataclasses.fields(self):
            if item.name not in state:
                continue
            value, current = state[item.name], getattr(self, item.name)
            kinds = (int, float) if isinstance(current, float) else (type(current),)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"training state: {item.name} must be {type(current).__name__}, got {value!r}")
            setattr(self, item.name, float(value) if isinstance(current, float) else value)
        unknown = sorted(set(state) - {item.name for item in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"training state: unknown fields {unknown}")



def resolve_checkpoint(output_dir: str, resume: str) -> str:
    """`resume` is "latest" (the newest folder under `output_dir/checkpoints`) or a checkpoint folder."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {output_dir}/checkpoints")
        return found[-1][1]
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint: {resume!r} is not a folder")
    return resume


def find_checkpoint(config, accelerator, working: str) -> str | None:
    """The checkpoint `config.resume_from_checkpoint` names, or None for a fresh run. For "hub" / "hub:FOLDER" the
    main process first downloads that training state of `config.hub_model_id` into `working` (with the marker of
    its best model)."""
    from hspnet.hub import transfer as hub
    from hspnet.training.distributed import on_main
    from hspnet.training.run_folder import writing
    from hspnet.utils.files import write_json

    hub_folder = hub.parse_hub_resume(config.resume_from_checkpoint)
    if hub_folder is None:
        return resolve_checkpoint(working, config.resume_from_checkpoint) if config.resume_from_checkpoint else None

    def download():
        path, info = hub.download_checkpoint(config.hub_model_id, working, path_in_repo=hub_folder,
                                             token=config.hub_token)
        if info.get("best_model"):
            marker = os.path.join(working, BEST_MARKER_NAME)
            with writing(marker):
                write_json(marker, info["best_model"])
        logger.info("downloaded %s/ of the Hub repository %s (step %s, epoch %s) into %s", hub_folder,
                    config.hub_model_id, info.get("step"), info.get("epoch"), path)

    on_main(accelerator, download)
    return resolve_checkpoint(working, "latest")


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_settings(config, accelerator=None, dataset: dict | None = None) -> dict:
    """What `training_args.json` records: every option of `config` except secrets (the Hub token), and under "run"
    the number of processes, the mixed precision and device in use, the library versions and the dataset's
    fingerprint (see :func:`dataset_fingerprint`)."""
    import accelerate
    import torch
    import transformers

    run = {
        "format": 2,
        "world_size": accelerator.num_processes if accelerator is not None else 1,
        "mixed_precision": str(accelerator.mixed_precision) if accelerator is not None else "no",
        "device": accelerator.device.type if accelerator is not None else "cpu",
        "torch_num_threads": torch.get_num_threads(),
        "launcher": launcher(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__},
    }
    if dataset is not None:
        run["dataset"] = dataset
    return {**_json_value(config.to_dict()), "run": run}


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def settings_differences(saved: dict, current: dict) -> tuple[list[str], list[str], list[str]]:
    """Compare the settings of a checkpoint with those of the run that resumes it (both as :func:`run_settings`
    gives them). Returns `(dataset, other, notes)`: differences of the data options, other differences that change
    the result (both refuse the resume), and harmless differences worth a warning (device, library versions)."""
    saved_options = {k: v for k, v in saved.items() if k != "run"}
    current_options = _json_value({k: v for k, v in current.items() if k != "run"})
    saved_run, current_run = saved.get("run") or {}, current.get("run") or {}
    dataset, other, notes = [], [], []
    missing = object()
    from hspnet.training.arguments import TrainingConfig

    # an option newer than the checkpoint is at its default there: what the run that wrote it did
    defaults = _json_value({f.name: f.default for f in dataclasses.fields(TrainingConfig)
                            if f.default is not dataclasses.MISSING})
    for key in sorted(set(saved_options) | set(current_options)):
        if key in RESUME_SAFE_OPTIONS:
            continue
        before, after = saved_options.get(key, missing), current_options.get(key, missing)
        if before is missing and key in defaults:
            before = defaults[key]
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):  # name the entries that differ
            pairs = [(f"{key}.{sub}", before.get(sub, missing), after.get(sub, missing))
                     for sub in sorted(set(before) | set(after), key=str)
                     if before.get(sub, missing) != after.get(sub, missing)]
        else:
            pairs = [(key, before, after)]
        for name, old, new in pairs:
            line = (f"{name} {'(not set)' if old is missing else _show(old)} -> "
                    f"{'(not set)' if new is missing else _show(new)}")
            (dataset if key in DATASET_OPTIONS else other).append(line)
    for key, label in (("world_size", "number of processes"), ("mixed_precision", "mixed precision in use")):
        if saved_run.get(key) != current_run.get(key):
            other.append(f"{label} {_show(saved_run.get(key))} -> {_show(current_run.get(key))}")
    if saved_run.get("device") != current_run.get("device"):
        notes.append(f"device {saved_run.get('device')} -> {current_run.get('device')}")
    if "torch_num_threads" in saved_run and saved_run["torch_num_threads"] != current_run.get("torch_num_threads"):
        notes.append(f"torch threads {saved_run['torch_num_threads']} -> {current_run.get('torch_num_threads')}")
    for name, version in (current_run.get("versions") or {}).items():
        before = (saved_run.get("versions") or {}).get(name)
        if before != version:
            notes.append(f"{name} {before} -> {version}")
    return dataset, other, notes


def dataset_fingerprint(hierarchy, splits: dict) -> dict:
    """What identifies the data a run trains and selects on: the label names, the hierarchy and, for each split
    used, its number of images and a hash of its image ids with their (observed) labels (a streamed split: the
    digest recorded when its shards were written, and its shards' names and rows). Paths do not enter, so a moved
    copy of the same data matches."""
    import hashlib

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    fingerprint = {"labels": list(hierarchy.labels), "groups": list(hierarchy.groups),
                   "label_to_group": [int(g) for g in hierarchy.label_to_group], "splits": {}}
    for name, split in splits.items():
        if hasattr(split, "content_fingerprint"):  # a streamed split: what its shards recorded (none is read)
            fingerprint["splits"][name] = split.content_fingerprint()
            continue
        present = [column for column in ("image_id", "observed_labels", "labels") if column in split.column_names]
        # read as one Arrow table: the values `split[column]` gives, without a Column object per column (each
        # deep-copies the features, ~0.2 s with 10,000 label names)
        table = split.with_format("arrow", columns=present)[:]
        parts = [table.column(column).to_pylist() for column in present]
        fingerprint["splits"][name] = {"num_images": len(split), "content": digest(parts)}
    return fingerprint


def dataset_differences(saved: dict | None, current: dict) -> list[str]:
    """Human-readable differences between two :func:`dataset_fingerprint` values."""
    if not saved:
        return []
    found = []
    if saved.get("labels") != current["labels"]:
        found.append(f"labels: {label_mismatch(saved.get('labels') or [], current['labels'], 'checkpoint')}")
    elif saved.get("groups") != current["groups"] or saved.get("label_to_group") != current["label_to_group"]:
        found.append("the label hierarchy (groups) differs")
    for name in sorted(set(saved.get("splits", {})) | set(current["splits"])):
        before, after = saved.get("splits", {}).get(name), current["splits"].get(name)
        if before == after:
            continue
        if before is None or after is None:
            found.append(f"split {name!r} {'not used' if before is None else 'used'} by the checkpoint's run")
        elif before["num_images"] != after["num_images"]:
            found.append(f"{name} split {before['num_images']} -> {after['num_images']} images")
        else:
            found.append(f"{name} split: same number of images ({after['num_images']}) but other images or labels")
    return found


def label_mismatch(old: list[str], new: list[str], old_name: str = "model", new_name: str = "dataset") -> str:
    """One line saying how two label lists differ (names missing on either side, or the first change of order)."""
    only_old = [label for label in old if label not in set(new)]
    only_new = [label for label in new if label not in set(old)]
    if not only_old and not only_new and len(old) == len(new):
        index = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        return (f"the same {len(new)} labels in another order (label {index} is {old[index]!r} in the {old_name}, "
                f"{new[index]!r} in the {new_name})")
    parts = [f"{len(old)} labels in the {old_name}, {len(new)} in the {new_name}"]
    if only_old:
        parts.append(f"only in the {old_name}: {only_old[:5]}{' ...' if len(only_old) > 5 else ''}")
    if only_new:
        parts.append(f"only in the {new_name}: {only_new[:5]}{' ...' if len(only_new) > 5 else ''}")
    return "; ".join(parts)


def read_checkpoint_settings(checkpoint: str) -> dict:
    """The `training_args.json` of a checkpoint."""
    path = os.path.join(checkpoint, TRAINING_ARGS_NAME)
    if not os.path.isfile(path):
        raise ResumeMismatchError(
            f"checkpoint {checkpoint} has no {TRAINING_ARGS_NAME} (not written by scripts/train.py, or incomplete): its "
            "settings cannot be checked against this run's, so it is not resumed"
        )
    settings = read_checkpoint_json(path, "training settings file")
    if not isinstance(settings, dict) or not isinstance(settings.get("run"), dict):
        raise ValueError(f"{path}: truncated or corrupt (no 'run' mapping)")
    return settings


def check_resume_settings(checkpoint: str, saved: dict, current: dict, dataset: dict | None = None) -> list[str]:
    """Raise :class:`ResumeMismatchError` listing every difference that changes the result; return the notes."""
    data, other, notes = settings_differences(saved, current)
    if dataset is not None:
        data += dataset_differences((saved.get("run") or {}).get("dataset"), dataset)
    if not data and not other:
        return notes
    message = f"cannot resume from {checkpoint}: "
    if data:
        message += f"it was trained on another dataset ({'; '.join(data)})"
        if other:
            message += f", and with other settings that change the result ({'; '.join(other)})"
    else:
        message += f"its run used other settings that change the result ({'; '.join(other)})"
    message += (". Resume with the run's own settings, or start a new run (another --output_dir, or "
                "--overwrite_output_dir true). Only these options may change on resume: "
                + ", ".join(o for o in RESUME_SAFE_OPTIONS if o not in ("mixed_precision", "cpu")))
    raise ResumeMismatchError(message)


def check_best_model(folder: str, state: TrainingState, checkpoint: str) -> None:
    """On resume: if the checkpoint says a best model was saved, `folder` must hold it (from this run, at that
    step or later: a run killed between saving the best model and its checkpoint re-derives the same model)."""
    if state.best_epoch < 0:
        return
    marker_path = os.path.join(folder, BEST_MARKER_NAME)
    try:
        marker = read_json_file(marker_path, "best-model marker")
    except (OSError, ValueError):  # missing or unreadable: no best model here
        marker = None
    best_step = next((h["step"] for h in state.history if h.get("epoch") == state.best_epoch), None)
    if (marker is None or not os.path.isfile(os.path.join(folder, "model.safetensors"))
            or marker.get("run_id") != state.run_id or (best_step is not None and marker.get("step", -1) < best_step)):
        raise ResumeMismatchError(
            f"cannot resume from {checkpoint}: its run saved a best model (epoch {state.best_epoch}) that "
            f"{folder} does not hold (missing, or from another run); resume with --output_dir set to the folder of "
            "that run"
        )


# ---------------------------------------------------------------------------------------------------------------------
# The same result however the run is launched; the command that resumes it
# ---------------------------------------------------------------------------------------------------------------------

CPU_THREADS = 1
"""torch's threads per process when training on the CPU, unless the run's `torch_num_threads` option says otherwise.
Float sums (matrix products, reductions) are split differently with another number of threads, so the weights, and
after a few epochs the selected model and its mAP, depend on it. `accelerate launch` starts the script with
`OMP_NUM_THREADS=1` (when the variable is not set) while `hspnet train` / `python -m hspnet train` get torch's default
(one per core): fixed here, both launches train the same model, on any machine."""


def training_threads(config, device_type: str) -> int | None:
    """The thread count a run sets for itself: on the CPU, `config.torch_num_threads` when set, else
    :data:`CPU_THREADS`; None on an accelerator (its sums do not depend on the CPU threads): left as it is."""
    chosen = getattr(config, "torch_num_threads", None)
    if device_type != "cpu":
        return None
    return int(chosen) if chosen else CPU_THREADS


def launcher() -> str:
    """How this process was started, for the record: "accelerate launch", "torchrun" or "python"."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "ACCELERATE_DYNAMO_BACKEND" not in os.environ:
        return "torchrun"
    if "ACCELERATE_DYNAMO_BACKEND" in os.environ and "ACCELERATE_MIXED_PRECISION" in os.environ:
        return "accelerate launch"
    return "python"


_NOT_REPEATED = ("resume_from_checkpoint", "hub_token")
"""Options the printed resume command drops: the one it sets itself, and the secret (never printed)."""


def _argument_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def config_arguments(config) -> list[str]:
    """The options of `config` that differ from their defaults, as command-line arguments (`--lr 0.001 ...`) that
    give this config back (the command line a resume needs when the one typed is unknown)."""
    arguments = []
    for item in dataclasses.fields(config):
        if item.name in _NOT_REPEATED:
            continue
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, item.name)
        if value != default:
            arguments += [f"--{item.name}", _argument_text(value)]
    return arguments


def _option_name(token: str, names: list[str]) -> str | None:
    """The option a command-line token names (`--name`, `--name=value`, `--name-with-dashes`), or None (the command
    line takes no abbreviations)."""
    if not token.startswith("--") or token == "--":
        return None
    name = token[2:].split("=", 1)[0].replace("-", "_")
    return name if name in names else None


def without_options(argv: list[str], drop: tuple[str, ...], names: list[str]) -> list[str]:
    """`argv` without the options `drop` and their values (each takes one value)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = _option_name(token, names)
        if name in drop:
            skip = "=" not in token
            continue
        kept.append(token)
    return kept


def resume_command(config, argv: list[str] | None = None, *, resume: bool = True, num_processes: int = 1,
                   mixed_precision: str = "no", overwrite: bool = False) -> str:
    """The shell command (quoted for a POSIX shell) that continues this run (`resume`: with
    `--resume_from_checkpoint latest`) or starts it again: `hspnet train` (`accelerate launch --num_processes N -m
    hspnet train` for several processes) with the options as the user gave them (`argv`, e.g. `["--config",
    "configs/demo.yaml"]`; without it, the options of `config` that differ from their defaults), less any earlier
    `--resume_from_checkpoint` and the Hub token; plus the mixed precision the launcher chose, which a resume must
    use again, and `--overwrite_output_dir true` when `overwrite` (a start over into a folder that now holds a run)."""
    from hspnet.training.arguments import TrainingConfig

    names = TrainingConfig.field_names() + ["config"]
    arguments = config_arguments(config) if argv is None else without_options(list(argv), _NOT_REPEATED, names)
    if config.mixed_precision is None and mixed_precision not in (None, "no"):
        arguments += ["--mixed_precision", str(mixed_precision)]
    if overwrite and not config.overwrite_output_dir:
        arguments += ["--overwrite_output_dir", "true"]
    if resume:
        arguments += ["--resume_from_checkpoint", "latest"]
    launch = (["hspnet", "train"] if num_processes <= 1 else
              ["accelerate", "launch", "--num_processes", str(num_processes), "-m", "hspnet", "train"])
    return shlex.join(launch + arguments)


def interruption_message(config, argv: list[str] | None, *, folders, state, total_steps: int,
                         staging_removed: bool, num_processes: int, mixed_precision: str) -> str:
    """The one line printed when a run is interrupted: where it stopped, the last checkpoint (the newest one in the
    run's folder: the one `--resume_from_checkpoint latest` picks) and the command that resumes
    (:func:`resume_command`); without a checkpoint, that there is nothing to resume, where the best model so far is,
    and the command that starts over. `folders` (the run's :class:`~hspnet.training.run_folder.RunFolders`, None if
    it stopped before planning them), `state` (its :class:`TrainingState`, or None)."""
    where = f" after step {state.global_step} of {total_steps}" if state is not None else ""
    options = dict(num_processes=num_processes, mixed_precision=mixed_precision)
    previous = ""
    if folders is not None and folders.staging:
        previous = f"; {folders.output_dir} still holds the previous run"
        if not staging_removed:
            previous += f", this one is in {folders.working}"
    saved = checkpoint_dirs(folders.working) if folders is not None and not staging_removed else []
    if saved:
        checkpoint = saved[-1][1]
        return (f"training interrupted{where}; last checkpoint: {checkpoint}{previous}; resume with: "
                f"{resume_command(config, argv, **options)}")
    best = ""
    if folders is not None and state is not None and state.best_epoch >= 0 and not staging_removed:
        best = f"; the best model so far (epoch {state.best_epoch}) is in {folders.working}"
    holds_run = (folders is not None and not folders.staging
                 and os.path.exists(os.path.join(folders.working, "model.safetensors")))
    return (f"training interrupted{where} before any checkpoint was saved, there is nothing to resume{best}{previous}; "
            f"start over with: {resume_command(config, argv, resume=False, overwrite=holds_run, **options)}")
