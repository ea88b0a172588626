"""Training HSPNet with accelerate: :func:`train` over a :class:`TrainingConfig` (`hspnet train`), in named steps
(`loop.py`), with what a run needs around it: its data and model (`data_and_model.py`), the recipe
(`optimization.py`, `ema.py`), the output folder (`run_folder.py`), the log (`run_log.py`), the training state on
disk (`checkpoint.py`), the resume checks (`resume.py`) and a shared outcome across processes (`distributed.py`)."""

from hspnet.training.arguments import TrainingConfig
from hspnet.training.loop import TrainingDivergedError, train

__all__ = ["TrainingConfig", "TrainingDivergedError", "train"]
