"""What the losses refuse: bad input raises ONE ValueError naming the argument.

Expected behaviour from the definitions (docs/method.md, section 3.1; Cole et al.): targets are observed labels, 1 =
observed positive and 0 = unobserved, so any other value (2, -1, 0.5, NaN) has no meaning; ROLE keeps one row of
label estimates per training image, so an index outside [0, num_train_images) is another image's row (a negative
index would silently wrap around) or no row at all; epochs are 0-based whole numbers; k (expected positives per image)
lies in (0, C] (section 3.3). The checks hold under torch.compile and cost one synchronisation.
"""

import math

import pytest
import torch

from hspnet.models.hspnet import losses as L
from hspnet.models.hspnet.losses import LOSSES, build_loss, check_loss_spec
from tests.helpers import one_line

NAN, INF = float("nan"), float("inf")


LOGITS = torch.tensor([[0.3, -0.4, 0.8, -1.2], [-0.5, 0.9, 0.1, -0.2]])


TARGETS = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]])


KW = {"epoch": 2, "indices": torch.tensor([0, 3])}


def make(name, num_labels=4, **kw):
    if name == "role":
        kw.setdefault("num_train_images", 4)
    return build_loss(name, num_labels, **kw)


# ----------------------------------------------------------------------------------------------------------------------
# the registry: names and parameters
# ----------------------------------------------------------------------------------------------------------------------


def test_build_loss_errors():
    with pytest.raises(ValueError) as e:
        build_loss("splcc", 3)
    assert "splcc" in str(e.value) and "splc" in str(e.value) and "ll_r" in str(e.value)
    with pytest.raises(ValueError) as e:
        build_loss("splc", 3, taus=0.5)
    assert "'taus'" in str(e.value) and "tau" in str(e.value)
    with pytest.raises(ValueError, match="num_train_images"):
        build_loss("role", 3)
    with pytest.raises(ValueError, match="reduction"):
        build_loss("an", 3, reduction="none")
    # case / dash normalisation
    assert isinstance(build_loss("LL-R", 3), L.LargeLossRejectionLoss)
    assert build_loss("splc", 3, tau=0.7).tau == 0.7


# ----------------------------------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("bad", [2.0, -2.0, 0.5, NAN])  # -1 (a verified negative): tests/test_verified_negatives.py
def test_targets_other_than_0_or_1_are_refused(name, bad):
    targets = TARGETS.clone()
    targets[1, 2] = bad
    with pytest.raises(ValueError) as excinfo:
        make(name)(LOGITS, targets, **KW)
    message = one_line(excinfo)
    assert "targets must hold only 0 and 1" in message and "targets[1, 2]" in message, message
    assert message.startswith(f"{LOSSES[name].__name__}: "), message


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8])
def test_integer_targets_out_of_range_are_refused(dtype):
    targets = TARGETS.to(dtype)
    targets[0, 3] = 2
    with pytest.raises(ValueError, match=r"targets must hold only 0 and 1.*got 2 at targets\[0, 3\]"):
        make("an")(LOGITS, targets)


def test_check_inputs_false_skips_the_value_check_only():
    loss = make("an")
    loss.check_inputs = False
    targets = TARGETS.clone()
    targets[0, 1] = 2
    # AN with y = 2 on entry (0, 1): -(2 log sig(x) - 1 log sig(-x)); no error, the caller opted out
    assert math.isfinite(loss(LOGITS, targets).item())
    with pytest.raises(ValueError, match="targets must have the shape"):
        loss(LOGITS, TARGETS[:, :3])


# ----------------------------------------------------------------------------------------------------------------------
# shapes and types
# ----------------------------------------------------------------------------------------------------------------------


def test_shape_errors():
    loss = build_loss("an", 3)
    with pytest.raises(ValueError):
        loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        loss(torch.zeros(2, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "logits, targets, fragment",
    [
        (LOGITS, TARGETS[:, :3], "targets must have the shape of logits (2, 4), got (2, 3)"),
        (LOGITS[:, :3], TARGETS[:, :3], "logits must have shape (B, 4) (num_labels=4), got (2, 3)"),
        (LOGITS[0], TARGETS[0], "logits must have shape (B, 4)"),
        (LOGITS[:0], TARGETS[:0], "logits is an empty batch"),
        (LOGITS.tolist(), TARGETS, "logits must be a torch.Tensor"),
        (LOGITS, TARGETS.tolist(), "targets must be a torch.Tensor"),
    ],
)
def test_shape_and_type_errors_name_the_argument(logits, targets, fragment):
    with pytest.raises(ValueError) as excinfo:
        make("splc")(logits, targets, epoch=0)
    assert fragment in one_line(excinfo)


# ----------------------------------------------------------------------------------------------------------------------
# ROLE indices
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "indices, fragment",
    [
        (torch.tensor([0, 4]), "indices must be training-set rows in [0, 4) (num_train_images=4); got 4 at indices[1]"),
        (torch.tensor([-1, 2]), "got -1 at indices[0]"),
        (torch.tensor([0.0, 1.0]), "indices must be an integer tensor of shape (2,), got torch.float32"),
        (torch.tensor([True, False]), "indices must be an integer tensor"),
        (torch.tensor([[0, 1]]), "indices must have shape (2,), got (1, 2)"),
        ([0, 1], "indices must be an integer tensor of shape (2,), got list"),
    ],
)
def test_role_indices_are_checked(indices, fragment):
    with pytest.raises(ValueError) as excinfo:
        make("role")(LOGITS, TARGETS, indices=indices)
    message = one_line(excinfo)
    assert message.startswith("ROLELoss: ") and fragment in message, message


