"""Training HSPNet with the Hugging Face `transformers.Trainer`.

`HSPNetForImageClassification.forward(pixel_values, labels=..., epoch=..., indices=...)` returns the loss of
`config.loss` (SPLC by default), so the `Trainer` trains it like any image classifier once three things reach the model:

- the **epoch**, for losses that change with it (SPLC starts pseudo-labelling at `change_epoch`, LL-R rejects more
  large losses each epoch): :class:`HSPNetEpochCallback` calls `model.set_epoch(e)` with the 0-based epoch when the
  Trainer is built, when training starts or resumes, and at the start of every epoch;
- the **targets**: `labels` is the `(B, C)` float multi-hot of the OBSERVED labels for training (the single
  positive) and of ALL labels for evaluation; :func:`prepare_trainer_datasets` turns a dataset of this project (columns
  `image`, `labels`, `observed_labels`) into such examples, in the model's label order, with the authors' image
  preprocessing (`hspnet.data.batches.make_transform`, as in `scripts/train.py`);
- the **sample index**, for ROLE's per-image label estimates: the training examples carry `indices` (the row in the
  training split), which :class:`HSPNetDataCollator` stacks into a `LongTensor`.

:func:`compute_metrics` gives mAP (the ranked definition of the paper) and the F1 family of
:func:`hspnet.evaluation.metrics.compute_all_metrics` from the logits and targets the Trainer gathers
(`metric_for_best_model="mAP"`).

:class:`HSPNetTrainer` is a `Trainer` with all of the above as defaults, plus two corrections that a plain `Trainer`
cannot make from the outside:

- HSPNet's loss is a per-batch loss (SPLC sums over the batch, others average), not one normalised by the Trainer's
  `num_items_in_batch`; because `HSPNetForImageClassification.forward` takes `**kwargs`, a plain `Trainer` assumes the
  opposite: it passes `num_items_in_batch` into the forward pass (which ignores it), stops dividing the loss by the
  gradient accumulation steps and, on several processes, multiplies it by their number. `HSPNetTrainer` sets
  `model_accepts_loss_kwargs = False`, so the per-batch losses are averaged as they should be (with
  `gradient_accumulation_steps=1` on one process both give the same gradients);
- a loss with parameters (ROLE's `(N, C)` label estimates) lives outside the model's module tree (it is run state,
  not model weights): `HSPNetTrainer` moves it to the training device, adds its parameters to the optimizer at
  `loss_lr_scale` (10) x the learning rate without weight decay, as `scripts/train.py` does, and evaluates ROLE models
  without a loss (evaluation images have no training index). ROLE's estimates are not saved in Trainer checkpoints:
  use `scripts/train.py` to resume ROLE runs exactly.

    from transformers import TrainingArguments
    from hspnet.apps.trainer import HSPNetTrainer, prepare_trainer_datasets

    data = prepare_trainer_datasets(dataset_dict, model)      # {"train": ..., "validation": ..., "test": ...}
    trainer = HSPNetTrainer(model=model, args=TrainingArguments("out", num_train_epochs=10,
                            eval_strategy="epoch", save_strategy="epoch", metric_for_best_model="mAP",
                            load_best_model_at_end=True), train_dataset=data["train"], eval_dataset=data["validation"])
    trainer.train()
    trainer.save_model("out/best")                                   # a model folder: AutoModelForImageClassification
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback

from hspnet.models.loading import label_names, unwrap_model
from hspnet.training.data_and_model import setup_loss_for_training

__all__ = [
    "HSPNetDataCollator",
    "HSPNetEpochCallback",
    "HSPNetTrainer",
    "HSPNetTrainerDataset",
    "compute_metrics",
    "make_compute_metrics",
    "prepare_trainer_datasets",
    "setup_loss_for_training",
    "trainer_epoch",
]


def trainer_epoch(state) -> int:
    """The 0-based epoch in progress from a `TrainerState`: `floor(state.epoch)` (the Trainer sets `state.epoch` to
    `epoch + (step + 1) / steps_in_epoch` after each step, so at the start of epoch `e` it is exactly `e`; a run
    resumed mid-epoch reloads the fraction)."""
    value = getattr(state, "epoch", None) or 0.0
    return max(0, int(math.floor(float(value) + 1e-6)))


class HSPNetEpochCallback(TrainerCallback):
    """Tell the model's loss the current 0-based epoch (`model.set_epoch`), for SPLC and LL-R.

    Called when the Trainer is built (epoch 0, so that `trainer.evaluate()` works before training), when training
    starts or resumes (the epoch of the restored state) and at the start of every epoch. Losses that do not use the
    epoch ignore it."""

    def _set(self, state, model) -> None:
        model = unwrap_model(model) if model is not None else None
        if model is not None and hasattr(model, "set_epoch"):
            model.set_epoch(trainer_epoch(state))

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self._set(state, model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._set(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._set(state, model)


class HSPNetTrainerDataset(Dataset):
    """One split of a dataset of this project as Trainer examples:
    `{"pixel_values": (3, H, W) float32, "labels": (C,) float32 multi-hot[, "indices": int]}`.

    `targets` names the column that becomes `labels`: `"observed_labels"` (the single positives, for training) or
    `"labels"` (all positives, for evaluation). `indices` is the row in this split (ROLE's training-set index); it is
    included by default for observed targets. Images are read and preprocessed on access by
    `hspnet.data.batches.make_transform` (EXIF orientation, 16-bit images, RGB, then `image_processor`), as in
    `scripts/train.py`. A plain `torch` dataset, so the Trainer's `remove_unused_columns` leaves it alone."""

    def __init__(self, split, image_processor, num_labels: int, targets: str = "observed_labels",
                 with_indices: bool | None = None, permutation: Sequence[int] | None = None):
        from hspnet.data.batches import make_transform

        if targets not in ("observed_labels", "labels"):
            raise ValueError(f"targets must be 'observed_labels' or 'labels', got {targets!r}")
        columns = getattr(split, "column_names", None) or []
        needed = ["image", "labels"] + (["observed_labels"] if targets == "observed_labels" else [])
        for column in needed:
            if column not in columns:
                raise ValueError(f"the split has no {column!r} column (columns: {columns}); expected a dataset of "
                                 "hspnet.data (image, labels, observed_labels)")
        self.split = split
        self.permutation = list(permutation) if permutation is not None else None
        self.targets = targets
        self.with_indices = targets == "observed_labels" if with_indices is None else bool(with_indices)
        self.transform = make_transform(image_processor, int(num_labels),
                                        list(permutation) if permutation is not None else None)
        self._rows = split.select_columns(needed)  # decode only the columns used

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} examples")
        rows = self._rows[index : index + 1]
        out = self.transform(rows)
        example = {"pixel_values": out["pixel_values"][0], "labels": out[self.targets][0].float()}
        if self.with_indices:
            example["indices"] = index
        return example


