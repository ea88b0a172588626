"""What a training run is built from: its datasets (:func:`load_datasets`, :func:`training_splits`,
:func:`dataset_name`) and its model with the model's loss (:func:`build_model`, :func:`setup_loss_for_training`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from hspnet.data import get_hierarchy, open_dataset, to_multi_hot
from hspnet.data.batches import add_index_column, label_permutation
from hspnet.models.loading import check_model_folder, label_names
from hspnet.training.arguments import TrainingConfig
from hspnet.training.resume import label_mismatch
from hspnet.utils.errors import one_line
from hspnet.utils.model_source import ModelSourceError, resolve_model_source

logger = logging.getLogger("hspnet.train")


def load_datasets(config: TrainingConfig):
    """The prepared `DatasetDict` (train / validation / test) and its label hierarchy; with `streaming`, a mapping
    whose train split is a :class:`hspnet.data.shards.StreamedSplit` (read as a stream) and whose other splits are
    read whole."""
    if config.streaming:
        from hspnet.data.shards import open_sharded_dataset

        if config.dataset_root:
            raise ValueError("--streaming reads a dataset prepared by `hspnet prepare --shards N` (a folder or a Hub "
                             "dataset id), not --dataset_root")
        datasets = open_sharded_dataset(config.dataset, token=config.hub_token, cache_dir=config.cache_dir)
    else:
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
    return datasets, get_hierarchy(datasets["train"] if config.streaming else datasets)


def dataset_name(config: TrainingConfig, datasets) -> str:
    """The dataset's own name, for the model card: the name its loader recorded in the prepared dataset ("demo",
    "coco", "voc", "nuswide", "cub"; also for a prepared folder, whatever its path), or for images of your own
    (recorded as "custom") the name of their folder (`--dataset_root`, or the prepared folder)."""
    import json

    recorded = None
    for split in datasets.values():
        try:
            recorded = json.loads(split.info.description)["hspnet"]["dataset"]
            break
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    if recorded and recorded != "custom":
        return str(recorded)
    if config.streaming and not os.path.isdir(config.dataset):  # images of your own on the Hub: the repository
        return config.dataset
    folder = config.dataset_root or (config.dataset if os.path.isdir(config.dataset) else None)
    return os.path.basename(os.path.normpath(folder)) if folder else str(recorded or config.dataset)


def training_splits(config: TrainingConfig, datasets) -> tuple[Any, dict, str]:
    """`(train_set, eval_sets, selection_split)`: the training split with an `index` column, and the split the model
    is selected on ("validation", or "test" under the authors' protocol) with the test split."""
    selection_split = "validation" if config.protocol == "heldout" else "test"
    logger.info(
        "model selection on the %r split (%s protocol)%s", selection_split, config.protocol,
        "" if config.protocol == "heldout" else ": the test set is used for model selection, as in the authors' code",
    )
    train_set = datasets["train"] if getattr(datasets["train"], "streamed", False) else add_index_column(
        datasets["train"])  # a streamed split has its `index` column
    if config.max_train_samples:
        train_set = train_set.select(range(min(config.max_train_samples, len(train_set))))
    eval_sets = {split: datasets[split] for split in dict.fromkeys([selection_split, "test"])}
    if config.max_eval_samples:
        eval_sets = {k: v.select(range(min(config.max_eval_samples, len(v)))) for k, v in eval_sets.items()}
    return train_set, eval_sets, selection_split


def _check_source(name: str, option: str) -> str:
    """What to load `name` (the value of `--option`) from: the path, the Hub id, or the Hub cache's copy when the Hub is
    offline or unreachable (:func:`~hspnet.utils.model_source.resolve_model_source`: a mistyped path is named at once,
    an unusable Hub id in seconds, saying whether the network, the id or the access is wrong)."""
    try:
        return resolve_model_source(os.path.expanduser(name), option).path
    except ModelSourceError as error:
        if error.kind == "path":
            raise FileNotFoundError(f"--{option} {name!r}: no such file or folder") from None
        raise OSError(f"--{option} {name!r}: {error.reason}") from None


def build_model(config: TrainingConfig, hierarchy):
    """A new HSPNet on `config.clip_model` (a Hub id or folder, an OpenAI weights file such as `RN50.pt`, or the tiny
    random CLIP), or an existing HSPNet to fine-tune, with this run's loss (`loss`, `loss_kwargs`) and label sampling
    (`label_sample_size`) in its config. Errors name the option and the path or Hub id (a missing folder, a Hub id
    not available offline, other labels)."""
    from transformers import AutoImageProcessor

    from hspnet.models.hspnet.modeling_hspnet import HSPNetForImageClassification
    from hspnet.utils.tiny_clip import TINY_RANDOM, load_tiny_random

    training_options = dict(loss=config.loss, loss_kwargs=dict(config.loss_kwargs or {}),
                            label_sample_size=config.label_sample_size)
    if config.model_name_or_path:
        source = config.model_name_or_path
        path = _check_source(source, "model_name_or_path")
        if os.path.isdir(path):
            check_model_folder(path)  # a truncated model.safetensors, a malformed config.json: named by file
        try:
            model = HSPNetForImageClassification.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        except (OSError, ValueError) as error:
            kind = OSError if isinstance(error, OSError) else ValueError
            raise kind(f"--model_name_or_path {source!r}: cannot load an HSPNet model ({one_line(error)})") from None
        if label_names(model) != list(hierarchy.labels):
            raise ValueError(
                f"--model_name_or_path {source!r} was trained on other labels than the dataset "
                f"{config.dataset!r}: {label_mismatch(label_names(model), list(hierarchy.labels))}"
            )
        if (list(model.config.group_names) != list(hierarchy.groups)
                or list(model.config.label_to_group) != list(hierarchy.label_to_group)):
            logger.warning("%s has another label hierarchy (groups) than the dataset; the model's own is kept",
                           source)
        for name, value in training_options.items():
            setattr(model.config, name, value)
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError):
            pass
        return model
    relation = config.relation_file
    if relation is not None and not os.path.isfile(os.path.expanduser(relation)):
        raise FileNotFoundError(f"--relation_file {relation!r}: no such file")
    hierarchy_args = dict(labels=list(hierarchy.labels), groups=list(hierarchy.groups),
                          label_to_group=list(hierarchy.label_to_group),
                          relation=os.path.expanduser(relation) if relation else None)
    if getattr(hierarchy, "label_ids", None) is not None:  # the dataset's ids of the labels (Open Images MIDs)
        hierarchy_args["label_ids"] = list(hierarchy.label_ids)
    if config.clip_model == TINY_RANDOM:
        # the tiny CLIP's own processor (CLIP's) is not kept: every new model gets HSPNetImageProcessor, with the same
        # size and CLIP mean / std (the same pixels on the demo's square images; see image_processing_hspnet.py)
        clip, tokenizer, _ = load_tiny_random(seed=config.seed)
        return HSPNetForImageClassification.from_clip(clip, tokenizer=tokenizer, **hierarchy_args,
                                                      **training_options)
    source = _check_source(config.clip_model, "clip_model")
    try:
        clip = source
        tokenizer = None
        if config.tokenizer_name or os.path.isfile(source):
            from transformers import AutoTokenizer

            # an OpenAI weights file (RN50.pt) holds no tokenizer: all OpenAI CLIPs share this one
            tokenizer = AutoTokenizer.from_pretrained(
                _check_source(config.tokenizer_name or "openai/clip-vit-base-patch32", "tokenizer_name"))
        if os.path.isfile(source):
            from hspnet.models.openai_clip import load_openai_clip_parts

            clip = load_openai_clip_parts(source)
        return HSPNetForImageClassification.from_clip(clip, tokenizer=tokenizer, **hierarchy_args,
                                                      **training_options)
    except OSError as error:  # not a CLIP folder, a Hub id not available (offline?), an unreadable weight file
        raise OSError(f"--clip_model {config.clip_model!r}: cannot load this CLIP ({one_line(error)})") from None