def test_role_last_row_is_valid_and_observed_targets_are_checked():
    loss = make("role")
    assert math.isfinite(loss(LOGITS, TARGETS, indices=torch.tensor([3, 0], dtype=torch.int32)).item())
    observed = torch.zeros(4, 4)
    observed[1, 1] = 2
    with pytest.raises(ValueError, match="observed_targets must hold only 0 and 1"):
        loss.initialize_observed(observed)


# ----------------------------------------------------------------------------------------------------------------------
# epochs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["splc", "ll_r", "an"])
@pytest.mark.parametrize("bad", [-1, True, 1.5, "1", NAN, [1]])
def test_bad_epochs_are_refused(name, bad):
    loss = make(name)
    with pytest.raises(ValueError, match="epoch must be"):
        loss(LOGITS, TARGETS, epoch=bad)
    with pytest.raises(ValueError, match="epoch must be"):
        loss.set_epoch(bad)


def test_ll_r_rejection_rate_checks_the_epoch():
    loss = make("ll_r", delta_rel=0.25)
    assert [loss.rejection_rate(e) for e in (0, 1, 3, 4, 9)] == [0.0, 0.25, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="epoch must be an int >= 0, got -1"):
        loss.rejection_rate(-1)


# ----------------------------------------------------------------------------------------------------------------------
# constructor parameters
# ----------------------------------------------------------------------------------------------------------------------


BAD_PARAMS = [
    ("splc", "tau", 0.0, "tau must be a finite number in (0, 1), got 0.0"),
    ("splc", "tau", 1.0, "in (0, 1)"),
    ("splc", "tau", NAN, "got nan"),
    ("splc", "tau", "0.6", "got '0.6' (str)"),
    ("splc", "margin", INF, "margin must be a finite number, got inf"),
    ("splc", "gamma", -1.0, "gamma must be a finite number >= 0, got -1.0"),
    ("splc", "gamma", NAN, "got nan"),
    ("splc", "change_epoch", -1, "change_epoch must be an int >= 0, got -1"),
    ("splc", "change_epoch", 1.5, "got 1.5 (float)"),
    ("splc", "change_epoch", True, "got True (bool)"),
    ("splc", "reduction", "none", "reduction must be one of ('sum', 'mean'), got 'none'"),
    ("an_ls", "ls_coef", 1.0, "ls_coef must be a finite number in [0, 1), got 1.0"),
    ("an_ls", "ls_coef", -0.1, "in [0, 1)"),
    ("wan", "gamma", -0.5, "gamma must be a finite number >= 0, got -0.5"),
    ("wan", "gamma", NAN, "got nan"),
    ("epr", "expected_num_pos", 0, "expected_num_pos must be a finite number > 0, got 0"),
    ("epr", "expected_num_pos", -1.5, "> 0"),
    ("epr", "expected_num_pos", NAN, "got nan"),
    ("epr", "expected_num_pos", 4.5, "must be in (0, num_labels=4], got 4.5"),
    ("role", "num_train_images", 0, "num_train_images must be an int >= 1, got 0"),
    ("role", "num_train_images", 2.5, "got 2.5 (float)"),
    ("role", "num_train_images", "5", "got '5' (str)"),
    ("role", "num_train_images", True, "got True (bool)"),
    ("role", "expected_num_pos", 5, "num_labels=4"),
    ("role", "init_width", 0.5, "init_width must be a finite number in (0, 0.5), got 0.5"),
    ("role", "init_positive_prob", 1.0, "init_positive_prob must be a finite number in (0, 1), got 1.0"),
    ("role", "init_seed", 1.5, "init_seed must be an int, got 1.5"),
    ("em", "alpha", -0.1, "alpha must be a finite number >= 0, got -0.1"),
    ("em", "alpha", NAN, "got nan"),
    ("ll_r", "delta_rel", NAN, "delta_rel must be a finite number in [0, 1], got nan"),
    ("ll_r", "delta_rel", -0.1, "in [0, 1]"),
    ("ll_r", "delta_rel", 1.5, "in [0, 1]"),
    ("ll_r", "mode", "rejct", "mode must be one of ('reject', 'correct'), got 'rejct'"),
    ("hill", "lamb", NAN, "lamb must be a finite number, got nan"),
    ("hill", "margin", "1", "margin must be a finite number, got '1' (str)"),
    ("hill", "gamma", -2.0, ">= 0"),
    ("focal", "gamma", INF, "gamma must be a finite number >= 0, got inf"),
    ("focal", "alpha", 1.5, "alpha must be a finite number in [0, 1], got 1.5"),
    ("asl", "gamma_neg", -1.0, "gamma_neg must be a finite number >= 0"),
    ("asl", "gamma_pos", NAN, "gamma_pos must be a finite number >= 0, got nan"),
    ("asl", "clip", 1.0, "clip must be a finite number in [0, 1), got 1.0"),
    ("asl", "eps", 0.0, "eps must be a finite number in (0, 1), got 0.0"),
    ("asl", "detach_weight", "yes", "detach_weight must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("name, param, value, fragment", BAD_PARAMS, ids=[f"{n}.{p}={v!r}" for n, p, v, _ in BAD_PARAMS])
def test_bad_constructor_parameters_name_class_parameter_and_value(name, param, value, fragment):
    with pytest.raises(ValueError) as excinfo:
        make(name, **{param: value})
    message = one_line(excinfo)
    assert message.startswith(f"{LOSSES[name].__name__}: ") and fragment in message, message
    # the same check without building the loss, with and without the number of labels
    with pytest.raises(ValueError) as excinfo:
        check_loss_spec(name, {param: value}, num_labels=4)
    assert fragment in one_line(excinfo)


@pytest.mark.parametrize("num_labels", [0, -3, True, 2.5, "3", None])
def test_num_labels_must_be_a_positive_int(num_labels):
    with pytest.raises(ValueError, match="num_labels must be a positive int"):
        build_loss("an", num_labels)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("epr", {"expected_num_pos": 4}),  # k = C: every label positive
        ("role", {"expected_num_pos": 4, "init_seed": -7}),
        ("splc", {"tau": 0.5, "margin": -0.5, "change_epoch": 0}),
        ("ll_r", {"delta_rel": 1}),
        ("ll_r", {"delta_rel": 0.0}),
        ("asl", {"clip": None}),
        ("asl", {"clip": 0}),
        ("focal", {"alpha": 0}),
        ("wan", {"gamma": None}),
    ],
)
def test_edge_parameters_are_accepted(name, kwargs):
    loss = make(name, **kwargs)
    assert math.isfinite(loss(LOGITS, TARGETS, **KW).item())


