"""Training with the Hugging Face `transformers.Trainer` (`hspnet.trainer`): a plain Trainer with the epoch callback,
the collator and the metrics trains a tiny HSPNet on the demo data and saves a folder the Auto classes load; the
callback really moves SPLC's pseudo-labelling to `change_epoch`; HSPNetTrainer trains ROLE's label estimates."""

import math

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForImageClassification,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import hspnet  # noqa: F401  (registers HSPNet with the Auto classes)
from hspnet import HSPNetForImageClassification
from hspnet.apps.trainer import (
    HSPNetDataCollator,
    HSPNetEpochCallback,
    HSPNetTrainer,
    compute_metrics,
    prepare_trainer_datasets,
    trainer_epoch,
)
from hspnet.data import get_hierarchy, load_demo_dataset, to_multi_hot
from hspnet.training.data_and_model import setup_loss_for_training


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """16 training images (4 more held out), 8 test images, 32 px: two steps of 8 per epoch."""
    return load_demo_dataset(cache_dir=str(tmp_path_factory.mktemp("demo-cache")), num_train=20, num_test=8,
                             image_size=32, validation_fraction=0.2)


def build(tiny_clip_dir, demo, seed=0, **config):
    torch.manual_seed(seed)
    return HSPNetForImageClassification.from_clip(tiny_clip_dir, **get_hierarchy(demo).model_kwargs(), **config)