def setup_loss_for_training(model, train_split) -> torch.nn.Module:
    """Prepare the model's loss for a run on `train_split` (a split of this project, or a Trainer dataset of
    :mod:`hspnet.apps.trainer`, which carries its `split` and label `permutation`) and return it.

    A loss that keeps per-image state (ROLE) is built for the number of training images and starts from the observed
    labels (`initialize_observed`); it becomes the model's loss (`model.use_loss`) without entering the model's
    config, which records the loss choice only. The estimates follow the MODEL's label order: a split whose labels
    (read from its features) are in another order is permuted by name, as its targets are."""
    from hspnet.models.hspnet.losses import LOSS_DEFAULTS, build_loss, check_loss_spec

    permutation = None
    if hasattr(train_split, "split") and hasattr(train_split, "permutation"):
        permutation, train_split = train_split.permutation, train_split.split
    else:
        try:
            dataset_labels = list(get_hierarchy(train_split).labels)
        except (ValueError, TypeError):  # a split without a hierarchy: its label indices are the model's
            dataset_labels = None
        model_labels = label_names(model)
        if dataset_labels is not None and model_labels != dataset_labels:
            permutation = label_permutation(model_labels, dataset_labels)

    config = model.config
    kwargs = dict(config.loss_kwargs or {})
    key = check_loss_spec(config.loss, kwargs)
    if "num_train_images" not in LOSS_DEFAULTS[key]:
        return model.loss_module
    if getattr(train_split, "streamed", False):
        raise ValueError(f"loss {config.loss!r} keeps a state for every training image, which a streamed run does "
                         "not read up front; train it without --streaming")
    loss = build_loss(config.loss, config.num_labels, **dict(kwargs, num_train_images=len(train_split)))
    rows = train_split["observed_labels"]
    if permutation is not None:
        rows = [[permutation[index] for index in row] for row in rows]
    loss.initialize_observed(torch.from_numpy(to_multi_hot(rows, config.num_labels)))
    model.use_loss(loss)
    return loss