def test_default_expected_positives_above_num_labels_is_refused_with_a_hint():
    # the default k = 2.9 (COCO) is impossible with 2 labels: the regulariser would chase an unreachable target
    with pytest.raises(ValueError, match=r"expected_num_pos .* must be in \(0, num_labels=2\], got 2.9"):
        build_loss("epr", 2)
    assert build_loss("epr", 2, expected_num_pos=1.5).expected_num_pos == 1.5


def test_check_loss_spec_checks_values_without_allocating():
    # ROLE would allocate a (num_train_images, C) matrix: the spec check must not
    assert check_loss_spec("role", {"num_train_images": 10**12, "expected_num_pos": 1.0}) == "role"
    with pytest.raises(ValueError, match="the parameters of loss 'splc' must be a dict"):
        check_loss_spec("splc", [("tau", 0.5)])
    with pytest.raises(ValueError, match="num_labels must be an int >= 1"):
        check_loss_spec("epr", {}, num_labels=0)
    # without num_labels the upper bound of k is unknown (checked when the loss is built)
    assert check_loss_spec("epr", {"expected_num_pos": 10.0}) == "epr"


# ----------------------------------------------------------------------------------------------------------------------
# torch.compile, and the cost of the checks
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["an", "splc", "role"])
def test_checks_do_not_break_the_compiled_graph_and_still_fire(name):
    loss = make(name)
    kw = {"splc": {"epoch": 1}, "role": {"indices": torch.tensor([0, 3])}}.get(name, {})
    explanation = torch._dynamo.explain(loss)(LOGITS, TARGETS, **kw)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    assert compiled(LOGITS, TARGETS, **kw).item() == pytest.approx(loss(LOGITS, TARGETS, **kw).item())
    bad = TARGETS.clone()
    bad[0, 1] = 2
    # under compilation the check is torch._assert_async: RuntimeError with the same message
    with pytest.raises(RuntimeError, match="targets must hold only 0 and 1"):
        compiled(LOGITS, bad, **kw)
    torch._dynamo.reset()


def test_value_check_is_one_synchronisation(monkeypatch):
    # all value checks of a call are fused into ONE host read (tolist / bool of a single tensor)
    calls = []
    real_stack = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        calls.append(len(tensors))
        return real_stack(tensors, *args, **kwargs)

    monkeypatch.setattr(L.torch, "stack", counting_stack)
    make("role")(LOGITS, TARGETS, indices=torch.tensor([0, 3]))
    assert calls == [2]  # targets and indices flags stacked, read once
