"""Training HSPNet with accelerate: :func:`train` over a :class:`TrainingConfig` (`hspnet train`), in named steps
(`loop.py`), with what a run needs around it: its options (`arguments.py`), its data and model
(`data_and_model.py`), the recipe (`optimization.py`, `ema.py`), the output folder (`run_folder.py`), the log
(`run_log.py`), the training state on disk (`checkpoint.py`), the resume checks (`resume.py`) and a shared outcome
across processes (`distributed.py`).

The names below are imported on first use, so that `hspnet.training.arguments` (the options and their command line)
loads without torch, accelerate or datasets."""

import importlib

_LAZY = {"TrainingConfig": "hspnet.training.arguments", "TrainingDivergedError": "hspnet.training.loop",
         "train": "hspnet.training.loop"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hspnet.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["TrainingConfig", "TrainingDivergedError", "train"]
