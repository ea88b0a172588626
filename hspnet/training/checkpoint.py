"""A training state on disk, written without pickles of the project's own and read without running code.

A checkpoint may come from someone else (a Hub repository's ``last-checkpoint/``), so reading one must be as safe
as loading a safetensors model. A checkpoint folder holds:

==================================  ====================================================================================
``model.safetensors``               the weights (accelerate's ``save_state``)
``optimizer.bin``                   the optimizer's state (accelerate; a torch pickle of tensors and numbers)
``random_states_<rank>.pkl``        each process's Python, NumPy and torch random states (accelerate; torch pickle)
``scaler.pt``                       fp16's gradient scaler (accelerate; only with ``--mixed_precision fp16``)
``training_state.json``             the loop's progress (:class:`~hspnet.training.resume.TrainingState`), the LR
                                    schedule, the EMA decay and, in a streamed run, the data position (``"data"``:
                                    :meth:`hspnet.training.streaming.StreamedLoader.position`)
``loss_state.safetensors``          the state of the model's loss (SPLC / LL-R's epoch, ROLE's label estimates)
``ema.safetensors``                 the averaged weights (``--ema``; the tensors that can change in training)
``label_sampling_<rank>.safetensors``  each process's label-sampling generator (``--label_sample_size``)
``training_args.json``              the run's settings, compared on resume (:mod:`hspnet.training.resume`)
==================================  ====================================================================================

:func:`read_checkpoint` checks every file before anything is loaded: a missing or truncated file is named; each
torch pickle is read with ``weights_only=True``, allowing NumPy's array types only in the random states, and must
hold exactly what accelerate writes there; a file that needs unpickling but is none of the above (e.g. the
``custom_checkpoint_<n>.pkl`` that accelerate's ``register_for_checkpointing`` writes and reads with
``weights_only=False``) is refused by name. Nothing of the checkpoint is ever unpickled with code execution.
:func:`apply_checkpoint` then restores every piece of state, or stops naming the file.
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hspnet.hub.transfer import CHECKPOINT_INFO_NAME, TRAINING_ARGS_NAME
from hspnet.utils.errors import FileFormatError, located, one_line
from hspnet.utils.files import read_json_file

MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.bin"
SCALER_NAME = "scaler.pt"
TRAINING_STATE_NAME = "training_state.json"
LOSS_STATE_NAME = "loss_state.safetensors"
EMA_NAME = "ema.safetensors"
FORMAT = 1
"""`format` in `training_state.json`."""


def random_states_name(rank: int) -> str:
    return f"random_states_{rank}.pkl"


def label_sampling_name(rank: int) -> str:
    return f"label_sampling_{rank}.safetensors"


_PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")
_OTHER_KNOWN = (TRAINING_ARGS_NAME, CHECKPOINT_INFO_NAME)


class UnsafeCheckpointError(ValueError):
    """A checkpoint file would need unpickling with code execution, or holds what no checkpoint holds."""


@dataclass
class CheckpointContents:
    """What :func:`read_checkpoint` validated, for :func:`apply_checkpoint` (the weights and the optimizer state are
    loaded by accelerate from the files checked here)."""

    folder: str
    progress: dict
    scheduler: dict
    ema_decay: float | None
    loss_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    label_generator_state: torch.Tensor | None
    label_generator_path: str | None
    random_states: dict
    data_position: dict | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def tensors_for_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as safetensors takes it: contiguous CPU tensors, a copy where two entries share memory."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and key in seen:
            tensor = tensor.clone()
        seen.add(key)
        out[name] = tensor
    return out


def save_checkpoint(accelerator, folder: str, *, state, scheduler, loss_module: torch.nn.Module, ema=None,
                    label_generator: torch.Generator | None = None, train_loader=None) -> None:
    """Write the training state into `folder` (every process calls it): accelerate's ``save_state`` (weights,
    optimizer, random states; no registered objects, so no ``custom_checkpoint_*.pkl``), then this project's state
    as JSON and safetensors (with a streamed `train_loader`'s data position). Every file gets the permissions the
    user's umask gives (safetensors writes 0600 files)."""
    from safetensors.torch import save_file

    from hspnet.utils.files import give_default_mode, new_file_mode, write_json

    accelerator.save_state(folder)
    own = os.path.join(folder, label_sampling_name(accelerator.process_index))
    if label_generator is not None:
        save_file({"state": label_generator.get_state()}, own)
    if not accelerator.is_main_process:
        give_default_mode([own] if label_generator is not None else [], new_file_mode(folder))
        return
    document = {"format": FORMAT, "progress": state.state_dict(), "scheduler": scheduler.state_dict(),
                "ema_decay": ema.decay if ema is not None else None}
    if hasattr(train_loader, "position"):
        document["data"] = train_loader.position()
    write_json(os.path.join(folder, TRAINING_STATE_NAME), document)
    save_file(tensors_for_file(loss_module.state_dict()), os.path.join(folder, LOSS_STATE_NAME))
    if ema is not None:
        save_file(tensors_for_file(ema.trained_state()), os.path.join(folder, EMA_NAME))
    written = [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors")]
    give_default_mode(written, new_file_mode(folder))


# ---------------------------------------------------------------------------------------------------------------------
# Reading an untrusted checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def _random_state_globals() -> list:
    """What a NumPy random state needs from a torch pickle: the array and dtype types (protocol 2 pickles bytes via
    ``codecs.encode``). Nothing that runs code."""
    import codecs

    allowed = [np.ndarray, np.dtype, codecs.encode]
    core = getattr(np, "_core", None) or np.core
    allowed.append(core.multiarray._reconstruct)
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.UInt32DType)
    return allowed


def _check_zip(path: str) -> None:
    """A torch pickle is a zip archive: a truncated one fails here, before any unpickling; a bare pickle (which only
    an unpickler could tell apart from an exploit) is refused."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80":
        raise _bad(path, "a bare pickle, not the torch archive a checkpoint file is; it is never unpickled")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path}: truncated or corrupt checkpoint file ({one_line(error)}); resume from another "
                         "checkpoint") from None
    if bad is not None:
        raise ValueError(f"{path}: truncated or corrupt checkpoint file (member {bad} fails its CRC check); resume "
                         "from another checkpoint")


def safe_torch_load(path: str, what: str, allowed: list | None = None) -> Any:
    """`torch.load(path, weights_only=True)` with only `allowed` added to torch's tensor-and-number types (for the
    duration of the call); anything else in the pickle stops with :class:`UnsafeCheckpointError` naming the file."""
    _check_zip(path)
    try:
        with torch.serialization.safe_globals(list(allowed or [])):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the unpickler refused it: never retried without weights_only
        raise UnsafeCheckpointError(
            f"{path}: refused: not {what} ({one_line(error)[:300]}); a checkpoint file is never unpickled with code "
            "execution. Resume from a checkpoint written by hspnet train, or start a new run") from None


def _bad(path: str, reason: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path}: refused: {reason}; resume from a checkpoint written by hspnet train, or "
                                 "start a new run")


def _check_random_states(path: str, states: Any) -> dict:
    """What accelerate's random-state file holds, checked entry by entry (types and shapes)."""
    if not isinstance(states, dict):
        raise _bad(path, f"expected a mapping of random states, got {type(states).__name__}")
    expected = {"step", "random_state", "numpy_random_seed", "torch_manual_seed"}
    if not isinstance(states.get("step", 0), int):
        raise _bad(path, "the step of the random states is not an integer")
    missing = expected - set(states)
    unknown = [key for key in states if key not in expected
               and not re.fullmatch(r"torch_[a-z]+_manual_seed|xm_seed", str(key))]
    if missing or unknown:
        raise _bad(path, f"random states {'without ' + str(sorted(missing)) if missing else ''}"
                         f"{' with unknown entries ' + str(unknown) if unknown else ''}")
    python_state = states["random_state"]
    if not (isinstance(python_state, tuple) and len(python_state) == 3 and isinstance(python_state[1], tuple)
            and all(isinstance(v, int) for v in python_state[1])):
        raise _bad(path, "the Python random state is malformed")
    numpy_state = states["numpy_random_seed"]
    if not (isinstance(numpy_state, tuple) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
            and isinstance(numpy_state[1], np.ndarray) and numpy_state[1].dtype == np.uint32):
        raise _bad(path, "the NumPy random state is malformed")
    for key, value in states.items():
        if key.startswith("torch_"):
            values = value if isinstance(value, (list, tuple)) else [value]
            if not all(isinstance(v, torch.Tensor) and v.dtype == torch.uint8 for v in values):
                raise _bad(path, f"{key} is not a torch generator state")
    return states


