"""Training HSPNet with accelerate: the recipe of the released code, as importable, tested functions.

`scripts/train.py` is a thin command line over :func:`train`. The pieces:

- :class:`TrainingConfig`: every option, loadable from a YAML file (``configs/*.yaml``) with command-line overrides;
- :func:`parameter_groups`: Adam groups (image tower + meta-net at ``lr``, GCN at ``gcn_lr``; weight decay only on
  weights with more than one dimension);
- :func:`one_cycle_scheduler`: OneCycleLR with ``pct_start`` and a schedule length separate from the epochs trained;
- :class:`ModelEMA`: exponential moving average of all weights, decay chosen so that one epoch keeps
  ``ema_keep_per_epoch`` (0.82) of the old average;
- :func:`hspnet.engine.evaluate_model`: streaming, distributed-safe evaluation with every metric of :mod:`hspnet.metrics`;
- :func:`train`: the loop (mixed precision, checkpointing, exact mid-epoch resume, model selection on the held-out
  validation split or, under the authors' protocol, on the test set, early stopping, TensorBoard, Hub upload:
  ``--hub_strategy`` end / every_save / checkpoint / all_checkpoints as in transformers' Trainer, through
  :class:`hspnet.hub.HubUploader`; ``--resume_from_checkpoint hub`` continues from the last pushed state).

What protects a run's results:

- :class:`OutputDirLock`: the output folder is locked (``fcntl.flock``, released by the kernel when the process ends)
  by the main process; a second run on it fails at once naming the holder.
- :func:`plan_folders`: a folder holding an earlier run is only replaced with ``--overwrite_output_dir``, by a
  complete new run (trained in ``<output_dir>.partial``, swapped in at the end); files no run writes stop it.
- :func:`run_settings` / :func:`check_resume_settings`: each checkpoint carries ``training_settings.json``; a resume
  with other result-changing settings or other data is refused, listing every difference.
- :func:`check_checkpoint_files`: a truncated or missing checkpoint file is named before anything is loaded.
- a NaN/inf loss or gradient stops the run (:class:`TrainingDivergedError`) before that step is applied.
- every file appears whole: model files through a temporary folder, JSON and the model card through
  :mod:`hspnet.files`, checkpoints under a ``.partial`` name renamed when complete (``train.log`` and TensorBoard
  events are appended streams).
- the Hub: uploads during training run in a background thread from snapshots (hard links) taken at save time, so a
  later save never changes files under an upload; a failed upload is logged, counted in ``all_results.json`` and
  retried with the next save; only a failed final upload fails the run, saying the local model is intact. The token
  is never logged or saved.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hspnet import hub
from hspnet.hub import HUB_STRATEGIES, HubUploader, HubUploadError, model_card  # noqa: F401 - model_card re-exported
from hspnet.engine import add_index_column, collate, evaluate_model, load_datasets, make_transform  # noqa: F401

logger = logging.getLogger("hspnet.train")

PROTOCOLS = ("heldout", "authors")
# HSPNetModel buffers fixed at construction (prompts, relation): never averaged by the EMA
CONSTANT_BUFFERS = ("relation", "group_prompt_embeds", "label_prompt_embeds", "group_eos_positions",
                    "label_eos_positions", "label_to_group")


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingConfig:
    """Every option of `scripts/train.py`. YAML keys and command-line flags have the same names."""

    # model
    clip_model: str = "openai/clip-vit-base-patch16"
    """CLIP checkpoint (Hub id or folder) to build a new HSPNet on; "tiny-random" builds a tiny random CLIP."""
    model_name_or_path: str | None = None
    """An existing HSPNet folder or Hub id to fine-tune instead of building one from `clip_model`."""
    relation_file: str | None = None
    """Raw (C+G)x(C+G) relation `.npy` (e.g. the authors'); default: computed from the CLIP text tower."""
    trust_remote_code: bool = False

    # data
    dataset: str = "demo"
    """"demo", "coco", "voc", "nuswide", "cub", "folder", or a folder written by `datasets_scripts/prepare.py`."""
    dataset_root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    """Extra keyword arguments of the dataset loader (e.g. `observed_labels_file`, `num_train` for the demo)."""
    cache_dir: str | None = None
    protocol: str = "heldout"
    """"heldout": select the model on the validation split held out from train (20 %, seeded); "authors": train on
    all training images and select on the test set, as the released code does."""
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    # recipe
    epochs: int = 60
    schedule_epochs: int = 80
    """OneCycleLR length in epochs (the released configs schedule 80 epochs and stop at 60)."""
    max_train_steps: int | None = None
    """Stop after this many optimizer steps (for quick runs and tests); the schedule is unchanged."""
    batch_size: int = 128
    """Per-process batch size."""
    eval_batch_size: int | None = None
    lr: float = 1e-4
    gcn_lr: float = 5e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.2
    ema: bool = True
    ema_keep_per_epoch: float = 0.82
    loss: str = "splc"
    loss_kwargs: dict = field(default_factory=dict)
    loss_lr_scale: float = 10.0
    """Learning rate of a loss's own parameters (ROLE's label estimates) as a multiple of `lr` (Cole et al.: 10)."""
    patience: int | None = None
    """Stop after this many evaluations without improvement of the selection mAP (None: never)."""
    seed: int = 0
    mixed_precision: str | None = None
    """"no", "fp16" or "bf16"; default: what `accelerate launch` / `accelerate config` says."""
    num_workers: int = 0
    gradient_checkpointing: bool = False
    label_sample_size: int | None = None
    """Large label sets, an approximation (off by default): each step runs the text side for the batch's observed
    positives plus this many of the other labels, drawn uniformly, with the loss reweighted to an unbiased estimate
    (see `HSPNetConfig.label_sample_size`); evaluation always uses every label."""
    torch_compile: bool = False
    """Run the training and evaluation forward passes through `torch.compile(model)` (one graph break per forward,
    for the text-side cache; results equal eager within float rounding; the first steps compile)."""

    # outputs
    output_dir: str = "outputs/hspnet"
    overwrite_output_dir: bool = False
    """Replace an output_dir that holds an earlier run. The new run works in `<output_dir>.partial` and replaces the
    folder only once complete; if it fails, output_dir is unchanged."""
    checkpointing_steps: str | None = "epoch"
    """"epoch", an integer number of steps, or None to save no training state."""
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    """"latest", a checkpoint folder, or "hub": the training state last pushed to `hub_model_id` (its
    `last-checkpoint/`, with the best model of that moment; "hub:checkpoints/NAME" for another pushed state),
    downloaded into an --output_dir that holds no run. Every option that changes the result must equal the
    checkpoint's run's (only output, logging, checkpointing, Hub and data-location options may change); the data
    must be the same."""
    with_tracking: bool = True
    report_to: str = "tensorboard"
    logging_steps: int = 10
    evaluate_before_training: bool = True
    push_to_hub: bool = False
    """Upload the model to `hub_model_id` (when: see hub_strategy)."""
    hub_strategy: str = "end"
    """As transformers' Trainer: "end" (the final model and card, once), "every_save" (also the best model so far and
    an "in progress" card at each saved training state), "checkpoint" (also the newest training state in
    `last-checkpoint/`, enough for --resume_from_checkpoint hub), "all_checkpoints" (also every state in
    `checkpoints/NAME/`). Uploads run in the background; a failed one is logged, retried at the next save and
    reported in all_results.json; only a failed final upload fails the run."""
    hub_model_id: str | None = None
    hub_token: str | None = None
    """Hub token (default: `hf auth login` / HF_TOKEN); never logged or saved."""
    hub_private_repo: bool = False
    license: str | None = None
    """License written into the model card metadata (e.g. "apache-2.0"); none by default."""
    cpu: bool = False

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ValueError(f"checkpointing_steps must be 'epoch', an integer or null, got {self.checkpointing_steps!r}")
        for name in ("epochs", "schedule_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule_epochs < self.epochs:
            raise ValueError(f"schedule_epochs ({self.schedule_epochs}) must be >= epochs ({self.epochs})")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. your-name/hspnet-coco)")
        if self.hub_strategy not in HUB_STRATEGIES:
            raise ValueError(f"hub_strategy must be one of {HUB_STRATEGIES}, got {self.hub_strategy!r}")
        if (self.push_to_hub and self.hub_strategy in ("checkpoint", "all_checkpoints")
                and self.checkpointing_steps is None):
            raise ValueError(f"hub_strategy {self.hub_strategy!r} pushes training states, but checkpointing_steps is "
                             "null (no state is saved); set checkpointing_steps or use hub_strategy every_save")
        if hub.parse_hub_resume(self.resume_from_checkpoint) is not None and not self.hub_model_id:
            raise ValueError(f"--resume_from_checkpoint {self.resume_from_checkpoint} needs --hub_model_id (the "
                             "repository the run pushed its checkpoints to)")
        from hspnet.losses import check_loss_spec

        check_loss_spec(self.loss, {k: v for k, v in (self.loss_kwargs or {}).items() if k != "num_train_images"})


def _parse_bool(value: str) -> bool:
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def _parse_optional(kind):
    def parse(value: str):
        if str(value).strip().lower() in ("none", "null", ""):
            return None
        return kind(value)

    return parse


def _json_mapping(value: str) -> dict:
    from hspnet.cli_types import json_object

    return json_object(value)


def _field_parser(field_type: Any):
    """`(parse function, metavar)` for a `TrainingConfig` field, shared by the flags and the YAML values."""
    hint = str(field_type)
    if "dict" in hint:
        kind, metavar = _json_mapping, "JSON"
    elif "bool" in hint:
        kind, metavar = _parse_bool, "BOOL"
    elif "int" in hint:
        kind, metavar = int, "INT"
    elif "float" in hint:
        kind, metavar = float, "FLOAT"
    else:
        kind, metavar = str, "STR"
    return (_parse_optional(kind) if "None" in hint else kind), metavar


def _field_docs() -> dict[str, str]:
    """The docstring under each `TrainingConfig` field (for `--help`), read from the source."""
    import ast
    import inspect

    try:
        body = ast.parse(inspect.getsource(TrainingConfig)).body[0].body
    except (OSError, TypeError):
        return {}
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def build_argument_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one `--flag` per `TrainingConfig` field plus `--config FILE.yaml`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train HSPNet with accelerate (single or multi process). Options come from --config YAML, "
        "then command-line flags override them.",
    )
    parser.add_argument("--config", help="YAML file with any of the options below")
    docs = _field_docs()
    for f in dataclasses.fields(TrainingConfig):
        kind, metavar = _field_parser(f.type)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f"{docs.get(f.name, '')} (default: {default})".strip().replace("%", "%%")
        parser.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, metavar=metavar, help=help_text)
    return parser