def prepare_trainer_datasets(datasets: Mapping, model=None, image_processor=None, train_split: str = "train",
                             num_labels: int | None = None) -> dict[str, HSPNetTrainerDataset]:
    """Trainer datasets for every split of a `DatasetDict` of this project (e.g. `hspnet.data.load_demo_dataset()`).

    The `train_split` gets the observed labels as targets and the sample indices; every other split gets all
    labels. With `model`, the labels follow the model's label order (the dataset's label names are matched to
    `model.config.id2label`; different label sets are an error) and the preprocessing defaults to
    `model.image_processor` or the model's default (the authors' resize/crop at its resolution, CLIP mean/std)."""
    from hspnet.data import get_hierarchy

    dataset_labels = list(get_hierarchy(datasets).labels)
    permutation = None
    if model is not None:
        model_labels = label_names(model) if getattr(model, "config", None) is not None else None
        if model_labels is not None and model_labels != dataset_labels:
            from hspnet.data.batches import label_permutation

            permutation = label_permutation(model_labels, dataset_labels)
        if image_processor is None:
            image_processor = getattr(model, "image_processor", None)
            if image_processor is None:
                from hspnet.models.hspnet.modeling_from_clip import default_image_processor

                image_processor = default_image_processor(model.config)
    if image_processor is None:
        raise ValueError("prepare_trainer_datasets needs the model or an image_processor")
    num_labels = int(num_labels or len(dataset_labels))
    if train_split not in datasets:
        raise ValueError(f"no {train_split!r} split (splits: {list(datasets)})")
    return {
        name: HSPNetTrainerDataset(split, image_processor, num_labels,
                                   targets="observed_labels" if name == train_split else "labels",
                                   permutation=permutation)
        for name, split in datasets.items()
    }