def read_checkpoint_json(path: str, what: str = "checkpoint file") -> Any:
    """A JSON file of a checkpoint (:func:`hspnet.utils.files.read_json_file`); a damaged one is a ``ValueError``
    ``<path>: truncated or corrupt (<reason>)``."""
    try:
        return read_json_file(path, what)
    except FileFormatError as error:
        raise ValueError(f"{path}: truncated or corrupt ({located(error.reason, line=error.line)})") from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 - any failure to read means a damaged file
        raise ValueError(f"{path}: truncated or corrupt checkpoint file ({one_line(error)}); resume from another "
                         "checkpoint") from None


def _looks_pickled(path: str) -> bool:
    """A file that only an unpickler reads: by its name, or by its first bytes (a pickle's PROTO opcode, a zip
    archive as `torch.save` writes)."""
    if path.endswith(_PICKLE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return True
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def expected_files(num_processes: int, *, ema: bool, label_sampling: bool, scaler: bool) -> list[str]:
    """The files a checkpoint of a run with these settings holds (besides `training_args.json`)."""
    names = [MODEL_NAME, OPTIMIZER_NAME, TRAINING_STATE_NAME, LOSS_STATE_NAME]
    names += [random_states_name(rank) for rank in range(num_processes)]
    if ema:
        names.append(EMA_NAME)
    if label_sampling:
        names += [label_sampling_name(rank) for rank in range(num_processes)]
    if scaler:
        names.append(SCALER_NAME)
    return names


def read_checkpoint(folder: str, *, num_processes: int, process_index: int, ema: bool, label_sampling: bool,
                    scaler: bool = False) -> CheckpointContents:
    """Check every file of the checkpoint `folder` and read this process's share of the state (see the module
    docstring). Raises `FileNotFoundError` / `ValueError` (:class:`UnsafeCheckpointError`) naming the file."""
    expected = expected_files(num_processes, ema=ema, label_sampling=label_sampling, scaler=scaler)
    for name in expected:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing from the checkpoint (incomplete or damaged); resume from "
                                    "another checkpoint")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name in expected or name in _OTHER_KNOWN:
            continue
        if os.path.isdir(path) or _looks_pickled(path):
            raise _bad(path, "not a file of an hspnet checkpoint (it would need unpickling, which could run code; "
                             f"a checkpoint holds {', '.join(expected)})")

    from safetensors import safe_open

    try:
        with safe_open(os.path.join(folder, MODEL_NAME), "pt") as handle:
            handle.keys()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{os.path.join(folder, MODEL_NAME)}: truncated or corrupt checkpoint file "
                         f"({one_line(error)}); resume from another checkpoint") from None
    safe_torch_load(os.path.join(folder, OPTIMIZER_NAME), "an optimizer state (tensors and numbers)")
    if scaler:
        safe_torch_load(os.path.join(folder, SCALER_NAME), "a gradient scaler state (numbers)")
    random_states = {}
    for rank in range(num_processes):
        path = os.path.join(folder, random_states_name(rank))
        states = _check_random_states(path, safe_torch_load(path, "random states", _random_state_globals()))
        if rank == process_index:
            random_states = states

    path = os.path.join(folder, TRAINING_STATE_NAME)
    document = read_checkpoint_json(path, "training state file")
    if not (isinstance(document, dict) and document.get("format") == FORMAT
            and isinstance(document.get("progress"), dict) and isinstance(document.get("scheduler"), dict)):
        raise ValueError(f"{path}: truncated or corrupt (expected format {FORMAT} with 'progress' and 'scheduler')")
    ema_decay = document.get("ema_decay")
    if ema and not (isinstance(ema_decay, float) and 0.0 <= ema_decay <= 1.0):
        raise ValueError(f"{path}: ema_decay must be a number in [0, 1], got {ema_decay!r}")
    label_state, label_path = None, None
    if label_sampling:
        label_path = os.path.join(folder, label_sampling_name(process_index))
        label_state = _read_safetensors(label_path).get("state")
        if label_state is None or label_state.dtype != torch.uint8 or label_state.dim() != 1:
            raise ValueError(f"{label_path}: holds no generator state ('state', uint8)")
    return CheckpointContents(
        folder=folder, progress=document["progress"], scheduler=document["scheduler"],
        ema_decay=ema_decay if ema else None,
        loss_state=_read_safetensors(os.path.join(folder, LOSS_STATE_NAME)),
        ema_state=_read_safetensors(os.path.join(folder, EMA_NAME)) if ema else None,
        label_generator_state=label_state, label_generator_path=label_path, random_states=random_states,
        data_position=document.get("data"),
    )