def load_config(argv: list[str] | None = None) -> TrainingConfig:
    """Defaults < YAML file (`--config`) < command-line flags. Unknown YAML keys and values of the wrong type are
    errors naming the file and the key (YAML reads `1e-4` as a string: it is converted like a flag value)."""
    return config_from_arguments(build_argument_parser().parse_args(argv))


def config_from_arguments(args: argparse.Namespace) -> TrainingConfig:
    """The `TrainingConfig` of parsed command-line arguments (`--config` YAML first, then the flags given)."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(read_yaml_options(args.config))
    names = set(TrainingConfig.field_names())
    values.update({k: v for k, v in vars(args).items() if k in names})
    config = TrainingConfig(**values)
    config.validate()
    return config


def read_yaml_options(path: str) -> dict[str, Any]:
    """The options of a YAML config file, typed like the flags. Errors name the file, the line and the key:
    malformed YAML, a key given twice (PyYAML would silently keep the last one), unknown keys, wrong types."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} is not a file")

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ValueError(f"{path}, line {line}: option {key!r} is given twice (first on line {seen[key]})")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return loader.construct_mapping(node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        loaded = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        context = getattr(error, "context", None)
        detail = f"{problem} ({' '.join(str(context).split())})" if context else problem
        raise ValueError(f"{path}{where}: not valid YAML: {detail}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got {type(loaded).__name__}")
    names = TrainingConfig.field_names()
    unknown = sorted(str(key) for key in loaded if key not in names)
    if unknown:
        import difflib

        hints = [f"{key!r} -> {close[0]!r}" for key in unknown if (close := difflib.get_close_matches(key, names, 1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(f"{path}: unknown option(s) {unknown}{hint}; valid options: {names}")
    types = {f.name: f.type for f in dataclasses.fields(TrainingConfig)}
    return {key: _coerce(value, types[key], f"{path}: {key}") for key, value in loaded.items()}


def _coerce(value: Any, field_type: Any, where: str) -> Any:
    """A YAML value converted to the field's type (strings parsed like flags); a mismatch raises naming `where`."""
    kind, metavar = _field_parser(field_type)
    if value is None or isinstance(value, str):
        if value is None and "None" not in str(field_type):
            raise ValueError(f"{where}: null is not allowed")
        try:
            return kind(value) if value is not None else None
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"{where}: {value!r} is not a valid {metavar} ({error})") from None
    expected = {"JSON": dict, "BOOL": bool, "INT": int, "FLOAT": (int, float), "STR": str}[metavar]
    if not isinstance(value, expected) or (metavar in ("INT", "FLOAT") and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {metavar}, got {value!r}")
    return float(value) if metavar == "FLOAT" else value


# ---------------------------------------------------------------------------------------------------------------------
# Optimiser, schedule, EMA
# ---------------------------------------------------------------------------------------------------------------------


def parameter_groups(model, lr: float, gcn_lr: float, weight_decay: float) -> list[dict]:
    """Adam parameter groups of the reference recipe, in the order `[lr decay, lr no-decay, gcn decay, gcn
    no-decay]` (empty groups dropped): GCN parameters get `gcn_lr`, everything else that trains (image tower, meta-net,
    and the text tower if unfrozen) gets `lr`; weight decay applies only to parameters with more than one dimension
    (no decay on biases, norms, gamma, embeddings of shape (n,))."""
    groups = {key: [] for key in ("decay", "no_decay", "gcn_decay", "gcn_no_decay")}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = "gcn_" if ".gcn." in f".{name}" else ""
        groups[prefix + ("decay" if param.ndim > 1 else "no_decay")].append(param)
    spec = [("decay", lr, weight_decay), ("no_decay", lr, 0.0), ("gcn_decay", gcn_lr, weight_decay),
            ("gcn_no_decay", gcn_lr, 0.0)]
    return [
        {"params": groups[key], "lr": group_lr, "weight_decay": decay, "name": key}
        for key, group_lr, decay in spec
        if groups[key]
    ]


def one_cycle_scheduler(optimizer, steps_per_epoch: int, schedule_epochs: int, pct_start: float = 0.2):
    """OneCycleLR over `schedule_epochs * steps_per_epoch` steps, peaking at each group's `lr`."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, schedule_epochs * steps_per_epoch),
        pct_start=pct_start,
    )


def ema_decay(steps_per_epoch: int, keep_per_epoch: float = 0.82) -> float:
    """The per-step decay such that `steps_per_epoch` updates keep `keep_per_epoch` of the old average."""
    return keep_per_epoch ** (1.0 / max(1, steps_per_epoch))


class ModelEMA:
    """Exponential moving average of a model's weights, `ema = decay * ema + (1 - decay) * model`, for every
    floating-point parameter and buffer (batch-norm statistics included) as in the released code, except the tensors
    named in `constant`: by default the parameters that do not require grad (the frozen text tower) plus any names
    given, which cannot change during training, so averaging them would only cost time and add rounding. Integer
    buffers are copied. `module` is a full model (eval mode) that can be evaluated and saved;
    `state_dict`/`load_state_dict` make it checkpointable with accelerate."""

    def __init__(self, model: torch.nn.Module, decay: float, constant: set[str] | None = None):
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.constant = {name for name, p in model.named_parameters() if not p.requires_grad} | set(constant or ())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        model_state = model.state_dict()
        averaged, targets = [], []
        for name, ema_value in self.module.state_dict().items():
            if name in self.constant:
                continue
            value = model_state[name]
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                targets.append(value.to(device=ema_value.device, dtype=ema_value.dtype))
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, targets, alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.module.load_state_dict(state["module"])


def select_source(scores: dict[str, dict]) -> str:
    """"ema" or "regular": the model with the higher selection mAP; a tie goes to the EMA model, as in the released
    code (`if mAP_score_ema >= mAP_score_regular`)."""
    if "ema" in scores and scores["ema"]["mAP"] >= scores["regular"]["mAP"]:
        return "ema"
    return "regular"


@dataclass
class TrainingState:
    """Progress that must survive a restart (checkpointed with accelerate's `register_for_checkpointing`).

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
        for key, value in state.items():
            setattr(self, key, value)


# ---------------------------------------------------------------------------------------------------------------------
# Errors, the output-folder lock, atomic outputs
# ---------------------------------------------------------------------------------------------------------------------


class TrainingDivergedError(ValueError):
    """The loss or its gradients became NaN or infinite; training stopped before applying that step."""


class OutputDirInUseError(OSError):
    """Another training run holds the lock on the output folder."""


class ResumeMismatchError(ValueError):
    """A checkpoint was written by a run whose settings differ in something that changes the result."""


LOCK_NAME = ".hspnet-train.lock"
"""Lock file inside the output folder (and inside the staging folder of an `--overwrite_output_dir` run)."""
SETTINGS_NAME = "training_settings.json"
"""The run's settings, written into every checkpoint folder and compared on resume."""
BEST_MARKER_NAME = ".hspnet-best.json"
"""Which run, epoch and step the best model in the folder comes from (checked on resume)."""
STAGING_SUFFIX = ".partial"
"""`--overwrite_output_dir` trains into `<output_dir>.partial` and swaps it in only when the run is complete."""
REPLACED_SUFFIX = ".replaced"
RUN_ARTIFACTS = ("all_results.json", "train.log", "runs", "checkpoints", LOCK_NAME, BEST_MARKER_NAME)
"""What a training run writes beside the model files (never uploaded to the Hub)."""
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".py", ".bin")
"""Files `save_pretrained` writes (config, weights, remote code, image processor); plus the model card README.md."""
SECRET_OPTIONS = ("hub_token",)
RESUME_SAFE_OPTIONS = (
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint",          # where and how it writes
    "with_tracking", "report_to", "logging_steps",                          # logging
    "checkpointing_steps", "checkpoints_total_limit", "evaluate_before_training",  # what is saved / reported
    "push_to_hub", "hub_strategy", "hub_model_id", "hub_token", "hub_private_repo", "license",  # upload
    "num_workers",       # data loading processes: the order comes from the seeded sampler, the transform is fixed
    "dataset_root", "cache_dir",  # where the data lies: its content is compared instead (labels, images, positives)
    "trust_remote_code",
    "mixed_precision", "cpu",  # compared as what the run actually uses (precision: refused; device: a warning)
)
"""Options that may differ on `--resume_from_checkpoint`: they cannot change the trained weights or the selection.
Every other option (model, data, recipe, loss, seed, batch sizes, epochs, patience...) must be the same, and so must
the number of processes and the mixed precision in use, and the dataset's content."""
DATASET_OPTIONS = ("dataset", "dataset_options", "protocol", "max_train_samples", "max_eval_samples")


def _one_line(error: BaseException | str) -> str:
    from hspnet.cli_types import one_line

    return one_line(error)


def _user_errors() -> tuple[type[BaseException], ...]:
    from hspnet.cli_types import user_error_types

    return user_error_types()


def _make_folder(path: str, what: str) -> None:
    """Create `path` (and its parents); errors name the folder and the reason."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise OSError(f"{what} {path!r}: cannot create this folder ({error.strerror or _one_line(error)})") from None


class _writing:
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
            reason = error.strerror if isinstance(error, OSError) and error.strerror else _one_line(error)
            what = f"{self.what} " if self.what else ""
            named = OSError(f"cannot write {what}{self.path}: {reason} (is the disk full or the folder not writable?)")
            named.errno = getattr(error, "errno", None)
            named._hspnet_named = True
            raise named from error
        return False


def _atomic_json(path: str, value: Any) -> None:
    from hspnet.files import write_json

    with _writing(path):
        write_json(path, value)


def _atomic_text(path: str, text: str) -> None:
    from hspnet.files import write_text

    with _writing(path):
        write_text(path, text)


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

        _make_folder(self.folder, "output_dir")
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")  # never truncate a file someone else may hold
            except OSError as error:
                raise OSError(f"output_dir {self.folder!r}: cannot create the lock file {LOCK_NAME} "
                              f"({error.strerror or _one_line(error)})") from None
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
                              f"({error.strerror or _one_line(error)})") from None
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


def _holds_a_run(folder: str) -> bool:
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
        if os.path.isdir(path) or not _is_model_file(name):
            foreign.append(name + ("/" if os.path.isdir(path) else ""))
    return foreign


def _is_model_file(name: str) -> bool:
    return name == "README.md" or (name.endswith(MODEL_FILE_SUFFIXES) and not name.startswith("."))


def _is_temporary(name: str) -> bool:
    """Temporary names of this module (`.best-*` model folders), of :mod:`hspnet.hub` (`.hub-*` upload snapshots
    and downloads) and of `hspnet.files.atomic_write` (`.*.tmp`)."""
    return (name.startswith((".best-", hub.SNAPSHOT_PREFIX))
            or (name.startswith(".") and name.endswith(".tmp")))


def _remove_leftovers(folder: str) -> None:
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


def plan_folders(config: TrainingConfig) -> RunFolders:
    """Where the run writes. A fresh run into a folder holding an earlier run needs `--overwrite_output_dir`; that
    folder is then only replaced once the new run is complete (the new run works in `<output_dir>.partial`). A
    resume continues in place, or in `<output_dir>.partial` when resuming an interrupted overwrite run."""
    output_dir = os.path.normpath(config.output_dir)
    if os.path.basename(output_dir) in ("", ".", ".."):  # the staging folder must be a sibling, not a child
        output_dir = os.path.abspath(output_dir)
    staging = output_dir + STAGING_SUFFIX
    if hub.parse_hub_resume(config.resume_from_checkpoint) is not None:
        if _holds_a_run(output_dir):
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
        if (config.overwrite_output_dir and _checkpoint_dirs(staging)
                and (resume == "latest" or _inside(resume, staging))):
            return RunFolders(output_dir, staging)
        return RunFolders(output_dir, output_dir)
    if _holds_a_run(output_dir):
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


def _swap_in(folders: RunFolders, locks: list[OutputDirLock]) -> None:
    """Replace `output_dir` by the complete staging folder: rename the old one aside, rename the new one in, delete
    the old one. If the second rename fails, the old folder is put back and the error says where the new run is."""
    old = folders.output_dir + REPLACED_SUFFIX
    if os.path.exists(old):
        shutil.rmtree(old)
    try:
        os.rename(folders.output_dir, old)
    except OSError as error:
        raise OSError(f"could not move the previous run in {folders.output_dir} aside to {old} "
                      f"({error.strerror or _one_line(error)}); {folders.output_dir} is unchanged and the complete "
                      f"new run is in {folders.working}") from None
    try:
        os.rename(folders.working, folders.output_dir)
    except OSError as error:
        os.rename(old, folders.output_dir)
        raise OSError(f"could not move the new run from {folders.working} to {folders.output_dir} "
                      f"({error.strerror or _one_line(error)}); {folders.output_dir} is unchanged and the complete "
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
        with _writing(folder, "the model to"):
            model.save_pretrained(temporary, **({"save_function": save_function} if save_function else {}))
        names = sorted(os.listdir(temporary), key=lambda name: (name.endswith(".safetensors"), name))
        for name in names:
            with _writing(os.path.join(folder, name)):
                os.replace(os.path.join(temporary, name), os.path.join(folder, name))
        return names
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


class _RaisingFileHandler(logging.FileHandler):
    """A log file whose write errors stop the run with one line (logging would print a traceback and go on)."""

    def handleError(self, record):  # noqa: N802 - logging's name
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise OSError(f"cannot write the log file {self.baseFilename}: {error.strerror or _one_line(error)} "
                          "(is the disk full or the folder not writable?)") from error
        super().handleError(record)


def _setup_logging(accelerator, output_dir: str) -> None:
    import datasets
    import transformers

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    _close_log_handlers()
    logger.propagate = False
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if accelerator.is_main_process:
        _make_folder(output_dir, "output_dir")
        path = os.path.join(output_dir, "train.log")
        with _writing(path, "the log file"):
            handler = _RaisingFileHandler(path)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()


def _close_log_handlers() -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()


# ---------------------------------------------------------------------------------------------------------------------
# Several processes: a failure on one of them stops all of them
# ---------------------------------------------------------------------------------------------------------------------


def _share_failure(accelerator, error: BaseException | None) -> None:
    """Raise on every process if `error` happened on any of them (one collective call; nothing with one process).
    The failing process re-raises its own error; the others raise one naming it, so that no process waits forever
    for one that has stopped."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        report = None
        if error is not None:
            report = (accelerator.process_index, isinstance(error, _user_errors()), _one_line(error))
        reports = gather_object([report])
        if error is None:
            failed = next((r for r in reports if r is not None), None)
            if failed is not None:
                kind = ValueError if failed[1] else RuntimeError
                raise kind(f"process {failed[0]} stopped: {failed[2]}")
    if error is not None:
        raise error


def _on_main(accelerator, action):
    """`action()` on the main process only; if it fails, every process raises."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except Exception as caught:  # noqa: BLE001 - shared with the other processes, then re-raised
            error = caught
    _share_failure(accelerator, error)
    return result


def _on_all(accelerator, action):
    """`action()` on every process; if it fails on any, every process raises."""
    result, error = None, None
    try:
        result = action()
    except Exception as caught:  # noqa: BLE001 - shared with the other processes, then re-raised
        error = caught
    _share_failure(accelerator, error)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: settings, dataset fingerprint, integrity
# ---------------------------------------------------------------------------------------------------------------------


def _checkpoint_dirs(output_dir: str) -> list[tuple[int, str]]:
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


def resolve_checkpoint(output_dir: str, resume: str) -> str:
    """`resume` is "latest" (the newest folder under `output_dir/checkpoints`) or a checkpoint folder."""
    if resume == "latest":
        found = _checkpoint_dirs(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint under {output_dir}/checkpoints")
        return found[-1][1]
    if not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint: {resume!r} is not a folder")
    return resume


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_settings(config: TrainingConfig, accelerator=None, dataset: dict | None = None) -> dict:
    """What a checkpoint records about its run (`training_settings.json`): every option except secrets (the Hub
    token), the number of processes, the mixed precision and device in use, the dataset's fingerprint (see
    :func:`dataset_fingerprint`) and the library versions."""
    import accelerate
    import transformers

    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in SECRET_OPTIONS}
    settings = {
        "format": 1,
        "options": _json_value(options),
        "world_size": accelerator.num_processes if accelerator is not None else 1,
        "mixed_precision": str(accelerator.mixed_precision) if accelerator is not None else "no",
        "device": accelerator.device.type if accelerator is not None else "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__},
    }
    if dataset is not None:
        settings["dataset"] = dataset
    return settings


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def settings_differences(saved: dict, current: dict) -> tuple[list[str], list[str], list[str]]:
    """Compare the settings of a checkpoint with those of the run that resumes it. Returns `(dataset, other,
    notes)`: differences of the data options, other differences that change the result (both refuse the resume),
    and harmless differences worth a warning (device, library versions)."""
    saved_options, current_options = saved.get("options", {}), _json_value(current.get("options", {}))
    dataset, other, notes = [], [], []
    missing = object()
    for key in sorted(set(saved_options) | set(current_options)):
        if key in RESUME_SAFE_OPTIONS:
            continue
        before, after = saved_options.get(key, missing), current_options.get(key, missing)
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
        if saved.get(key) != current.get(key):
            other.append(f"{label} {_show(saved.get(key))} -> {_show(current.get(key))}")
    if saved.get("device") != current.get("device"):
        notes.append(f"device {saved.get('device')} -> {current.get('device')}")
    for name, version in (current.get("versions") or {}).items():
        before = (saved.get("versions") or {}).get(name)
        if before != version:
            notes.append(f"{name} {before} -> {version}")
    return dataset, other, notes


def dataset_fingerprint(hierarchy, splits: dict) -> dict:
    """What identifies the data a run trains and selects on: the label names, the hierarchy and, for each split
    used, its number of images and a hash of its image ids with their (observed) labels. Paths do not enter, so a
    moved copy of the same data matches."""
    import hashlib

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    fingerprint = {"labels": list(hierarchy.labels), "groups": list(hierarchy.groups),
                   "label_to_group": [int(g) for g in hierarchy.label_to_group], "splits": {}}
    for name, split in splits.items():
        columns = split.column_names
        parts = [list(split[column]) for column in ("image_id", "observed_labels", "labels") if column in columns]
        fingerprint["splits"][name] = {"num_images": len(split), "content": digest(parts)}
    return fingerprint


def dataset_differences(saved: dict | None, current: dict) -> list[str]:
    """Human-readable differences between two :func:`dataset_fingerprint` values."""
    if not saved:
        return []
    found = []
    if saved.get("labels") != current["labels"]:
        found.append(f"labels: {_label_mismatch(saved.get('labels') or [], current['labels'], 'checkpoint')}")
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


def _label_mismatch(old: list[str], new: list[str], old_name: str = "model", new_name: str = "dataset") -> str:
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
    path = os.path.join(checkpoint, SETTINGS_NAME)
    if not os.path.isfile(path):
        raise ResumeMismatchError(
            f"checkpoint {checkpoint} has no {SETTINGS_NAME} (not written by this version of scripts/train.py, or "
            "incomplete): its settings cannot be checked against this run's, so it is not resumed"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            settings = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: truncated or corrupt ({_one_line(error)})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("options"), dict):
        raise ValueError(f"{path}: truncated or corrupt (no 'options' mapping)")
    return settings


def check_resume_settings(checkpoint: str, saved: dict, current: dict, dataset: dict | None = None) -> list[str]:
    """Raise :class:`ResumeMismatchError` listing every difference that changes the result; return the notes."""
    data, other, notes = settings_differences(saved, current)
    if dataset is not None:
        data += dataset_differences(saved.get("dataset"), dataset)
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


def check_checkpoint_files(checkpoint: str, num_processes: int, num_objects: int) -> None:
    """Every file `accelerator.load_state` reads must be present and whole: the model (safetensors header and
    size), the optimizer, the registered objects and each process's random states (zip archives whose members pass
    their CRC check). accelerate itself would ignore a broken random-state file and resume with other random
    numbers; here the error names the file."""
    import zipfile

    names = (["model.safetensors", "optimizer.bin"] + [f"custom_checkpoint_{i}.pkl" for i in range(num_objects)]
             + [f"random_states_{i}.pkl" for i in range(num_processes)])
    for name in names:
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing from the checkpoint (incomplete or damaged); resume from "
                                    "another checkpoint")
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(path, "pt") as handle:
                    handle.keys()
            else:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} fails its CRC check")
        except Exception as error:  # noqa: BLE001 - any failure to read means a damaged file
            raise ValueError(f"{path}: truncated or corrupt checkpoint file ({_one_line(error)}); resume from "
                             "another checkpoint") from None


def _check_best_model(folder: str, state: TrainingState, checkpoint: str) -> None:
    """On resume: if the checkpoint says a best model was saved, `folder` must hold it (from this run, at that
    step or later: a run killed between saving the best model and its checkpoint re-derives the same model)."""
    if state.best_epoch < 0:
        return
    marker_path = os.path.join(folder, BEST_MARKER_NAME)
    try:
        with open(marker_path, encoding="utf-8") as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
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
# Model and loss
# ---------------------------------------------------------------------------------------------------------------------


def build_training_loss(config: TrainingConfig, num_labels: int, train_set):
    """The loss of this run, owned by the training loop (its state is run state, checkpointed with accelerate, never
    saved with the model). ROLE gets the number of training images and starts from the observed labels (their
    estimates at `init_positive_prob`), as in Cole et al."""
    from hspnet.data import to_multi_hot
    from hspnet.losses import LOSS_DEFAULTS, build_loss, check_loss_spec

    kwargs = dict(config.loss_kwargs or {})
    key = check_loss_spec(config.loss, kwargs)
    if "num_train_images" in LOSS_DEFAULTS[key]:
        kwargs["num_train_images"] = len(train_set)
    loss = build_loss(config.loss, num_labels, **kwargs)
    if hasattr(loss, "initialize_observed"):
        observed = torch.from_numpy(to_multi_hot(train_set["observed_labels"], num_labels))
        loss.initialize_observed(observed)
    return loss


def _looks_like_a_path(name: str) -> bool:
    """A local path rather than a Hub id ("org/name"): absolute, relative with ./ or ../, ~, or more than one '/'."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
            or os.path.splitext(name)[1] in (".pt", ".pth", ".bin", ".safetensors"))


def _check_source(name: str, option: str) -> None:
    if not os.path.exists(os.path.expanduser(name)) and _looks_like_a_path(name):
        raise FileNotFoundError(f"--{option} {name!r}: no such file or folder")


def build_model(config: TrainingConfig, hierarchy):
    """A new HSPNet on `config.clip_model` (or the tiny random CLIP), or an existing HSPNet to fine-tune. Errors
    name the option and the path or Hub id (a missing folder, a Hub id not available offline, other labels)."""
    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification

    # the model's config records the loss choice, not run state such as ROLE's number of training images
    loss_options = dict(loss=config.loss,
                        loss_kwargs={k: v for k, v in (config.loss_kwargs or {}).items() if k != "num_train_images"})
    if config.model_name_or_path:
        source = config.model_name_or_path
        _check_source(source, "model_name_or_path")
        try:
            model = HSPNetForImageClassification.from_pretrained(os.path.expanduser(source),
                                                                 trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as error:
            kind = OSError if isinstance(error, OSError) else ValueError
            raise kind(f"--model_name_or_path {source!r}: cannot load an HSPNet model ({_one_line(error)})") from None
        if model.config.label_names != list(hierarchy.labels):
            raise ValueError(
                f"--model_name_or_path {source!r} was trained on other labels than the dataset "
                f"{config.dataset!r}: {_label_mismatch(model.config.label_names, list(hierarchy.labels))}"
            )
        if (list(model.config.group_names) != list(hierarchy.groups)
                or list(model.config.label_to_group) != list(hierarchy.label_to_group)):
            logger.warning("%s has another label hierarchy (groups) than the dataset; the model's own is kept",
                           source)
        model.config.loss, model.config.loss_kwargs = loss_options["loss"], loss_options["loss_kwargs"]
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(os.path.expanduser(source))
        except (OSError, ValueError):
            pass
        return model
    relation = config.relation_file
    if relation is not None and not os.path.isfile(os.path.expanduser(relation)):
        raise FileNotFoundError(f"--relation_file {relation!r}: no such file")
    hierarchy_args = dict(labels=list(hierarchy.labels), groups=list(hierarchy.groups),
                          label_to_group=list(hierarchy.label_to_group),
                          relation=os.path.expanduser(relation) if relation else None)
    if config.clip_model == "tiny-random":
        from hspnet.tiny_clip import byte_level_clip_tokenizer, tiny_clip_image_processor, tiny_clip_model

        clip = tiny_clip_model(seed=config.seed)
        return HSPNetForImageClassification.from_clip(
            clip, tokenizer=byte_level_clip_tokenizer(), image_processor=tiny_clip_image_processor(),
            **hierarchy_args, **loss_options,
        )
    source = config.clip_model
    _check_source(source, "clip_model")
    try:
        return HSPNetForImageClassification.from_clip(os.path.expanduser(source), **hierarchy_args, **loss_options)
    except OSError as error:  # not a CLIP folder, a Hub id not available (offline?), an unreadable weight file
        raise OSError(f"--clip_model {source!r}: cannot load this CLIP ({_one_line(error)})") from None


def _scalar_config(config: TrainingConfig) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in
            dataclasses.asdict(config).items() if k not in SECRET_OPTIONS}


def _diverged(kind: str, value: float | None, step: int, epoch: int, batch: int, steps_per_epoch: int,
              process: int | None, state: TrainingState, folders: RunFolders, selection_split: str,
              last_checkpoint: str | None) -> TrainingDivergedError:
    what = (f"the loss is {value}" + (f" on process {process}" if process is not None else "")
            if kind == "loss" else "the gradients are not finite (NaN or inf)")
    if state.best_epoch >= 0:
        kept = (f"the best model so far (epoch {state.best_epoch}, {selection_split} mAP {state.best_metric:.2f}) is "
                f"kept in {folders.working}")
    else:
        kept = "no model was saved yet"
    if folders.staging:
        kept += f"; {folders.output_dir} is unchanged"
    checkpoint = f"; last checkpoint: {last_checkpoint}" if last_checkpoint else ""
    return TrainingDivergedError(
        f"training diverged at global step {step} (epoch {epoch}, batch {batch} of {steps_per_epoch}): {what}; "
        f"this step was not applied, {kept}{checkpoint}. Lower --lr / --gcn_lr (or use --mixed_precision no) and "
        "start a new run."
    )


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def train(config: TrainingConfig) -> dict:
    """Train, select, save and (optionally) upload an HSPNet model. Returns the results written to
    `output_dir/all_results.json`.

    Safety rules (see the README): the output folder is locked for the run (a second run on it fails at once); a
    folder holding an earlier run is only replaced by `--overwrite_output_dir` once the new run is complete; every
    output file appears whole; a resume must use the settings of the checkpoint's run; a NaN/inf loss stops the run
    before that step is applied. Errors are `OSError` / `ValueError` with a one-line message."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    config.validate()
    use_cpu = config.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to if config.with_tracking else None,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    locks: list[OutputDirLock] = []
    uploaders: list[HubUploader] = []
    interrupted = False
    try:
        return _train(config, accelerator, locks, uploaders)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        # uploads in flight finish first (after a failure too: the last pushed state is what a resume elsewhere
        # needs), unless the user interrupted; then the lock goes (a next run may clean the snapshots)
        for uploader in uploaders:
            uploader.close(wait=not interrupted)
        for lock in reversed(locks):
            lock.release()
        _close_log_handlers()


def _train(config: TrainingConfig, accelerator, locks: list[OutputDirLock], uploaders: list[HubUploader]) -> dict:
    import uuid

    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    # 1. the output folder: locked by the main process only (the others learn the outcome), before anything else
    _on_main(accelerator, lambda: locks.append(OutputDirLock(config.output_dir).acquire()))
    folders = _on_all(accelerator, lambda: plan_folders(config))
    working = folders.working

    def prepare_working_folder():
        if folders.staging and not config.resume_from_checkpoint and os.path.exists(working):
            shutil.rmtree(working)  # an interrupted earlier overwrite run: this one starts again
        if folders.staging:
            locks.append(OutputDirLock(working).acquire())
        _remove_leftovers(working)

    _on_main(accelerator, prepare_working_folder)
    accelerator.project_configuration.project_dir = working
    accelerator.project_configuration.logging_dir = working
    _on_all(accelerator, lambda: _setup_logging(accelerator, working))
    logger.info("processes: %d (distributed: %s), device: %s, mixed precision: %s", accelerator.num_processes,
                accelerator.distributed_type, accelerator.device, accelerator.mixed_precision)
    if folders.staging:
        logger.info("writing into %s; %s is replaced by it only when this run is complete", working,
                    folders.output_dir)

    # 2. a resume must continue the checkpoint's run: same settings (checked before any work), same data (below)
    checkpoint = saved_settings = None
    hub_folder = hub.parse_hub_resume(config.resume_from_checkpoint)
    if hub_folder is not None:
        def download():
            path, info = hub.download_checkpoint(config.hub_model_id, working, path_in_repo=hub_folder,
                                                 token=config.hub_token)
            if info.get("best_model"):
                _atomic_json(os.path.join(working, BEST_MARKER_NAME), info["best_model"])
            logger.info("downloaded %s/ of the Hub repository %s (step %s, epoch %s) into %s", hub_folder,
                        config.hub_model_id, info.get("step"), info.get("epoch"), path)

        _on_main(accelerator, download)
        checkpoint = resolve_checkpoint(working, "latest")
    elif config.resume_from_checkpoint:
        checkpoint = resolve_checkpoint(working, config.resume_from_checkpoint)
    if checkpoint:
        saved_settings = read_checkpoint_settings(checkpoint)
        check_resume_settings(checkpoint, saved_settings, run_settings(config, accelerator))
    set_seed(config.seed)

    with accelerator.main_process_first():
        datasets, hierarchy = load_datasets(config)
    selection_split = "validation" if config.protocol == "heldout" else "test"
    logger.info(
        "model selection on the %r split (%s protocol)%s", selection_split, config.protocol,
        "" if config.protocol == "heldout" else ": the test set is used for model selection, as in the authors' code",
    )
    num_labels = len(hierarchy.labels)
    train_set = add_index_column(datasets["train"])
    if config.max_train_samples:
        train_set = train_set.select(range(min(config.max_train_samples, len(train_set))))
    eval_sets = {split: datasets[split] for split in dict.fromkeys([selection_split, "test"])}
    if config.max_eval_samples:
        eval_sets = {k: v.select(range(min(config.max_eval_samples, len(v)))) for k, v in eval_sets.items()}
    fingerprint = dataset_fingerprint(hierarchy, {"train": train_set, **eval_sets})
    settings = run_settings(config, accelerator, fingerprint)
    if checkpoint:
        for note in check_resume_settings(checkpoint, saved_settings, settings, fingerprint):
            logger.warning("resuming %s with another %s: results may differ in the last digits", checkpoint, note)

    model = build_model(config, hierarchy)
    image_processor = model.image_processor
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    loss_module = build_training_loss(config, num_labels, train_set)
    if config.label_sample_size is not None and not loss_module.supports_label_sampling:
        raise ValueError(f"label_sample_size: the loss {config.loss!r} couples the labels and cannot be computed on a "
                         "sample of them; use a per-label loss (splc, an, an_ls, wan, em, hill, focal, asl)")
    if any(True for _ in loss_module.parameters()) and accelerator.num_processes > 1:
        raise ValueError(f"loss {config.loss!r} keeps per-image state; train it with a single process.")
    transform = make_transform(image_processor, num_labels)
    eval_batch = config.eval_batch_size or config.batch_size
    train_loader = DataLoader(train_set.with_transform(transform), batch_size=config.batch_size, shuffle=True,
                              collate_fn=collate, num_workers=config.num_workers)
    eval_loaders = {split: DataLoader(ds.with_transform(transform), batch_size=eval_batch, collate_fn=collate,
                                      num_workers=config.num_workers) for split, ds in eval_sets.items()}

    groups = parameter_groups(model, config.lr, config.gcn_lr, config.weight_decay)
    if any(True for _ in loss_module.parameters()):
        groups.append({"params": list(loss_module.parameters()), "lr": config.lr * config.loss_lr_scale,
                       "weight_decay": 0.0, "name": "loss"})
    optimizer = torch.optim.Adam(groups, lr=config.lr)
    trained_parameters = [p for group in groups for p in group["params"]]
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_loader,
                                                                   *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    unwrapped = accelerator.unwrap_model(model)
    forward = torch.compile(model) if config.torch_compile else model  # shares the parameters of `model`
    loss_module.to(accelerator.device)
    steps_per_epoch = len(train_loader)
    scheduler = one_cycle_scheduler(optimizer, steps_per_epoch, config.schedule_epochs, config.pct_start)
    ema = None
    if config.ema:
        constant = {name for name, _ in unwrapped.named_buffers() if name.rsplit(".", 1)[-1] in CONSTANT_BUFFERS}
        ema = ModelEMA(unwrapped, ema_decay(steps_per_epoch, config.ema_keep_per_epoch), constant=constant)
    state = TrainingState(run_id=uuid.uuid4().hex)
    registered = (scheduler, state, loss_module) + ((ema,) if ema else ())
    for obj in registered:
        accelerator.register_for_checkpointing(obj)
    if config.with_tracking:
        _on_all(accelerator, lambda: accelerator.init_trackers("runs", config=_scalar_config(config)))

    total_steps = config.epochs * steps_per_epoch
    if config.max_train_steps:
        total_steps = min(total_steps, config.max_train_steps)
    logger.info("train images: %d, steps per epoch: %d (per process batch %d x %d processes), total steps: %d, "
                "schedule: %d epochs", len(train_set), steps_per_epoch, config.batch_size, accelerator.num_processes,
                total_steps, config.schedule_epochs)

    results: dict[str, Any] = {"selection_split": selection_split, "protocol": config.protocol,
                               "world_size": accelerator.num_processes}
    if checkpoint:
        check_checkpoint_files(checkpoint, accelerator.num_processes, len(registered))
        try:
            accelerator.load_state(checkpoint)
        except Exception as error:  # noqa: BLE001 - a checkpoint that passed the file checks but does not load
            raise ValueError(f"checkpoint {checkpoint}: cannot be loaded ({_one_line(error)})") from None
        _check_best_model(working, state, checkpoint)
        logger.info("resumed from %s at step %d (epoch %d)", checkpoint, state.global_step,
                    state.global_step // steps_per_epoch)
        if state.test_before_training:
            results["test_before_training"] = state.test_before_training
    elif config.evaluate_before_training:
        before, _ = evaluate_model(model, eval_loaders["test"], accelerator, num_labels, "test (untrained)")
        results["test_before_training"] = state.test_before_training = before
        logger.info("before training: test mAP %.2f", before["mAP"])

    last_checkpoint = checkpoint

    # the Hub: only the main process uploads; in the background, from snapshots, never stopping training
    uploader = None
    if config.push_to_hub and accelerator.is_main_process:
        uploader = HubUploader(config.hub_model_id, folder=working, strategy=config.hub_strategy,
                               token=config.hub_token, private=config.hub_private_repo, log=logger,
                               keep_checkpoints=config.checkpoints_total_limit or None)
        uploaders.append(uploader)
        logger.info("pushing to the Hub repository %s (hub_strategy %s)", config.hub_model_id, config.hub_strategy)
    elif not config.push_to_hub and config.hub_strategy != "end":
        logger.warning("hub_strategy %s has no effect without --push_to_hub true", config.hub_strategy)
    recipe = _recipe(config, accelerator)
    base_model = None if config.model_name_or_path else config.clip_model

    def push_progress(checkpoint_folder: str | None) -> None:
        """Queue an upload of the current state (main process); a failure here is logged, never raised."""
        if uploader is None or config.hub_strategy == "end":
            return
        try:
            marker = None
            if state.best_epoch >= 0:
                with open(os.path.join(working, BEST_MARKER_NAME), encoding="utf-8") as handle:
                    marker = json.load(handle)
            names = [n for n in model_files(working) if n != "README.md"] if marker is not None else []
            card = model_card(unwrapped.config, dataset=config.dataset, metrics=None, recipe=recipe,
                              repo_id=config.hub_model_id, base_model=base_model, license=config.license,
                              progress={"epoch": state.epoch, "epochs": config.epochs, "step": state.global_step,
                                        "total_steps": total_steps, "best_metric": state.best_metric,
                                        "best_epoch": state.best_epoch, "selection_split": selection_split})
            uploader.save(step=state.global_step, epoch=state.epoch, model_folder=working, model_file_names=names,
                          card=card, checkpoint=checkpoint_folder,
                          checkpoint_info={"run_id": state.run_id, "best_model": marker})
        except Exception as error:  # noqa: BLE001 - the upload is a copy; training goes on without it
            logger.warning("could not queue the upload of step %d to the Hub: %s", state.global_step,
                           hub.redact(_one_line(error), config.hub_token))

    def save_training_state(name: str) -> None:
        # written under a temporary name, with the run's settings, and renamed when complete: a run killed while
        # saving never leaves a half-written checkpoint that `--resume_from_checkpoint latest` would pick
        nonlocal last_checkpoint
        folder = os.path.join(working, "checkpoints", name)

        def save():
            with _writing(folder + ".partial", "the checkpoint"):
                accelerator.save_state(folder + ".partial")

        _on_all(accelerator, save)

        def publish():
            _atomic_json(os.path.join(folder + ".partial", SETTINGS_NAME), settings)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(folder + ".partial", folder)
            if config.checkpoints_total_limit:
                for _, old in _checkpoint_dirs(working)[: -config.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
            push_progress(folder)

        _on_main(accelerator, publish)
        last_checkpoint = folder

    def save_best(source_model, epoch: int, source: str) -> None:
        def save():
            save_model_files(source_model, working, save_function=accelerator.save)
            _atomic_json(os.path.join(working, BEST_MARKER_NAME),
                         {"run_id": state.run_id, "epoch": epoch, "step": state.global_step, "source": source})

        _on_main(accelerator, save)

    check_gradients = accelerator.scaler is None  # fp16's scaler skips steps with inf gradients by design
    progress = tqdm(total=total_steps, initial=min(state.global_step, total_steps), desc="train",
                    disable=not accelerator.is_local_main_process)
    start = time.time()
    stop = state.global_step >= total_steps
    first_epoch = state.global_step // steps_per_epoch
    try:  # the bar is closed on errors too, so that the one-line error starts on its own line
        model.train()
        for epoch in range(first_epoch, config.epochs):
            if stop:
                break
            state.epoch = epoch
            train_loader.set_epoch(epoch)
            skip = state.global_step - epoch * steps_per_epoch
            loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
            running, count = 0.0, 0
            for batch in loader:
                targets, label_weights = batch["observed_labels"], None
                if config.label_sample_size is not None:  # the text side for a sample of the labels only
                    label_indices, label_weights = unwrapped.sample_labels(targets, config.label_sample_size)
                    logits = forward(pixel_values=batch["pixel_values"], score_indices=label_indices).logits
                    targets = targets if label_indices is None else targets[:, label_indices]
                else:
                    logits = forward(pixel_values=batch["pixel_values"]).logits
                loss = loss_module(logits, targets, epoch=epoch, indices=batch["index"], label_weights=label_weights)
                value = loss.detach().float().reshape(1)
                values = (accelerator.gather(value) if accelerator.num_processes > 1 else value).tolist()
                step = state.global_step + 1
                where = dict(step=step, epoch=epoch, batch=step - epoch * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch, state=state, folders=folders,
                             selection_split=selection_split, last_checkpoint=last_checkpoint)
                bad = next(((rank, v) for rank, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    raise _diverged("loss", bad[1], process=bad[0] if len(values) > 1 else None, **where)
                accelerator.backward(loss)
                if check_gradients:
                    grads = [p.grad for p in trained_parameters if p.grad is not None]
                    if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
                        raise _diverged("gradients", None, process=None, **where)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(unwrapped)
                state.global_step += 1
                progress.update(1)
                running += values[accelerator.process_index if len(values) > 1 else 0]
                count += 1
                if state.global_step % config.logging_steps == 0:
                    lrs = scheduler.get_last_lr()
                    progress.set_postfix(loss=f"{running / count:.3f}", lr=f"{lrs[0]:.2e}")
                    if config.with_tracking:
                        accelerator.log({"train/loss": running / count, "train/lr": lrs[0], "train/gcn_lr": lrs[-1],
                                         "train/epoch": epoch}, step=state.global_step)
                end_of_epoch = state.global_step % steps_per_epoch == 0
                if (str(config.checkpointing_steps).isdigit()
                        and state.global_step % int(config.checkpointing_steps) == 0 and not end_of_epoch):
                    save_training_state(f"step_{state.global_step}")
                if state.global_step >= total_steps:
                    stop = True
                    break
            if stop and state.global_step % steps_per_epoch != 0:
                logger.info("stopping mid-epoch at max_train_steps=%d", total_steps)

            candidates = [("regular", forward)] + ([("ema", ema.module)] if ema is not None else [])
            scores = {}
            for source, candidate in candidates:
                metrics, _ = evaluate_model(candidate, eval_loaders[selection_split], accelerator, num_labels,
                                            f"{selection_split} ({source})")
                scores[source] = metrics
                if config.with_tracking:
                    accelerator.log({f"{selection_split}_{source}/{k}": v for k, v in metrics.items()},
                                    step=state.global_step)
            source = select_source(scores)
            current = scores[source]["mAP"]
            state.history.append({"epoch": epoch, "step": state.global_step,
                                  **{f"{s}_mAP": m["mAP"] for s, m in scores.items()}})
            improved = current > state.best_metric
            if improved:
                save_best(unwrapped if source == "regular" else ema.module, epoch, source)
                state.best_metric, state.best_epoch, state.best_source = current, epoch, source
                state.best_metrics = scores[source]
                state.evaluations_without_improvement = 0
            else:
                state.evaluations_without_improvement += 1
            logger.info(
                "epoch %d: %s mAP regular %.2f%s -> best %.2f (epoch %d, %s)%s", epoch, selection_split,
                scores["regular"]["mAP"], f", EMA {scores['ema']['mAP']:.2f}" if "ema" in scores else "",
                state.best_metric, state.best_epoch, state.best_source, " [saved]" if improved else "",
            )
            if config.checkpointing_steps is not None:
                save_training_state(f"epoch_{epoch}-step_{state.global_step}")
            elif uploader is not None:  # no training states saved: every_save pushes after each evaluation
                push_progress(None)
            if config.patience is not None and state.evaluations_without_improvement >= config.patience:
                logger.info("early stopping: no improvement for %d evaluations", config.patience)
                break
    finally:
        progress.close()
    accelerator.wait_for_everyone()
    results["train_seconds"] = round(time.time() - start, 2)
    results["resumed_from"] = checkpoint
    results["best"] = {"epoch": state.best_epoch, "source": state.best_source,
                       f"{selection_split}_mAP": state.best_metric, f"{selection_split}_metrics": state.best_metrics}
    results["history"] = state.history

    # final report: the selected model on the test set
    from hspnet import HSPNetForImageClassification

    best = _on_all(accelerator, lambda: HSPNetForImageClassification.from_pretrained(working))
    best.to(accelerator.device)
    test_metrics, accumulator = evaluate_model(best, eval_loaders["test"], accelerator, num_labels, "test (best)")
    results["test"] = test_metrics
    if accumulator.num_samples:
        from hspnet.metrics import average_precision_ranked

        per_class = average_precision_ranked(accumulator.scores, accumulator.targets)
        results["test_per_class_AP"] = {name: round(100 * float(ap), 4) for name, ap in
                                        zip(hierarchy.labels, per_class)}
    logger.info("best model (%s, epoch %d): test mAP %.2f (selected on %s)", state.best_source, state.best_epoch,
                test_metrics["mAP"], selection_split)
    if "test_before_training" in results:
        logger.info("test mAP before training %.2f -> after %.2f", results["test_before_training"]["mAP"],
                    test_metrics["mAP"])
    if config.with_tracking:
        accelerator.log({f"test/{k}": v for k, v in test_metrics.items()}, step=state.global_step)

    def finish():
        if uploader is not None:
            results["hub"] = uploader.report()
        _write_outputs(config, working, best, test_metrics, results, accelerator)
        if uploader is not None:
            uploader.wait()  # the snapshots being uploaded lie in the working folder, which may be renamed now
        if folders.staging:
            _swap_in(folders, locks)
            logger.info("replaced %s by the new run", folders.output_dir)
        if uploader is not None:
            uploader.moved_to(folders.output_dir)
            try:
                uploader.final(folders.output_dir, model_files(folders.output_dir))
            finally:  # all_results.json says how the uploads went, also when the final one failed
                results["hub"] = uploader.report()
                _atomic_json(os.path.join(folders.output_dir, "all_results.json"), results)

    _on_main(accelerator, finish)
    # after the last collective call: trackers closed, and the process group destroyed (accelerate's end of a run; a
    # process that exits with its group alive may abort in gloo's teardown)
    accelerator.end_training()
    return results


def _recipe(config: TrainingConfig, accelerator) -> dict:
    """The recipe table of the model card."""
    recipe = {k: getattr(config, k) for k in ("clip_model", "dataset", "protocol", "epochs", "schedule_epochs",
                                               "batch_size", "lr", "gcn_lr", "weight_decay", "pct_start", "ema",
                                               "ema_keep_per_epoch", "loss", "loss_kwargs", "seed")}
    recipe["world_size"] = accelerator.num_processes
    recipe["mixed_precision"] = accelerator.mixed_precision
    return recipe


def _write_outputs(config: TrainingConfig, folder: str, best, test_metrics: dict, results: dict,
                   accelerator) -> None:
    """Model card and all_results.json (main process), each written atomically."""
    card = model_card(best.config, dataset=config.dataset, metrics=test_metrics, recipe=_recipe(config, accelerator),
                      repo_id=config.hub_model_id, base_model=None if config.model_name_or_path else config.clip_model,
                      license=config.license)
    _atomic_text(os.path.join(folder, "README.md"), card)
    _atomic_json(os.path.join(folder, "all_results.json"), results)


def model_files(folder: str) -> list[str]:
    """The files of a trained model folder that make up the model (what `save_pretrained` wrote: config, weights,
    remote code, image processor; the model card): every top-level file except the run's own (`all_results.json`,
    `train.log`, the lock, hidden files) and folders (`checkpoints/`, `runs/`, `eval_*`)."""
    return hub.model_files(folder, exclude=RUN_ARTIFACTS + hub.RUN_FILES)


def push_folder_to_hub(folder: str, repo_id: str | None, token: str | None = None, private: bool = False) -> str:
    """Upload the model files of a trained folder (config, safetensors, remote code, image processor, model card;
    never checkpoints or logs) to `repo_id` in one commit. Returns the repo id."""
    repo_id = hub.push_folder_to_hub(folder, repo_id, token=token, private=private, files=(
        model_files(folder) if os.path.isdir(folder) else None), commit_message="End of training")
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return repo_id


def main(argv: list[str] | None = None, prog: str | None = "train.py") -> int:
    """`scripts/train.py` / `hspnet train`: one-line errors and exit status 1 on bad input (see `run_cli`)."""
    from hspnet.cli_types import run_cli

    return run_cli(build_argument_parser(prog=prog), lambda args: train(config_from_arguments(args)), argv)
