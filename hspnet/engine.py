"""The engine shared by training, evaluation and prediction: datasets -> transforms -> loader, and the evaluation loop.

- :func:`load_datasets`: the prepared `DatasetDict` of a training run and its label hierarchy;
- :func:`make_transform` / :func:`collate`: images -> `pixel_values`, label lists -> multi-hot targets (in the
  model's label order when a permutation is given), stacked into batches;
- :func:`evaluate_model`: streaming, distributed-safe evaluation with every metric of :mod:`hspnet.metrics`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from hspnet.training import TrainingConfig


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
    -> multi-hot targets, in the model's label order when `permutation[dataset_index] = model_index` is given.

    Images go through :func:`hspnet.images.to_rgb` as in prediction: EXIF orientation applied (a no-op when `datasets`
    already applied it), 16-bit / 32-bit / float images scaled to 8 bits (`convert("RGB")` alone would clip them to
    white or black), then RGB."""
    from hspnet.data import to_multi_hot
    from hspnet.images import to_rgb

    def multi_hot(rows) -> torch.Tensor:
        if permutation is not None:
            rows = [[permutation[i] for i in row] for row in rows]
        return torch.from_numpy(to_multi_hot(rows, num_labels))

    def transform(batch: dict) -> dict:
        images = [to_rgb(image) for image in batch["image"]]
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