def _load_exactly(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    try:
        module.load_state_dict(tensors, strict=True)
    except Exception as error:  # noqa: BLE001 - other names or shapes than this run's
        raise ValueError(f"{path}: does not fit this run ({one_line(error)[:300]})") from None


def apply_checkpoint(contents: CheckpointContents, *, state, scheduler, loss_module: torch.nn.Module, ema=None,
                     label_generator: torch.Generator | None = None, train_loader=None) -> None:
    """Restore what :func:`read_checkpoint` read (after ``accelerator.load_state`` restored the weights and the
    optimizer): the loop's progress, the schedule, the loss state, the EMA, the label-sampling generator, this
    process's random states and a streamed `train_loader`'s data position. Every piece is restored or a
    `ValueError` names the file."""
    folder = contents.folder
    path = os.path.join(folder, TRAINING_STATE_NAME)
    try:
        state.load_state_dict(contents.progress)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    current = scheduler.state_dict()
    if set(contents.scheduler) != set(current) or any(
            type(contents.scheduler[key]) is not type(value) and not (
                isinstance(value, (int, float)) and isinstance(contents.scheduler[key], (int, float)))
            for key, value in current.items()):
        raise ValueError(f"{path}: the schedule state does not fit this run's schedule ({type(scheduler).__name__})")
    scheduler.load_state_dict(contents.scheduler)
    _load_exactly(loss_module, {k: v.to(_device_of(loss_module)) for k, v in contents.loss_state.items()},
                  os.path.join(folder, LOSS_STATE_NAME))
    if ema is not None:
        ema.load_trained_state(contents.ema_state, contents.ema_decay, os.path.join(folder, EMA_NAME))
    if label_generator is not None:
        try:
            label_generator.set_state(contents.label_generator_state)
        except RuntimeError as error:
            raise ValueError(f"{contents.label_generator_path}: not a generator state ({one_line(error)})") from None
    if hasattr(train_loader, "load_position"):
        train_loader.load_position(contents.data_position, path)
    _restore_random_states(contents.random_states)


def _device_of(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _restore_random_states(states: dict) -> None:
    random.setstate(states["random_state"])
    np.random.set_state(states["numpy_random_seed"])
    torch.set_rng_state(states["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
        torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