def arguments(folder, **overrides):
    options = dict(output_dir=str(folder), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                   num_train_epochs=2, learning_rate=3e-4, logging_steps=1, eval_strategy="epoch", save_strategy="no",
                   report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    options.update(overrides)
    return TrainingArguments(**options)


def observed_loss(model, dataset, epoch=0):
    """The training loss (observed targets) over a whole split at a fixed epoch, in eval mode."""
    batch = HSPNetDataCollator()([dataset[i] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        return float(model(pixel_values=batch["pixel_values"], labels=batch["labels"], epoch=epoch).loss)


class EpochProbe(TrainerCallback):
    """Records the epoch the loss holds at every optimizer step."""

    def __init__(self):
        self.epochs = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.epochs.append(model.loss_module.get_epoch())


def test_plain_trainer_trains_and_saves_a_folder_the_auto_classes_load(tiny_clip_dir, demo, tmp_path):
    model = build(tiny_clip_dir, demo)
    data = prepare_trainer_datasets(demo, model)
    before = observed_loss(model, data["train"])
    probe = EpochProbe()
    trainer = Trainer(model=model, args=arguments(tmp_path / "run", eval_strategy="no"), train_dataset=data["train"],
                      data_collator=HSPNetDataCollator(), compute_metrics=compute_metrics,
                      callbacks=[HSPNetEpochCallback(), probe])  # default remove_unused_columns=True
    trainer.train()
    assert probe.epochs == [0, 0, 1, 1]  # the callback told SPLC the epoch
    after = observed_loss(model, data["train"])
    assert after < before, (before, after)

    # evaluation gets the logits and ALL labels of the test split, in the model's order, and the metrics
    prediction = trainer.predict(data["test"])
    expected = to_multi_hot(demo["test"]["labels"], model.config.num_labels)
    np.testing.assert_array_equal(prediction.label_ids, expected)
    assert prediction.predictions.shape == expected.shape
    metrics = prediction.metrics
    assert 0 <= metrics["test_mAP"] <= 100 and math.isfinite(metrics["test_loss"])
    assert {"test_mAP_tie_aware", "test_CF1", "test_mean_class_F1", "test_OF1", "test_OF1_top3"} <= set(metrics)
    assert metrics["test_mAP"] == pytest.approx(compute_metrics(prediction)["mAP"])

    trainer.save_model(str(tmp_path / "best"))
    loaded = AutoModelForImageClassification.from_pretrained(str(tmp_path / "best")).eval()
    assert type(loaded) is HSPNetForImageClassification
    pixel_values = HSPNetDataCollator()([data["test"][i] for i in range(4)])["pixel_values"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)


def test_epoch_callback_moves_splc_pseudo_labelling_to_change_epoch(tiny_clip_dir, demo):
    model = build(tiny_clip_dir, demo, loss="splc", loss_kwargs={"change_epoch": 1, "tau": 0.6})
    logits = torch.tensor([[3.0, 2.0, -2.0] + [0.0] * 9, [-1.0, 4.0, 1.0] + [0.0] * 9])
    targets = torch.zeros_like(logits)
    targets[0, 0] = targets[1, 1] = 1.0  # the single observed positives; label 1 / 2 are confident unobserved ones
    callback, control = HSPNetEpochCallback(), TrainerControl()

    callback.on_init_end(None, TrainerState(), control, model=model)  # evaluate() before training has an epoch
    assert model.loss_module.get_epoch() == 0
    callback.on_epoch_begin(None, TrainerState(epoch=0.0), control, model=model)
    before = model.loss_module(logits, targets)
    torch.testing.assert_close(before, model.loss_module(logits, targets, epoch=0))
    callback.on_epoch_begin(None, TrainerState(epoch=1.0), control, model=model)
    after = model.loss_module(logits, targets)
    torch.testing.assert_close(after, model.loss_module(logits, targets, epoch=1))
    assert not torch.allclose(before, after)  # sigmoid(2) > tau and sigmoid(1) > tau become pseudo-positives

    callback.on_train_begin(None, TrainerState(epoch=1.5), control, model=model)  # resumed mid-epoch 1
    assert model.loss_module.get_epoch() == 1
    assert trainer_epoch(TrainerState(epoch=2.9999999999)) == 3 and trainer_epoch(TrainerState()) == 0


def test_hspnet_trainer_trains_role_estimates_and_evaluates_without_indices(tiny_clip_dir, demo, tmp_path):
    model = build(tiny_clip_dir, demo, loss="role", loss_kwargs={"expected_num_pos": 1.5})
    loss = setup_loss_for_training(model, demo["train"])
    assert loss.num_train_images == len(demo["train"]) == 16 and loss is model.loss_module
    assert "num_train_images" not in model.config.loss_kwargs  # run state, not the model's config
    start = loss.estimated_labels.clone()
    observed = torch.from_numpy(to_multi_hot(demo["train"]["observed_labels"], model.config.num_labels)).bool()
    assert bool((start[observed] > 0.99).all())  # starts from the observed labels

    data = prepare_trainer_datasets(demo, model)
    trainer = HSPNetTrainer(model=model, args=arguments(tmp_path / "run", num_train_epochs=1),
                            train_dataset=data["train"], eval_dataset=data["validation"])
    assert trainer.model_accepts_loss_kwargs is False  # per-batch loss: divided by the accumulation steps
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert groups[-1]["initial_lr"] == pytest.approx(3e-4 * 10) and groups[-1]["params"][0] is loss.label_logits
    assert not torch.allclose(loss.estimated_labels, start)  # the estimates are trained
    metrics = trainer.evaluate()
    assert "eval_mAP" in metrics and "eval_loss" not in metrics  # validation images have no ROLE estimate


def test_datasets_collator_and_label_order(tiny_clip_dir, demo):
    model = build(tiny_clip_dir, demo)
    data = prepare_trainer_datasets(demo, model)
    assert set(data) == {"train", "validation", "test"}
    example = data["train"][3]
    assert set(example) == {"pixel_values", "labels", "indices"} and example["indices"] == 3
    assert example["labels"].dtype == torch.float32 and float(example["labels"].sum()) == 1.0  # one observed positive
    assert set(data["test"][0]) == {"pixel_values", "labels"}
    np.testing.assert_array_equal(data["test"][5]["labels"].numpy(),
                                  to_multi_hot([demo["test"][5]["labels"]], 12)[0])
    batch = HSPNetDataCollator()([data["train"][i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["labels"].shape == (3, 12)
    assert batch["indices"].tolist() == [0, 1, 2] and batch["indices"].dtype == torch.long

    # a model whose labels are in another order gets its targets in its own order
    hierarchy = get_hierarchy(demo)
    order = list(reversed(range(12)))
    torch.manual_seed(0)
    reversed_model = HSPNetForImageClassification.from_clip(
        tiny_clip_dir, labels=[hierarchy.labels[i] for i in order], groups=hierarchy.groups,
        label_to_group=[hierarchy.label_to_group[i] for i in order])
    flipped = prepare_trainer_datasets(demo, reversed_model)
    np.testing.assert_array_equal(flipped["test"][5]["labels"].numpy(), data["test"][5]["labels"].numpy()[order])
    with pytest.raises(ValueError, match="observed_labels"):
        from hspnet.apps.trainer import HSPNetTrainerDataset

        HSPNetTrainerDataset(demo["test"], model.image_processor, 12, targets="observed_labels")


def test_role_estimates_follow_the_models_label_order(tiny_clip_dir, demo, tmp_path):
    """A model whose labels are in another order than the dataset's: ROLE's estimates start from each image's
    observed label in the MODEL's order (from the split, and from its Trainer dataset); the other estimates keep
    their random start in (0.5 - init_width, 0.5 + init_width). Started from the same estimates (columns permuted), a
    Trainer epoch gives the estimates of the model in the dataset's order, columns permuted (the same weights; the
    label GCN adds in another order, hence the tolerance)."""
    hierarchy = get_hierarchy(demo)
    order = [3, 0, 11, 7, 1, 10, 2, 9, 4, 8, 5, 6]  # model label j is dataset label order[j]
    kwargs = dict(loss="role", loss_kwargs={"expected_num_pos": 1.5})
    ordered = build(tiny_clip_dir, demo, **kwargs)
    torch.manual_seed(0)
    permuted = HSPNetForImageClassification.from_clip(
        tiny_clip_dir, labels=[hierarchy.labels[i] for i in order], groups=hierarchy.groups,
        label_to_group=[hierarchy.label_to_group[i] for i in order], **kwargs)

    observed = torch.from_numpy(to_multi_hot(demo["train"]["observed_labels"], 12)).bool()[:, order]  # model order
    for source in (demo["train"], prepare_trainer_datasets(demo, permuted)["train"]):
        estimates = setup_loss_for_training(permuted, source).estimated_labels
        width = permuted.loss_module.init_width
        assert bool((estimates[observed] > 0.99).all())
        assert bool((estimates[~observed] < 0.5 + width + 1e-6).all())
        assert bool((estimates[~observed] > 0.5 - width - 1e-6).all())

    results = []
    start = setup_loss_for_training(ordered, demo["train"]).label_logits.detach().clone()
    for model in (ordered, permuted):
        data = prepare_trainer_datasets(demo, model)
        setup_loss_for_training(model, data["train"])
        with torch.no_grad():
            model.loss_module.label_logits.copy_(start if model is ordered else start[:, order])
        trainer = HSPNetTrainer(model=model, args=arguments(tmp_path / f"run{len(results)}", num_train_epochs=1,
                                                            eval_strategy="no"), train_dataset=data["train"])
        trainer.train()
        results.append(model.loss_module.estimated_labels.detach().clone())
    torch.testing.assert_close(results[1], results[0][:, order], atol=1e-5, rtol=1e-5)


def test_a_stock_trainer_evaluates_before_any_epoch_is_set(tiny_clip_dir, demo, tmp_path):
    """A plain `Trainer` with nothing of hspnet but the collator: `evaluate()` on a model that was never told its
    epoch gives a loss (computed as at epoch 0, docs of `HSPNetForImageClassification.forward`)."""
    model = build(tiny_clip_dir, demo)
    data = prepare_trainer_datasets(demo, model)
    trainer = Trainer(model=model, args=arguments(tmp_path / "stock", eval_strategy="no"),
                      data_collator=HSPNetDataCollator())
    metrics = trainer.evaluate(data["test"])
    assert math.isfinite(metrics["eval_loss"])
    assert len(data["test"]) == 8  # one evaluation batch: the Trainer's loss is the batch's
    # all labels as targets, and the same loss as with the epoch given explicitly
    batch = HSPNetDataCollator()([data["test"][i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        expected = float(model(pixel_values=batch["pixel_values"], labels=batch["labels"], epoch=0).loss)
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
