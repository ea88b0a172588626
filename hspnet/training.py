"""Training HSPNet with accelerate: the recipe of the released code, as importable, tested functions.

`scripts/train.py` is a thin command line over :func:`train`. The pieces:

- :class:`TrainingConfig`: every option, loadable from a YAML file (``configs/*.yaml``) with command-line overrides;
- :func:`parameter_groups`: Adam groups (image tower + meta-net at ``lr``, GCN at ``gcn_lr``; weight decay only on
  weights with more than one dimension);
- :func:`one_cycle_scheduler`: OneCycleLR with ``pct_start`` and a schedule length separate from the epochs trained;
- :class:`ModelEMA`: exponential moving average of all weights, decay chosen so that one epoch keeps
  ``ema_keep_per_epoch`` (0.82) of the old average;
- :func:`evaluate_model`: streaming, distributed-safe evaluation with every metric of :mod:`hspnet.metrics`;
- :func:`train`: the loop (mixed precision, checkpointing, exact mid-epoch resume, model selection on the held-out
  validation split or, under the authors' protocol, on the test set, early stopping, TensorBoard, Hub upload).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger("hspnet.train")

PROTOCOLS = ("heldout", "authors")
# HSPNetModel buffers fixed at construction (prompts, relation): never averaged by the EMA
CONSTANT_BUFFERS = ("relation", "group_prompt_embeds", "label_prompt_embeds", "group_eos_positions",
                    "label_eos_positions", "label_to_group")
MODEL_FILES = ("config.json", "model.safetensors", "configuration_hspnet.py", "modeling_hspnet.py", "losses.py",
               "preprocessor_config.json", "README.md")


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

    # outputs
    output_dir: str = "outputs/hspnet"
    overwrite_output_dir: bool = False
    checkpointing_steps: str | None = "epoch"
    """"epoch", an integer number of steps, or None to save no training state."""
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    """"latest" or a checkpoint folder."""
    with_tracking: bool = True
    report_to: str = "tensorboard"
    logging_steps: int = 10
    evaluate_before_training: bool = True
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = None
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


def build_argument_parser() -> argparse.ArgumentParser:
    """An argparse parser with one `--flag` per `TrainingConfig` field plus `--config FILE.yaml`."""
    parser = argparse.ArgumentParser(
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
    args = build_argument_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        path = args.config
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist")
        with open(path) as handle:
            try:
                loaded = yaml.safe_load(handle) or {}
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of option: value, got {type(loaded).__name__}")
        unknown = sorted(set(loaded) - set(TrainingConfig.field_names()))
        if unknown:
            raise ValueError(f"{path}: unknown option(s) {unknown}; valid options: {TrainingConfig.field_names()}")
        types = {f.name: f.type for f in dataclasses.fields(TrainingConfig)}
        for key, value in loaded.items():
            values[key] = _coerce(value, types[key], f"{path}: {key}")
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    config = TrainingConfig(**values)
    config.validate()
    return config


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
    """Progress that must survive a restart (checkpointed with accelerate's `register_for_checkpointing`)."""

    global_step: int = 0
    epoch: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    best_source: str = ""
    best_metrics: dict = field(default_factory=dict)
    evaluations_without_improvement: int = 0
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_datasets(config: TrainingConfig):
    """The prepared `DatasetDict` (train / validation / test) and its label hierarchy."""
    from hspnet.data import get_hierarchy, open_dataset

    options = dict(config.dataset_options or {})
    if config.protocol == "authors" and not os.path.isdir(config.dataset):
        options.setdefault("validation_fraction", 0.0)  # the authors train on every training image
    datasets = open_dataset(config.dataset, config.dataset_root, options, config.cache_dir)
    for split in ("train", "test"):
        if split not in datasets:
            raise ValueError(f"dataset {config.dataset!r} has no {split!r} split (splits: {list(datasets)})")
    if config.protocol == "heldout" and "validation" not in datasets:
        raise ValueError(
            f"dataset {config.dataset!r} has no 'validation' split for model selection; prepare it with a validation "
            "fraction or train with protocol: authors (selection on the test set)."
        )
    return datasets, get_hierarchy(datasets)


def add_index_column(dataset):
    """Add `index` (the row number), needed by ROLE and for traceability."""
    if "index" in dataset.column_names:
        return dataset
    return dataset.add_column("index", list(range(len(dataset))))


def make_transform(image_processor, num_labels: int, permutation: list[int] | None = None):
    """A `datasets` `with_transform` function: images -> `pixel_values`, label lists (`labels`, `observed_labels`)
    -> multi-hot targets, in the model's label order when `permutation[dataset_index] = model_index` is given."""
    from hspnet.data import to_multi_hot

    def multi_hot(rows) -> torch.Tensor:
        if permutation is not None:
            rows = [[permutation[i] for i in row] for row in rows]
        return torch.from_numpy(to_multi_hot(rows, num_labels))

    def transform(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        out = {"pixel_values": image_processor(images=images, return_tensors="pt")["pixel_values"]}
        out["labels"] = multi_hot(batch["labels"])
        if "observed_labels" in batch:
            out["observed_labels"] = multi_hot(batch["observed_labels"])
        if "index" in batch:
            out["index"] = torch.as_tensor(batch["index"], dtype=torch.long)
        return out

    return transform


def collate(examples: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in examples[0]}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(model, dataloader, accelerator, num_labels: int, description: str = "eval",
                   threshold: float = 0.5, k: int = 3) -> tuple[dict, Any]:
    """Every metric of :func:`hspnet.metrics.compute_all_metrics` over a (prepared) dataloader, gathered across
    processes without duplicated samples. Returns `(metrics, accumulator)`; the accumulator holds the scores."""
    from tqdm.auto import tqdm

    from hspnet.metrics import MultiLabelMetricAccumulator

    was_training = model.training
    model.eval()
    try:
        capacity = len(dataloader.dataset)  # gather_for_metrics yields exactly this many samples on every process
    except (AttributeError, TypeError):
        capacity = None
    accumulator = MultiLabelMetricAccumulator(num_labels, from_logits=True, threshold=threshold, k=k,
                                              capacity=capacity)
    for batch in tqdm(dataloader, desc=description, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits
        accumulator.add_from_accelerator(accelerator, logits.float(), batch["labels"])
    model.train(was_training)
    return accumulator.compute(), accumulator


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def model_card(config, *, dataset: str, metrics: dict | None, recipe: dict, repo_id: str | None = None,
               base_model: str | None = None, license: str | None = None) -> str:
    """README.md for a trained model: YAML metadata (library, tags, datasets, a model-index with the metrics), the
    hierarchy, the recipe and usage snippets."""
    import yaml

    name = repo_id or "path/to/this/folder"
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "image-classification",
        "tags": ["hspnet", "clip", "multi-label-classification", "single-positive-multi-label", "image-classification"],
    }
    if license:
        metadata["license"] = license
    dataset_name = os.path.basename(os.path.normpath(dataset)) if dataset else ""
    if dataset and not os.path.isdir(dataset):  # a dataset name or Hub id, not a local folder
        metadata["datasets"] = [dataset]
    if base_model:
        metadata["base_model"] = base_model
    if metrics:
        metadata["metrics"] = ["mAP"]
        metadata["model-index"] = [
            {
                "name": name.split("/")[-1],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Multi-label image classification"},
                        "dataset": {"type": dataset_name, "name": dataset_name},
                        "metrics": [
                            {"type": key, "value": round(float(value), 4), "name": key}
                            for key, value in metrics.items()
                            if key in ("mAP", "mAP_tie_aware", "CF1", "OF1", "mean_class_F1")
                        ],
                    }
                ],
            }
        ]
    groups: dict[str, list[str]] = {g: [] for g in config.group_names}
    for index, group in enumerate(config.label_to_group):
        groups[config.group_names[group]].append(config.id2label[index])
    hierarchy = "\n".join(f"- **{group}**: {', '.join(labels)}" for group, labels in groups.items())
    recipe_lines = "\n".join(f"| {key} | {value} |" for key, value in recipe.items())
    results = ""
    if metrics:
        results = "\n## Results\n\n| metric | value |\n|---|---:|\n" + "\n".join(
            f"| {key} | {float(value):.2f} |" for key, value in metrics.items() if key != "num_samples"
        ) + "\n"
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False).strip()}
---

