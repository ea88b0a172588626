"""The options of a training run: :class:`TrainingConfig`, parsed the Hugging Face way.

`TrainingConfig` is a dataclass whose fields carry their help in `metadata={"help": ...}`;
:func:`build_argument_parser` is a command line over it (one `--flag` per field in either spelling, `--help` lists
them all with their defaults, as transformers' `HfArgumentParser` does, without importing transformers) plus
`--config FILE.yaml`. :func:`parse_training_args` reads the YAML file first and makes its values the parser's
defaults, so the command line wins:

    defaults of TrainingConfig  <  YAML file (--config)  <  command-line flags

Validation happens once, when a `TrainingConfig` is built (`__post_init__`, as `transformers.TrainingArguments`):
a bad value raises a `ValueError` naming the field. YAML files are checked before that: malformed YAML, a key given
twice, an unknown key (with the closest valid name) or a value of the wrong type raise a `ValueError` naming the
file, the line or the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from hspnet.utils.command_line import CommandParser, add_dataclass_options, parse_bool

PROTOCOLS = ("heldout", "authors")
SECRET_OPTIONS = ("hub_token",)
"""Options never logged or written to a file (`training_args.json`, TensorBoard)."""


def _help(text: str) -> dict:
    return {"help": " ".join(text.split())}


@dataclass
class TrainingConfig:
    """Every option of `hspnet train` / `scripts/train.py`. YAML keys and command-line flags have the same names."""

    # model
    clip_model: str = field(default="openai/clip-vit-base-patch16", metadata=_help(
        """CLIP checkpoint (Hub id or folder) to build a new HSPNet on; "tiny-random" builds a tiny random CLIP."""))
    tokenizer_name: str | None = field(default=None, metadata=_help(
        """CLIP tokenizer (Hub id or folder) for the prompts; default: clip_model's own. An OpenAI weights file
        (clip_model: RN50.pt) holds none: then openai/clip-vit-base-patch32's, which every OpenAI CLIP uses."""))
    model_name_or_path: str | None = field(default=None, metadata=_help(
        "An existing HSPNet folder or Hub id to fine-tune instead of building one from clip_model."))
    relation_file: str | None = field(default=None, metadata=_help(
        "Raw (C+G)x(C+G) relation .npy (e.g. the authors'); default: computed from the CLIP text tower."))
    trust_remote_code: bool = field(default=False, metadata=_help(
        "Allow the code of a --model_name_or_path from the Hub to run (transformers' trust_remote_code)."))

    # data
    dataset: str = field(default="demo", metadata=_help(
        """"demo", "coco", "voc", "nuswide", "cub", "folder", or a folder written by `hspnet prepare`; with
        streaming, a folder written by `hspnet prepare --shards N` or its Hub dataset id."""))
    dataset_root: str | None = field(default=None, metadata=_help(
        "Where the raw dataset lies (images and annotations), for coco, voc, nuswide, cub and folder."))
    dataset_options: dict = field(default_factory=dict, metadata=_help(
        """Extra keyword arguments of the dataset loader as a JSON object (e.g. {"observed_labels_file": ...},
        {"num_train": 60} for the demo)."""))
    cache_dir: str | None = field(default=None, metadata=_help(
        "Where the prepared dataset is cached (default: the datasets library's cache)."))
    protocol: str = field(default="heldout", metadata=_help(
        """"heldout": select the model on the validation split held out from train (20 percent, seeded);
        "authors": train on all training images and select on the test set, as the released code does."""))
    max_train_samples: int | None = field(default=None, metadata=_help(
        "Train on the first N training images only (quick runs)."))
    max_eval_samples: int | None = field(default=None, metadata=_help(
        "Evaluate on the first N images of each evaluation split only (quick runs)."))
    streaming: bool = field(default=False, metadata=_help(
        """Stream the training split instead of reading it whole (datasets' IterableDataset): dataset is a folder
        written by `hspnet prepare --shards N` or its Hub dataset id. Each process reads whole shards of its own (N
        must be a multiple of the number of processes), shuffled with a buffer of shuffle_buffer images; a resume
        mid-epoch is exact. Evaluation splits are read whole. See docs/large-datasets.md."""))
    shuffle_buffer: int = field(default=1000, metadata=_help(
        """With streaming: the shuffle buffer in images (IterableDataset.shuffle's buffer_size); the shards' order is
        shuffled too, every epoch."""))

    # recipe
    epochs: int = field(default=60, metadata=_help("Epochs to train."))
    schedule_epochs: int = field(default=80, metadata=_help(
        "OneCycleLR length in epochs (the released configs schedule 80 epochs and stop at 60)."))
    max_train_steps: int | None = field(default=None, metadata=_help(
        "Stop after this many optimizer steps (for quick runs and tests); the schedule is unchanged."))
    batch_size: int = field(default=128, metadata=_help("Per-process batch size."))
    eval_batch_size: int | None = field(default=None, metadata=_help(
        "Per-process batch size of evaluation (default: batch_size)."))
    lr: float = field(default=1e-4, metadata=_help("Peak learning rate of the image tower and the meta-net."))
    gcn_lr: float = field(default=5e-4, metadata=_help("Peak learning rate of the GCN."))
    weight_decay: float = field(default=1e-4, metadata=_help(
        "Adam weight decay, on weights with more than one dimension only."))
    pct_start: float = field(default=0.2, metadata=_help("Fraction of the schedule spent warming up (OneCycleLR)."))
    ema: bool = field(default=True, metadata=_help(
        "Keep an exponential moving average of the weights; each evaluation selects the better of the two models."))
    ema_keep_per_epoch: float = field(default=0.82, metadata=_help(
        "EMA decay, as the fraction of the old average one epoch of updates keeps."))
    loss: str = field(default="splc", metadata=_help(
        "Training loss (splc, an, an_ls, wan, epr, role, em, ll_r, hill, focal, asl); the model computes it."))
    loss_kwargs: dict = field(default_factory=dict, metadata=_help(
        """Parameters of the loss as a JSON object, overriding its defaults (e.g. {"change_epoch": 2})."""))
    use_verified_negatives: bool = field(default=False, metadata=_help(
        """Train on the training split's verified negatives (its negative_labels column: Open Images) as known
        negatives, targets -1: the per-label losses give them the plain negative log-likelihood, weight 1; epr, role
        and ll_r refuse them. Off by default (the paper's setting uses the single positives only)."""))
    loss_lr_scale: float = field(default=10.0, metadata=_help(
        "Learning rate of a loss's own parameters (ROLE's label estimates) as a multiple of lr (Cole et al.: 10)."))
    patience: int | None = field(default=None, metadata=_help(
        "Stop after this many evaluations without improvement of the selection mAP (None: never)."))
    seed: int = field(default=0, metadata=_help("Seed of the weights' initialisation, the data order and sampling."))
    mixed_precision: str | None = field(default=None, metadata=_help(
        """"no", "fp16" or "bf16"; default: what `accelerate launch` / `accelerate config` says."""))
    num_workers: int = field(default=0, metadata=_help("Data loading processes."))
    torch_num_threads: int | None = field(default=None, metadata=_help(
        """torch's threads per process when training on the CPU (default 1, whatever OMP_NUM_THREADS says: `hspnet
        train` and `accelerate launch` then train the same model). More threads are faster; float sums, and so the
        trained weights, then depend on the number (recorded in training_args.json)."""))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute the image tower's activations in the backward pass (less memory, slower)."))
    label_sample_size: int | None = field(default=None, metadata=_help(
        """Large label sets, an approximation (off by default): each step runs the text side for the batch's observed
        positives plus this many of the other labels, drawn uniformly, with the loss reweighted to an unbiased
        estimate (see HSPNetConfig.label_sample_size); evaluation always uses every label."""))
    release_memory_between_chunks: bool = field(default=True, metadata=_help(
        """On the CPU, give the heap memory freed by each recomputed chunk of label prompts back to the system
        (glibc's malloc_trim; see hspnet.training.memory): flat memory at large label counts. Results are unchanged."""))
    torch_compile: bool = field(default=False, metadata=_help(
        """Run the training and model-selection forward passes through torch.compile(model) (one graph break per
        forward, for the text-side cache; results equal eager within float rounding; the first steps compile)."""))
    torch_compile_backend: str | None = field(default=None, metadata=_help(
        """The torch.compile backend (default: torch's, inductor); setting it implies torch_compile, as in
        transformers' TrainingArguments. E.g. aot_eager: traces and checks the graphs without generating kernels."""))
    torch_compile_mode: str | None = field(default=None, metadata=_help(
        """The torch.compile mode (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs); setting it
        implies torch_compile."""))

    # outputs
    output_dir: str = field(default="outputs/hspnet", metadata=_help(
        "Where the model, its training_args.json, all_results.json, train.log, runs/ and checkpoints/ go."))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        """Replace an output_dir that holds an earlier run. The new run works in <output_dir>/.hspnet-next-run and
        replaces the earlier run's files only once complete (files no run writes, e.g. eval_* reports, are kept);
        if it fails, output_dir is unchanged."""))
    checkpointing_steps: str | None = field(default="epoch", metadata=_help(
        """"epoch", an integer number of steps, or None to save no training state."""))
    checkpoints_total_limit: int | None = field(default=2, metadata=_help(
        "Keep at most this many training states in checkpoints/ (None: all)."))
    resume_from_checkpoint: str | None = field(default=None, metadata=_help(
        """"latest", a checkpoint folder, or "hub": the training state last pushed to hub_model_id (its
        last-checkpoint/, with the best model of that moment; "hub:checkpoints/NAME" for another pushed state),
        downloaded into an --output_dir that holds no run. Every option that changes the result must equal the
        checkpoint's run's (only output, logging, checkpointing, Hub and data-location options may change); the
        data must be the same."""))
    with_tracking: bool = field(default=True, metadata=_help("Log losses and metrics to report_to."))
    report_to: str = field(default="tensorboard", metadata=_help(
        "Tracker of accelerate (tensorboard, wandb, ...), logging into output_dir/runs."))
    logging_steps: int = field(default=10, metadata=_help("Log the running loss every N steps."))
    evaluate_before_training: bool = field(default=True, metadata=_help(
        "Evaluate the untrained model on the test set first (reported in all_results.json)."))
    push_to_hub: bool = field(default=False, metadata=_help("Upload the model to hub_model_id (when: hub_strategy)."))
    hub_strategy: str = field(default="end", metadata=_help(
        """As transformers' Trainer: "end" (the final model and card, once), "every_save" (also the best model so
        far and an "in progress" card at each saved training state), "checkpoint" (also the newest training state
        in last-checkpoint/, enough for --resume_from_checkpoint hub), "all_checkpoints" (also every state in
        checkpoints/NAME/). Uploads run in the background; a failed one is logged, retried at the next save and
        reported in all_results.json; only a failed final upload fails the run."""))
    hub_model_id: str | None = field(default=None, metadata=_help(
        "Hub repository to push to, e.g. your-name/hspnet-coco."))
    hub_token: str | None = field(default=None, metadata=_help(
        "Hub token (default: `hf auth login` / HF_TOKEN); never logged or saved."))
    hub_private_repo: bool = field(default=False, metadata=_help("Create the Hub repository as private."))
    license: str | None = field(default=None, metadata=_help(
        """License written into the model card metadata (e.g. "apache-2.0"); none by default."""))
    cpu: bool = field(default=False, metadata=_help("Train on the CPU even when a GPU is available."))

    def __post_init__(self):
        self.validate()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Every option except the secrets (the Hub token): what `training_args.json` records."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in SECRET_OPTIONS}

    def validate(self) -> None:
        """Raise a `ValueError` naming the option for a bad value or a bad combination of values."""
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # as transformers' TrainingArguments
            import torch._dynamo

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.torch_compile_backend is not None and self.torch_compile_backend not in backends:
                raise ValueError(f"torch_compile_backend must be one of {sorted(backends)}, got "
                                 f"{self.torch_compile_backend!r}")
            modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
            if self.torch_compile_mode is not None and self.torch_compile_mode not in modes:
                raise ValueError(f"torch_compile_mode must be one of {modes}, got {self.torch_compile_mode!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.checkpointing_steps not in (None, "epoch") and (
                not str(self.checkpointing_steps).isdigit() or int(self.checkpointing_steps) < 1):
            raise ValueError("checkpointing_steps must be 'epoch', a number of steps >= 1 or null (no training state "
                             f"saved), got {self.checkpointing_steps!r}")
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"torch_num_threads must be >= 1 (or null: 1 on the CPU), got {self.torch_num_threads}")
        for name in ("epochs", "schedule_epochs", "batch_size", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if self.streaming and self.max_train_samples:
            raise ValueError("max_train_samples does not apply to a streamed run (streaming true); prepare a smaller "
                             "dataset, or train without streaming")
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"max_train_steps must be >= 1 (or null: no limit but the epochs), got "
                             f"{self.max_train_steps}")
        if self.schedule_epochs < self.epochs:
            raise ValueError(f"schedule_epochs ({self.schedule_epochs}) must be >= epochs ({self.epochs})")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. your-name/hspnet-coco)")
        from hspnet.hub.transfer import HUB_STRATEGIES, parse_hub_resume
        from hspnet.models.hspnet.configuration_hspnet import check_loss_choice

        if self.hub_strategy not in HUB_STRATEGIES:
            raise ValueError(f"hub_strategy must be one of {HUB_STRATEGIES}, got {self.hub_strategy!r}")
        if (self.push_to_hub and self.hub_strategy in ("checkpoint", "all_checkpoints")
                and self.checkpointing_steps is None):
            raise ValueError(f"hub_strategy {self.hub_strategy!r} pushes training states, but checkpointing_steps is "
                             "null (no state is saved); set checkpointing_steps or use hub_strategy every_save")
        if parse_hub_resume(self.resume_from_checkpoint) is not None and not self.hub_model_id:
            raise ValueError(f"--resume_from_checkpoint {self.resume_from_checkpoint} needs --hub_model_id (the "
                             "repository the run pushed its checkpoints to)")
        # the loss choice, with the model config's own check (ROLE's number of training images is set by the run)
        loss = check_loss_choice(self.loss, self.loss_kwargs or {}, self.label_sample_size)
        from hspnet.models.hspnet.losses import LOSSES

        if self.use_verified_negatives and not LOSSES[loss].supports_verified_negatives:
            raise ValueError(f"use_verified_negatives is on but the loss {self.loss!r} does not take verified "
                             "negatives (its terms couple the labels); use a per-label loss (splc, an, an_ls, wan, em, "
                             "hill, focal, asl) or turn the option off")