@dataclass
class HSPNetDataCollator:
    """Stack Trainer examples into a batch for `HSPNetForImageClassification.forward` (:func:`hspnet.data.batches.collate`,
    as in training): `pixel_values` `(B, 3, H, W)` float, `labels` `(B, C)` float32 multi-hot (when present), `indices`
    `(B,)` long (from `indices` or `index`, when present). Other keys are left out (they are not arguments of the
    forward pass)."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        from hspnet.data.batches import collate

        if not features:
            raise ValueError("HSPNetDataCollator: empty batch")
        first = features[0]
        index = "indices" if "indices" in first else "index" if "index" in first else None
        names = {"pixel_values": "pixel_values", "labels": "labels", index: "indices"}
        batch = collate([{new: f[old] for old, new in names.items() if old in first} for f in features])
        if not batch["pixel_values"].is_floating_point():
            batch["pixel_values"] = batch["pixel_values"].float()
        if "labels" in batch:
            batch["labels"] = batch["labels"].float()
        if "indices" in batch:
            batch["indices"] = batch["indices"].long()
        return batch


def make_compute_metrics(threshold: float = 0.5, k: int = 3):
    """A Trainer `compute_metrics` with the given threshold (on the sigmoid) and top-k."""
    from hspnet.evaluation.metrics import compute_all_metrics

    def compute(eval_prediction) -> dict[str, float]:
        predictions, label_ids = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        if label_ids is None:
            raise ValueError("compute_metrics needs the targets: the evaluation examples must carry `labels`")
        metrics = compute_all_metrics(np.asarray(predictions, dtype=np.float32), np.asarray(label_ids),
                                      from_logits=True, threshold=threshold, k=k)
        return {name: float(value) for name, value in metrics.items()}

    return compute


compute_metrics = make_compute_metrics()
"""`compute_metrics` for the Trainer: mAP (ranked and tie-aware), CP CR CF1 mean_class_F1 OP OR OF1 at threshold 0.5
and for the top 3 labels, in percent (`eval_mAP`, `eval_OF1`, ...)."""


class HSPNetTrainer(Trainer):
    """`transformers.Trainer` for HSPNet: defaults to :class:`HSPNetDataCollator`, :func:`compute_metrics` and
    :class:`HSPNetEpochCallback`, and corrects the loss scaling and ROLE's parameters (see the module docstring).

    Args (besides the Trainer's): `loss_lr_scale`: learning-rate multiplier of the loss's own parameters (ROLE's
    label estimates; 10, as Cole et al. and `scripts/train.py`)."""

    def __init__(self, *args, loss_lr_scale: float = 10.0, **kwargs):
        kwargs.setdefault("data_collator", HSPNetDataCollator())
        if kwargs.get("compute_metrics", None) is None:
            kwargs["compute_metrics"] = compute_metrics
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(c is HSPNetEpochCallback or isinstance(c, HSPNetEpochCallback) for c in callbacks):
            callbacks.append(HSPNetEpochCallback())
        self.loss_lr_scale = float(loss_lr_scale)
        super().__init__(*args, callbacks=callbacks, **kwargs)
        # HSPNet's losses are per batch, not normalised by num_items_in_batch (see the module docstring)
        self.model_accepts_loss_kwargs = False
        loss = self._loss_module()
        if loss is not None:
            loss.to(self.args.device)

    def _loss_module(self):
        model = unwrap_model(self.model)
        return getattr(model, "loss_module", None)

    def _loss_parameters(self) -> list[torch.nn.Parameter]:
        loss = self._loss_module()
        return [p for p in loss.parameters() if p.requires_grad] if loss is not None else []

    def create_optimizer(self, model=None):
        created = self.optimizer is None  # an optimizer given by the user is left as it is
        optimizer = super().create_optimizer(model)
        parameters = self._loss_parameters() if created else []
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        parameters = [p for p in parameters if id(p) not in known]
        if parameters:
            optimizer.add_param_group({"params": parameters, "lr": self.args.learning_rate * self.loss_lr_scale,
                                       "weight_decay": 0.0})
        return optimizer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss = self._loss_module()
        if getattr(loss, "requires_indices", False) and "indices" not in inputs and "labels" in inputs:
            # ROLE has no estimate for images outside the training split: logits and targets only
            labels = inputs["labels"]
            inputs = {key: value for key, value in inputs.items() if key != "labels"}
            _, logits, _ = super().prediction_step(model, inputs, False, ignore_keys=ignore_keys)
            return (None, None, None) if prediction_loss_only else (None, logits, labels)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
