"""A training run's log: the console and `train.log` in the output folder (main process), library verbosity by
process, and a log file whose write errors stop the run with one line."""

from __future__ import annotations

import logging
import os
import sys

from hspnet.training.run_folder import make_folder, writing
from hspnet.utils.errors import one_line


class RaisingFileHandler(logging.FileHandler):
    """A log file whose write errors stop the run with one line (logging would print a traceback and go on)."""

    def handleError(self, record):  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise OSError(f"cannot write the log file {self.baseFilename}: {error.strerror or one_line(error)} "
                          "(is the disk full or the folder not writable?)") from error
        super().handleError(record)


def setup_run_logging(logger: logging.Logger, accelerator, output_dir: str, hub_token: str | None = None) -> None:
    """`logger` at INFO on the main process (WARNING elsewhere) to the console and, on the main process,
    `output_dir/train.log`; transformers and datasets at WARNING on the main process, ERROR elsewhere. Both handlers
    mask every Hub token in effect (`hub_token`, the environment's, the stored login's)."""
    import datasets
    import transformers

    from hspnet.utils.redaction import RedactTokens

    redaction = RedactTokens(hub_token)

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    close_log_handlers(logger)
    logger.propagate = False
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    console.addFilter(redaction)
    logger.addHandler(console)
    if accelerator.is_main_process:
        make_folder(output_dir, "output_dir")
        path = os.path.join(output_dir, "train.log")
        with writing(path, "the log file"):
            handler = RaisingFileHandler(path)
        handler.setFormatter(fmt)
        handler.addFilter(redaction)
        logger.addHandler(handler)
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()


def close_log_handlers(logger: logging.Logger) -> None:
    """Remove `logger`'s handlers, closing its log files."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()


def print_and_log(logger: logging.Logger, line: str) -> None:
    """`line` printed once on stderr (not through the console handler, which would add a time stamp) and written to
    the log files of `logger` (train.log) as a warning."""
    print(line, file=sys.stderr, flush=True)
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 0, "%s", (line,), None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def scalar_config(config) -> dict:
    """The options of a `TrainingConfig` as TensorBoard's hyper-parameters (scalars; dicts as JSON), without
    secrets."""
    import json

    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config.to_dict().items()}