# ---------------------------------------------------------------------------------------------------------------------
# Value types, shared by the flags and the YAML values
# ---------------------------------------------------------------------------------------------------------------------


def _json_mapping(value: str) -> dict:
    from hspnet.utils.validation import json_object

    return json_object(value)


_KINDS: dict[type, tuple[Callable[[str], Any], str]] = {
    dict: (_json_mapping, "JSON"), bool: (parse_bool, "BOOL"), int: (int, "INT"), float: (float, "FLOAT"),
    str: (str, "STR"),
}


def option_type(name: str) -> tuple[Callable[[str], Any], str, bool]:
    """`(parse, metavar, optional)` of the `TrainingConfig` field `name`: `parse` turns a command-line string into
    the field's type (a JSON object for a dict; "none", "null" or "" is None for an optional field)."""
    hint = typing.get_type_hints(TrainingConfig)[name]
    arguments = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    optional = type(None) in arguments
    base = next(a for a in arguments if a is not type(None))
    kind, metavar = _KINDS[typing.get_origin(base) or base]
    if not optional:
        return kind, metavar, False

    def parse(value: str):
        return None if str(value).strip().lower() in ("none", "null", "") else kind(value)

    return parse, metavar, True


# ---------------------------------------------------------------------------------------------------------------------
# The command line and the YAML file
# ---------------------------------------------------------------------------------------------------------------------


