"""Verified negatives (Open Images' human-verified absent labels) as known negatives, target -1 (issue 24).

Expected behaviour from the definitions (docs/losses.md, "Verified negatives"): a verified negative is a label known
to be absent, so its term is the plain negative log-likelihood -log(1 - sigmoid(z)) = softplus(z) with weight 1,
whatever the loss does with unknown labels (SPLC never turns it into a positive, WAN does not down-weight it, focal /
ASL / Hill do not reshape it); the other entries and the reduction (over B*C) are unchanged. Losses whose terms
couple labels or images (EPR, ROLE, LL-R) refuse -1. Targets of 0 and 1 give exactly the results of before.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from hspnet.models.hspnet.losses import LOSSES, build_loss
from hspnet.models.hspnet.modeling_label_graph import sample_labels
from tests.helpers import one_line, one_thread, tiny_options

TAKING = sorted(name for name, cls in LOSSES.items() if cls.supports_verified_negatives)
REFUSING = sorted(name for name, cls in LOSSES.items() if not cls.supports_verified_negatives)

LOGITS = torch.tensor([[3.0, -0.4, 2.5, -1.2, 0.7], [-0.5, 0.9, 4.0, -0.2, 1.6], [0.2, -2.0, 0.1, 5.0, -0.3]])
# 1 = observed positive, 0 = unknown, -1 = verified negative; (0, 2) and (2, 3) are confident verified negatives
TARGETS = torch.tensor([[1.0, 0, -1, 0, -1], [0, 1, 0, -1, 0], [0, -1, 0, -1, 1]])
EPOCH = 3  # after SPLC's change_epoch (1): confident unknowns become positives


def make(name, reduction=None, **kw):
    if reduction is not None:
        kw["reduction"] = reduction
    return build_loss(name, LOGITS.shape[1], **kw)


def reference(loss, logits, targets, epoch=EPOCH):
    """The rule, computed apart: the loss's per-entry terms on targets with -1 read as 0, the entries of verified
    negatives replaced by softplus(z), summed (divided by B*C for "mean")."""
    y = targets.clamp(min=0)
    terms, reg = loss._loss_terms(logits, y, epoch, None)
    assert reg is None
    terms = torch.where(targets == -1, F.softplus(logits), terms)
    total = terms.sum()
    return total / terms.numel() if loss.reduction == "mean" else total


def test_which_losses_take_verified_negatives():
    assert TAKING == ["an", "an_ls", "asl", "em", "focal", "hill", "splc", "wan"]
    assert REFUSING == ["epr", "ll_r", "role"]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("name", TAKING)
def test_a_verified_negative_gets_the_plain_negative_log_likelihood(name, reduction):
    loss = make(name, reduction)
    got = loss(LOGITS, TARGETS, epoch=EPOCH)
    torch.testing.assert_close(got, reference(loss, LOGITS, TARGETS), rtol=1e-6, atol=1e-6)
    # -1 changes the loss (except AN, whose unknowns already get softplus(z) with weight 1: it equals AN on 0s)
    on_zeros = loss(LOGITS, TARGETS.clamp(min=0), epoch=EPOCH)
    if name == "an":
        torch.testing.assert_close(got, on_zeros, rtol=0, atol=0)
    else:
        assert not torch.isclose(got, on_zeros)


def test_splc_never_corrects_a_verified_negative_into_a_positive():
    """By hand: SPLC (tau 0.6, margin 1, gamma 2) after change_epoch turns the confident unknown at [0, 0] into a
    positive; the same confident logit as a verified negative, at [0, 1], keeps softplus(2.5)."""
    loss = build_loss("splc", 3)
    logits = torch.tensor([[2.5, 2.5, -1.0]])
    targets = torch.tensor([[0.0, -1, 1]])
    p_pos = torch.sigmoid(torch.tensor(-1.0 - 1.0))  # margin on the observed positive
    corrected = -torch.log(torch.sigmoid(torch.tensor(2.5))) * (1 - torch.sigmoid(torch.tensor(2.5))) ** 2
    expected = corrected + F.softplus(torch.tensor(2.5)) - torch.log(p_pos) * (1 - p_pos) ** 2
    torch.testing.assert_close(loss(logits, targets, epoch=EPOCH), expected, rtol=1e-6, atol=1e-6)
    # before change_epoch nothing is corrected: the unknown gets the focal negative term p^2 * softplus(z)
    p = torch.sigmoid(torch.tensor(2.5))
    positive = -torch.log(p_pos) * (1 - p_pos) ** 2
    before = p ** 2 * F.softplus(torch.tensor(2.5)) + F.softplus(torch.tensor(2.5)) + positive
    torch.testing.assert_close(loss(logits, targets, epoch=0), before, rtol=1e-6, atol=1e-6)


def test_weak_assume_negative_gives_a_verified_negative_weight_one():
    loss = make("wan")  # gamma = 1 / (C - 1) = 0.25 on unknowns
    assert loss.gamma == 0.25
    logits = torch.tensor([[0.5, -0.3, 1.5, 2.0, 0.0]])
    targets = torch.tensor([[1.0, 0, -1, 0, 0]])
    sp = F.softplus(logits[0])
    expected = (F.softplus(-logits[0, 0]) + 0.25 * (sp[1] + sp[3] + sp[4]) + sp[2]) / 5
    torch.testing.assert_close(loss(logits, targets), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_without_minus_one_the_results_are_those_of_before(name):
    """0/1 targets: the loss and its gradient are bit-identical to the loss's own terms summed as before (float,
    int and bool targets), and to the same call with bool targets."""
    kw = {"num_train_images": 3} if name == "role" else {}
    loss = make(name, **kw)
    indices = torch.tensor([0, 1, 2])
    targets = TARGETS.clamp(min=0)
    logits = LOGITS.clone().requires_grad_(True)
    got = loss(logits, targets, epoch=EPOCH, indices=indices)
    (grad,) = torch.autograd.grad(got, logits)
    plain = LOGITS.clone().requires_grad_(True)
    terms, reg = loss._loss_terms(plain, targets, EPOCH, indices)  # what forward summed before verified negatives
    n = terms.shape[0] * loss.num_labels
    before = terms.sum() / n + (reg if reg is not None else 0) if loss.reduction == "mean" else (
        terms.sum() + (reg * n if reg is not None else 0))
    (grad_before,) = torch.autograd.grad(before, plain)
    assert torch.equal(got, before) and torch.equal(grad, grad_before)
    for other in (targets.long(), targets.bool()):
        assert torch.equal(loss(LOGITS, other, epoch=EPOCH, indices=indices), got.detach())


def test_without_minus_one_assume_negative_is_binary_cross_entropy():
    targets = TARGETS.clamp(min=0)
    expected = F.binary_cross_entropy_with_logits(LOGITS, targets, reduction="mean")
    torch.testing.assert_close(make("an")(LOGITS, targets), expected, rtol=1e-6, atol=1e-7)


def test_label_sampling_weights_a_sampled_verified_negative_like_its_column():
    loss = make("focal")
    columns, weights = torch.tensor([0, 2, 3]), torch.tensor([1.0, 2.5, 2.5])
    got = loss(LOGITS[:, columns], TARGETS[:, columns], label_weights=weights)
    terms, _ = loss._loss_terms(LOGITS[:, columns], TARGETS[:, columns].clamp(min=0), None, None)
    terms = torch.where(TARGETS[:, columns] == -1, F.softplus(LOGITS[:, columns]), terms)
    torch.testing.assert_close(got, (terms * weights).sum(), rtol=1e-6, atol=1e-6)


def test_label_sampling_counts_only_the_ones_as_observed_positives():
    labels = torch.tensor([[1.0, -1, 0, 0, -1], [0, -1, 0, 0, 0]])
    indices, weights = sample_labels(labels, 2, torch.Generator().manual_seed(0))
    assert indices[0].item() == 0 and set(indices[1:].tolist()) <= {1, 2, 3, 4}
    assert weights.tolist() == [1.0, 2.0, 2.0]  # 4 others, 2 drawn


@pytest.mark.parametrize("name", REFUSING)
def test_losses_that_couple_labels_refuse_verified_negatives(name):
    loss = make(name, **({"num_train_images": 3} if name == "role" else {}))
    with pytest.raises(ValueError) as excinfo:
        loss(LOGITS, TARGETS, epoch=EPOCH, indices=torch.tensor([0, 1, 2]))
    message = one_line(excinfo)
    cls = LOSSES[name].__name__
    assert message.startswith(f"{cls}: {cls} does not take verified negatives") and "targets[0, 2]" in message


@pytest.mark.parametrize("name", TAKING)
def test_other_values_are_still_refused(name):
    targets = TARGETS.clone()
    targets[1, 2] = -2
    with pytest.raises(ValueError, match=r"or -1 \(a verified negative\); got -2.0 at targets\[1, 2\]"):
        make(name)(LOGITS, targets, epoch=EPOCH)


# ----------------------------------------------------------------------------------------------------------------------
# training with use_verified_negatives
# ----------------------------------------------------------------------------------------------------------------------


def test_the_option_refuses_a_loss_that_couples_labels_at_startup(tmp_path):
    from hspnet.training.arguments import TrainingConfig

    with pytest.raises(ValueError, match="use_verified_negatives is on but the loss 'epr' does not take verified"):
        TrainingConfig(**tiny_options(tmp_path, loss="epr", loss_kwargs={}, use_verified_negatives=True))
    TrainingConfig(**tiny_options(tmp_path, loss="epr", loss_kwargs={}))


def test_the_option_needs_negative_labels(tmp_path):
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    options = tiny_options(tmp_path, dataset_options={"num_train": 16, "num_test": 8, "image_size": 32,
                                                      "validation_fraction": 0.25}, use_verified_negatives=True)
    with pytest.raises(ValueError, match="use_verified_negatives is on but the training split has no "
                                         "'negative_labels' column"), one_thread():
        train(TrainingConfig(**options))


def test_training_on_open_images_uses_the_verified_negatives(tmp_path, tiny_clip_dir):
    from safetensors.torch import load_file

    from hspnet.data.batches import make_transform
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.openimages_fixtures import write_openimages

    root = write_openimages(tmp_path / "root")
    weights = {}
    for use in (False, True):
        out = tmp_path / f"out-{use}"
        options = tiny_options(tmp_path, dataset="openimages", dataset_root=root,
                               dataset_options={"on_missing_image": "skip", "validation_fraction": 0,
                                                "clip_model": str(tiny_clip_dir)},
                               protocol="authors", epochs=1, schedule_epochs=1, batch_size=3, ema=False,
                               evaluate_before_training=False, output_dir=str(out), use_verified_negatives=use)
        with one_thread():
            train(TrainingConfig(**options))
        assert json.loads((out / "training_args.json").read_text()).get("use_verified_negatives", use) is use
        weights[use] = load_file(str(out / "model.safetensors"))
    assert weights[False].keys() == weights[True].keys()
    assert any(not torch.equal(weights[False][key], weights[True][key]) for key in weights[False])

    class Processor:  # the transform's targets, without images
        def __call__(self, images, return_tensors):
            return {"pixel_values": torch.zeros(len(images), 3, 1, 1)}

    transform = make_transform(Processor(), 4, verified_negatives=True)
    from PIL import Image

    batch = {"image": [Image.new("RGB", (2, 2))] * 2, "labels": [[0, 1], [2]], "observed_labels": [[0], [2]],
             "negative_labels": [[3, 0], []]}
    out = transform(batch)
    assert out["observed_targets"].tolist() == [[1, 0, 0, -1], [0, 0, 1, 0]]  # an observed positive stays 1
    assert "observed_targets" not in make_transform(Processor(), 4)(batch)