# HSPNet multi-label classifier ({config.num_labels} labels, {config.num_groups} groups)

HSPNet (Wang et al., *Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single Positive
Labels*, ACM MM 2023) trained with the `hspnet` library on `{dataset}` from single positive labels.
Base CLIP: `{base_model or 'see config'}`.

## Usage

```python
import hspnet  # or pass trust_remote_code=True below
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

image = Image.open("image.jpg")
processor = AutoImageProcessor.from_pretrained("{name}")
model = AutoModelForImageClassification.from_pretrained("{name}", trust_remote_code=True)
probabilities = model(**processor(images=image, return_tensors="pt")).logits.sigmoid()  # (1, {config.num_labels})

base = AutoModel.from_pretrained("{name}", trust_remote_code=True)  # logits, image and label embeddings
outputs = base(**processor(images=image, return_tensors="pt"))

classifier = pipeline("image-classification", model="{name}", trust_remote_code=True)
classifier("image.jpg", top_k={config.num_labels})  # a sigmoid score for every label
```
{results}
## Label hierarchy

{hierarchy}

## Training recipe

| option | value |
|---|---|
{recipe_lines}
"""


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def _setup_logging(accelerator, output_dir: str) -> None:
    import datasets
    import transformers

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)
    logger.handlers.clear()
    logger.propagate = False
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        handler = logging.FileHandler(os.path.join(output_dir, "train.log"))
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        datasets.utils.logging.set_verbosity_error()


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


def build_model(config: TrainingConfig, hierarchy):
    """A new HSPNet on `config.clip_model` (or the tiny random CLIP), or an existing HSPNet to fine-tune."""
    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification

    # the model's config records the loss choice, not run state such as ROLE's number of training images
    loss_options = dict(loss=config.loss,
                        loss_kwargs={k: v for k, v in (config.loss_kwargs or {}).items() if k != "num_train_images"})
    if config.model_name_or_path:
        model = HSPNetForImageClassification.from_pretrained(config.model_name_or_path)
        if model.config.label_names != list(hierarchy.labels):
            raise ValueError(
                f"{config.model_name_or_path} was trained on other labels than the dataset "
                f"({model.config.label_names[:5]}... vs {list(hierarchy.labels)[:5]}...)"
            )
        model.config.loss, model.config.loss_kwargs = loss_options["loss"], loss_options["loss_kwargs"]
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(config.model_name_or_path)
        except (OSError, ValueError):
            pass
        return model
    hierarchy_args = dict(labels=list(hierarchy.labels), groups=list(hierarchy.groups),
                          label_to_group=list(hierarchy.label_to_group), relation=config.relation_file)
    if config.clip_model == "tiny-random":
        from hspnet.tiny_clip import byte_level_clip_tokenizer, tiny_clip_image_processor, tiny_clip_model

        clip = tiny_clip_model(seed=config.seed)
        return HSPNetForImageClassification.from_clip(
            clip, tokenizer=byte_level_clip_tokenizer(), image_processor=tiny_clip_image_processor(),
            **hierarchy_args, **loss_options,
        )
    return HSPNetForImageClassification.from_clip(config.clip_model, **hierarchy_args, **loss_options)


def _scalar_config(config: TrainingConfig) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in
            dataclasses.asdict(config).items() if k != "hub_token"}


def train(config: TrainingConfig) -> dict:
    """Train, select, save and (optionally) upload an HSPNet model. Returns the results written to
    `output_dir/all_results.json`."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    config.validate()
    use_cpu = config.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to if config.with_tracking else None,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    # checked on every process, so that all of them stop (a main-process-only error would leave the others waiting)
    existing = os.path.isdir(config.output_dir) and any(
        os.path.exists(os.path.join(config.output_dir, f)) for f in ("config.json", "checkpoints")
    )
    if existing and not (config.overwrite_output_dir or config.resume_from_checkpoint):
        raise FileExistsError(
            f"output_dir {config.output_dir!r} already holds a model or checkpoints; pass "
            "--resume_from_checkpoint latest to continue, --overwrite_output_dir true to replace it, or another "
            "--output_dir."
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and existing and config.overwrite_output_dir and not config.resume_from_checkpoint:
        shutil.rmtree(os.path.join(config.output_dir, "checkpoints"), ignore_errors=True)
    accelerator.wait_for_everyone()
    _setup_logging(accelerator, config.output_dir)
    logger.info("processes: %d (distributed: %s), device: %s, mixed precision: %s", accelerator.num_processes,
                accelerator.distributed_type, accelerator.device, accelerator.mixed_precision)
    set_seed(config.seed)

    with accelerator.main_process_first():
        datasets, hierarchy = load_datasets(config)
    selection_split = "validation" if config.protocol == "heldout" else "test"
    logger.info(
        "model selection on the %r split (%s protocol)%s", selection_split, config.protocol,
        "" if config.protocol == "heldout" else ": the test set is used for model selection, as in the authors' code",
    )
    num_labels = len(hierarchy.labels)

    model = build_model(config, hierarchy)
    image_processor = model.image_processor
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    train_set = add_index_column(datasets["train"])
    if config.max_train_samples:
        train_set = train_set.select(range(min(config.max_train_samples, len(train_set))))
    loss_module = build_training_loss(config, num_labels, train_set)
    if any(True for _ in loss_module.parameters()) and accelerator.num_processes > 1:
        raise ValueError(f"loss {config.loss!r} keeps per-image state; train it with a single process.")
    eval_sets = {split: datasets[split] for split in dict.fromkeys([selection_split, "test"])}
    if config.max_eval_samples:
        eval_sets = {k: v.select(range(min(config.max_eval_samples, len(v)))) for k, v in eval_sets.items()}
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
    model, optimizer, train_loader, *prepared = accelerator.prepare(model, optimizer, train_loader,
                                                                   *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared))
    unwrapped = accelerator.unwrap_model(model)
    loss_module.to(accelerator.device)
    steps_per_epoch = len(train_loader)
    scheduler = one_cycle_scheduler(optimizer, steps_per_epoch, config.schedule_epochs, config.pct_start)
    ema = None
    if config.ema:
        constant = {name for name, _ in unwrapped.named_buffers() if name.rsplit(".", 1)[-1] in CONSTANT_BUFFERS}
        ema = ModelEMA(unwrapped, ema_decay(steps_per_epoch, config.ema_keep_per_epoch), constant=constant)
    state = TrainingState()
    for obj in (scheduler, state, loss_module) + ((ema,) if ema else ()):
        accelerator.register_for_checkpointing(obj)
    if config.with_tracking:
        accelerator.init_trackers("runs", config=_scalar_config(config))

    total_steps = config.epochs * steps_per_epoch
    if config.max_train_steps:
        total_steps = min(total_steps, config.max_train_steps)
    logger.info("train images: %d, steps per epoch: %d (per process batch %d x %d processes), total steps: %d, "
                "schedule: %d epochs", len(train_set), steps_per_epoch, config.batch_size, accelerator.num_processes,
                total_steps, config.schedule_epochs)

    results: dict[str, Any] = {"selection_split": selection_split, "protocol": config.protocol,
                               "world_size": accelerator.num_processes}
    resumed_from = None
    if config.resume_from_checkpoint:
        resumed_from = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
        accelerator.load_state(resumed_from)
        logger.info("resumed from %s at step %d (epoch %d)", resumed_from, state.global_step,
                    state.global_step // steps_per_epoch)
    elif config.evaluate_before_training:
        before, _ = evaluate_model(model, eval_loaders["test"], accelerator, num_labels, "test (untrained)")
        results["test_before_training"] = before
        logger.info("before training: test mAP %.2f", before["mAP"])

    def save_training_state(name: str) -> None:
        # written under a temporary name and renamed when complete: a run killed while saving never leaves a
        # half-written checkpoint that `--resume_from_checkpoint latest` would pick
        folder = os.path.join(config.output_dir, "checkpoints", name)
        accelerator.save_state(folder + ".partial")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(folder + ".partial", folder)
            if config.checkpoints_total_limit:
                for _, old in _checkpoint_dirs(config.output_dir)[: -config.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save_best(source_model) -> None:
        if accelerator.is_main_process:
            source_model.save_pretrained(config.output_dir, save_function=accelerator.save)
        accelerator.wait_for_everyone()

    progress = tqdm(total=total_steps, initial=min(state.global_step, total_steps), desc="train",
                    disable=not accelerator.is_local_main_process)
    start = time.time()
    stop = state.global_step >= total_steps
    first_epoch = state.global_step // steps_per_epoch
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
            logits = model(pixel_values=batch["pixel_values"]).logits
            loss = loss_module(logits, batch["observed_labels"], epoch=epoch, indices=batch["index"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(unwrapped)
            state.global_step += 1
            progress.update(1)
            running += float(loss.detach())
            count += 1
            if state.global_step % config.logging_steps == 0:
                lrs = scheduler.get_last_lr()
                progress.set_postfix(loss=f"{running / count:.3f}", lr=f"{lrs[0]:.2e}")
                if config.with_tracking:
                    accelerator.log({"train/loss": running / count, "train/lr": lrs[0], "train/gcn_lr": lrs[-1],
                                     "train/epoch": epoch}, step=state.global_step)
            end_of_epoch = state.global_step % steps_per_epoch == 0
            if (str(config.checkpointing_steps).isdigit() and state.global_step % int(config.checkpointing_steps) == 0
                    and not end_of_epoch):
                save_training_state(f"step_{state.global_step}")
            if state.global_step >= total_steps:
                stop = True
                break
        if stop and state.global_step % steps_per_epoch != 0:
            logger.info("stopping mid-epoch at max_train_steps=%d", total_steps)

        candidates = [("regular", model)] + ([("ema", ema.module)] if ema is not None else [])
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
            state.best_metric, state.best_epoch, state.best_source = current, epoch, source
            state.best_metrics = scores[source]
            state.evaluations_without_improvement = 0
            save_best(unwrapped if source == "regular" else ema.module)
        else:
            state.evaluations_without_improvement += 1
        logger.info(
            "epoch %d: %s mAP regular %.2f%s -> best %.2f (epoch %d, %s)%s", epoch, selection_split,
            scores["regular"]["mAP"], f", EMA {scores['ema']['mAP']:.2f}" if "ema" in scores else "",
            state.best_metric, state.best_epoch, state.best_source, " [saved]" if improved else "",
        )
        if config.checkpointing_steps is not None:
            save_training_state(f"epoch_{epoch}-step_{state.global_step}")
        if config.patience is not None and state.evaluations_without_improvement >= config.patience:
            logger.info("early stopping: no improvement for %d evaluations", config.patience)
            break
    progress.close()
    accelerator.wait_for_everyone()
    results["train_seconds"] = round(time.time() - start, 2)
    results["resumed_from"] = resumed_from
    results["best"] = {"epoch": state.best_epoch, "source": state.best_source,
                       f"{selection_split}_mAP": state.best_metric, f"{selection_split}_metrics": state.best_metrics}
    results["history"] = state.history

    # final report: the selected model on the test set
    from hspnet import HSPNetForImageClassification

    best = HSPNetForImageClassification.from_pretrained(config.output_dir).to(accelerator.device)
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
        accelerator.end_training()

    failure = None
    if accelerator.is_main_process:
        try:
            _write_outputs(config, best, test_metrics, results, accelerator)
        except Exception as error:  # noqa: BLE001 - re-raised after the other processes are released
            failure = error
    accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    return results


def _write_outputs(config: TrainingConfig, best, test_metrics: dict, results: dict, accelerator) -> None:
    """Model card, all_results.json and the optional Hub upload (main process)."""
    recipe = {k: getattr(config, k) for k in ("clip_model", "dataset", "protocol", "epochs", "schedule_epochs",
                                               "batch_size", "lr", "gcn_lr", "weight_decay", "pct_start", "ema",
                                               "ema_keep_per_epoch", "loss", "loss_kwargs", "seed")}
    recipe["world_size"] = accelerator.num_processes
    recipe["mixed_precision"] = accelerator.mixed_precision
    card = model_card(best.config, dataset=config.dataset, metrics=test_metrics, recipe=recipe,
                      repo_id=config.hub_model_id, base_model=None if config.model_name_or_path else config.clip_model,
                      license=config.license)
    with open(os.path.join(config.output_dir, "README.md"), "w") as handle:
        handle.write(card)
    with open(os.path.join(config.output_dir, "all_results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    if config.push_to_hub:
        push_folder_to_hub(config.output_dir, config.hub_model_id, token=config.hub_token,
                           private=config.hub_private_repo)


def push_folder_to_hub(folder: str, repo_id: str | None, token: str | None = None, private: bool = False) -> str:
    """Upload the model files of a trained folder (config, safetensors, remote code, image processor, model card;
    never checkpoints or logs) to `repo_id`. Returns the repo id."""
    from huggingface_hub import HfApi

    if not repo_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/hspnet-coco)")
    missing = [name for name in ("config.json", "model.safetensors", "README.md") if not os.path.isfile(
        os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(f"{folder} is missing {missing}; nothing was uploaded")
    from huggingface_hub import CommitOperationAdd

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, exist_ok=True, private=private).repo_id
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name))
                  for name in MODEL_FILES if os.path.isfile(os.path.join(folder, name))]
    api.create_commit(repo_id=repo_id, operations=operations, commit_message="Upload HSPNet model trained with hspnet")
    logger.info("pushed %s to the Hub as %s", folder, repo_id)
    return repo_id