def build_argument_parser(prog: str | None = None) -> CommandParser:
    """The command line of `TrainingConfig` (a :class:`~hspnet.utils.command_line.CommandParser`: one option per field,
    ``--field_name`` or ``--field-name``, its help and default; booleans ``--ema``, ``--ema false``, ``--no_ema``) plus
    ``--config FILE.yaml``. Flag values are typed like the YAML values: dicts as JSON objects, "None"/"null" for an
    optional value. Builds without importing torch or transformers (``hspnet train --help`` is instant)."""
    parser = CommandParser(
        prog=prog,
        description="Train HSPNet with accelerate (single or multi process). Options come from --config YAML, then "
        "command-line flags override them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="YAML file with any of the options below")
    add_dataclass_options(parser, TrainingConfig, option_type)
    return parser


def parse_training_args(argv: list[str] | None = None, parser: CommandParser | None = None) -> TrainingConfig:
    """Defaults < YAML file (`--config`) < command-line flags. The YAML values become the parser's defaults, then
    the command line is parsed into a (validated) `TrainingConfig`."""
    parser = parser or build_argument_parser()
    return training_config(parse_training_namespace(parser, argv))


def parse_training_namespace(parser: CommandParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed with the YAML file's values (`--config`) as defaults, not yet validated."""
    config_file = CommandParser(add_help=False)
    config_file.add_argument("--config", default=None)
    known, _ = config_file.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_yaml_options(known.config))
    return parser.parse_args(argv)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The (validated) `TrainingConfig` of a parsed command line (the parser's other options, `--config` and
    `--debug`, left out)."""
    names = set(TrainingConfig.field_names())
    return TrainingConfig(**{name: value for name, value in vars(args).items() if name in names})


def load_config(argv: list[str] | None = None) -> TrainingConfig:
    """The `TrainingConfig` of a command line (see :func:`parse_training_args`)."""
    return parse_training_args(argv)


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
        hints = [f"{key!r} -> {close[0]!r}" for key in unknown if (close := difflib.get_close_matches(key, names, 1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(f"{path}: unknown option(s) {unknown}{hint}; valid options: {names}")
    return {key: _coerce(value, key, f"{path}: {key}") for key, value in loaded.items()}


def _coerce(value: Any, name: str, where: str) -> Any:
    """A YAML value converted to the type of the field `name` (strings parsed like flags); a mismatch raises naming
    `where`."""
    kind, metavar, optional = option_type(name)
    if value is None or isinstance(value, str):
        if value is None and not optional:
            raise ValueError(f"{where}: null is not allowed")
        try:
            return kind(value) if value is not None else None
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            raise ValueError(f"{where}: {value!r} is not a valid {metavar} ({error})") from None
    expected = {"JSON": dict, "BOOL": bool, "INT": int, "FLOAT": (int, float), "STR": str}[metavar]
    if not isinstance(value, expected) or (metavar in ("INT", "FLOAT") and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {metavar}, got {value!r}")
    return float(value) if metavar == "FLOAT" else value
