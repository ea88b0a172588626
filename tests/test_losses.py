"""The losses of `hspnet.models.hspnet.losses`, worked out by hand (docs/method.md, section 3).

Every expected value is written out with math.log / math.exp from the loss's formula (section 3.2 for SPLC, 3.3 for
the others, the conventions of 3.1), never captured from the implementation. What the losses refuse (bad targets,
shapes, indices, epochs, parameters) is tests/test_loss_inputs.py.
"""

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

from hspnet.models.hspnet import losses as L
from hspnet.models.hspnet.losses import LOSS_DEFAULTS, LOSSES, build_loss


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


def value(loss, logits, targets, **kw):
    return loss(T(logits), T(targets), **kw).item()


def grad(loss, logits, targets, **kw):
    x = T(logits).requires_grad_(True)
    loss(x, T(targets), **kw).backward()
    assert torch.isfinite(x.grad).all()
    return x.grad[0].tolist()


def make(name, num_labels=4, **kw):
    if name == "role":
        kw.setdefault("num_train_images", 4)
    return build_loss(name, num_labels, **kw)


# ----------------------------------------------------------------------------------------------------------------------
# module constraints and registry
# ----------------------------------------------------------------------------------------------------------------------


def test_losses_modules_import_only_stdlib_torch_and_each_other():
    """losses.py ships as remote code with the siblings it imports relatively; together they need only torch."""
    folder = Path(L.__file__).parent
    siblings = {"losses_base", "losses_cole"}
    for name in ["losses", *sorted(siblings)]:
        roots, relative = set(), set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                roots.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module, (name, "only `from .sibling import ...`")
                relative.add(node.module)
            elif isinstance(node, ast.ImportFrom):
                roots.add(node.module.split(".")[0])
        allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
        assert roots <= allowed, (name, roots - allowed)
        assert relative <= siblings - {name}, (name, relative)
    imported = {f"{node.module}" for node in ast.walk(ast.parse(Path(L.__file__).read_text()))
                if isinstance(node, ast.ImportFrom) and node.level}  # fmt: skip
    assert imported == siblings  # every sibling is reached from losses.py, so save_pretrained copies it


def test_registry_names_and_defaults_match_constructors():
    assert set(LOSSES) == {"splc", "an", "an_ls", "wan", "epr", "role", "em", "ll_r", "hill", "focal", "asl"}
    assert set(LOSS_DEFAULTS) == set(LOSSES)
    for name, cls in LOSSES.items():
        assert cls.__doc__ and len(cls.__doc__) > 100, name
    # the documented defaults (README table, the papers' values), written out independently of the constructors
    documented = {
        "an": {"reduction": "mean"},
        "an_ls": {"ls_coef": 0.1, "reduction": "mean"},
        "wan": {"gamma": None, "reduction": "mean"},
        "epr": {"expected_num_pos": 2.9, "reduction": "mean"},
        "em": {"alpha": 0.1, "reduction": "mean"},
        "ll_r": {"delta_rel": 0.002, "mode": "reject", "reduction": "mean"},
        "hill": {"lamb": 1.5, "margin": 1.0, "gamma": 2.0, "reduction": "sum"},
        "focal": {"gamma": 2.0, "alpha": None, "reduction": "sum"},
        "asl": {"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05, "eps": 1e-8, "detach_weight": False,
                "reduction": "sum"},
    }
    for name, values in documented.items():
        assert LOSS_DEFAULTS[name] == values, name
    assert LOSS_DEFAULTS["role"]["expected_num_pos"] == 2.9 and LOSS_DEFAULTS["role"]["num_train_images"] is None


def test_splc_reference_defaults():
    assert LOSS_DEFAULTS["splc"] == {"tau": 0.6, "margin": 1.0, "gamma": 2.0, "change_epoch": 1, "reduction": "sum"}
    loss = build_loss("splc", 5)
    assert (loss.tau, loss.margin, loss.gamma, loss.change_epoch, loss.reduction) == (0.6, 1.0, 2.0, 1, "sum")


# ----------------------------------------------------------------------------------------------------------------------
# SPLC (docs/method.md, section 3.2)
# ----------------------------------------------------------------------------------------------------------------------


def test_splc_by_hand_before_and_after_change_epoch():
    loss = build_loss("splc", 3)  # tau .6, margin 1, gamma 2, change_epoch 1, sum
    logits, targets = [[2.0, 1.0, -1.0]], [[1, 0, 0]]
    # margin only on the observed positive: z = [2-1, 1, -1] = [1, 1, -1]
    # e0 (y=1): -log sig(1) * (1 - sig(1))^2
    # e1 (y=0): -log sig(-1) * sig(1)^2
    # e2 (y=0): -log sig(1) * sig(-1)^2        (log sigmoid(-z) with z=-1)
    e0 = -math.log(sig(1)) * (1 - sig(1)) ** 2
    e1 = -math.log(sig(-1)) * sig(1) ** 2
    e2 = -math.log(sig(1)) * sig(-1) ** 2
    assert value(loss, logits, targets, epoch=0) == pytest.approx(e0 + e1 + e2, rel=1e-6)
    # epoch 1 >= change_epoch: sig(1) = 0.731 > 0.6 -> e1 becomes a pseudo-positive;
    # sig(-1) = 0.269 <= 0.6 -> e2 stays negative. No margin on the pseudo-positive.
    e1_pos = -math.log(sig(1)) * (1 - sig(1)) ** 2
    assert value(loss, logits, targets, epoch=1) == pytest.approx(e0 + e1_pos + e2, rel=1e-6)
    # mean divides by B*C = 3
    mean = build_loss("splc", 3, reduction="mean")
    assert value(mean, logits, targets, epoch=1) == pytest.approx((e0 + e1_pos + e2) / 3, rel=1e-6)


def test_splc_tau_is_strict_and_margin_only_on_observed():
    loss = build_loss("splc", 2, tau=sig(0.5))
    # unobserved logit exactly at the threshold: sig(0.5) > tau is False -> stays negative
    got = value(loss, [[3.0, 0.5]], [[1, 0]], epoch=5)
    e0 = -math.log(sig(2.0)) * (1 - sig(2.0)) ** 2
    e1 = -math.log(sig(-0.5)) * sig(0.5) ** 2
    assert got == pytest.approx(e0 + e1, rel=1e-5)


def test_splc_gradient_sign_and_focal_weight_not_detached():
    loss = build_loss("splc", 2)
    g = grad(loss, [[2.0, 1.0]], [[1, 0]], epoch=0)
    assert g[0] < 0 < g[1]
    # observed positive, z = 2 - 1 = 1, p = sig(1): L = -log(p) (1-p)^2
    # dL/dz = -(1-p)^3 + 2 p (1-p)^2 log p   (second term: derivative of the weight)
    p = sig(1)
    assert g[0] == pytest.approx(-((1 - p) ** 3) + 2 * p * (1 - p) ** 2 * math.log(p), rel=1e-5)
    # after change_epoch the pseudo-positive is pushed up
    g1 = grad(loss, [[2.0, 1.0]], [[1, 0]], epoch=1)
    assert g1[1] < 0


def test_splc_epoch_is_required_and_checkpointed():
    loss = build_loss("splc", 2)
    with pytest.raises(ValueError, match="epoch"):
        loss(T([[0.0, 1.0]]), T([[1, 0]]))
    loss.set_epoch(3)
    assert loss.state_dict()["current_epoch"].item() == 3
    fresh = build_loss("splc", 2)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.get_epoch() == 3
    # the stored epoch (3 >= 1) switches the correction on
    assert value(fresh, [[2.0, 1.0]], [[1, 0]]) == pytest.approx(value(fresh, [[2.0, 1.0]], [[1, 0]], epoch=1))
    # an explicit epoch is recorded
    fresh(T([[2.0, 1.0]]), T([[1, 0]]), epoch=0)
    assert fresh.state_dict()["current_epoch"].item() == 0


# ----------------------------------------------------------------------------------------------------------------------
# Cole et al. baselines (docs/method.md, section 3.3)
# ----------------------------------------------------------------------------------------------------------------------


def test_an_by_hand():
    # -log sig(0.5) - log(1 - sig(-1)), mean over B*C = 2
    expected = -math.log(sig(0.5)) - math.log(1 - sig(-1.0))
    assert value(build_loss("an", 2), [[0.5, -1.0]], [[1, 0]]) == pytest.approx(expected / 2, rel=1e-6)
    assert value(build_loss("an", 2, reduction="sum"), [[0.5, -1.0]], [[1, 0]]) == pytest.approx(expected, rel=1e-6)


def test_an_ls_by_hand():
    eps = 0.1
    pos = (1 - eps) * -math.log(sig(0.5)) + eps * -math.log(1 - sig(0.5))
    neg = (1 - eps) * -math.log(1 - sig(-1.0)) + eps * -math.log(sig(-1.0))
    assert value(build_loss("an_ls", 2), [[0.5, -1.0]], [[1, 0]]) == pytest.approx((pos + neg) / 2, rel=1e-6)


def test_wan_by_hand():
    # C = 3 -> gamma = 1/(C-1) = 1/2
    loss = build_loss("wan", 3)
    assert loss.gamma == pytest.approx(0.5)
    expected = -math.log(sig(0.5)) + 0.5 * -math.log(1 - sig(-1.0)) + 0.5 * -math.log(1 - sig(2.0))
    assert value(loss, [[0.5, -1.0, 2.0]], [[1, 0, 0]]) == pytest.approx(expected / 3, rel=1e-6)


def test_epr_by_hand():
    loss = build_loss("epr", 2, expected_num_pos=1.5)
    logits, targets = [[1.0, 0.0], [0.0, -1.0]], [[1, 0], [0, 1]]
    # observed positives only: -log sig(1) - log sig(-1), divided by B*C = 4
    main = (-math.log(sig(1.0)) - math.log(sig(-1.0))) / 4
    # k_hat = mean_b sum_c p = ((sig(1) + 1/2) + (1/2 + sig(-1))) / 2 = 1 (sig(1) + sig(-1) = 1)
    k_hat = ((sig(1.0) + 0.5) + (0.5 + sig(-1.0))) / 2
    assert k_hat == pytest.approx(1.0)
    reg = ((k_hat - 1.5) / 2) ** 2  # = 0.0625
    got = loss(T(logits), T(targets)).item()
    assert got == pytest.approx(main + reg, rel=1e-6)
    total = build_loss("epr", 2, expected_num_pos=1.5, reduction="sum")(T(logits), T(targets)).item()
    assert total == pytest.approx(4 * (main + reg), rel=1e-6)
    # too few expected positives -> the regulariser pushes the unobserved logits up
    x = T(logits).requires_grad_(True)
    loss(x, T(targets)).backward()
    assert x.grad[0, 1] < 0 and x.grad[1, 0] < 0


def test_role_by_hand_and_gradients_are_row_local():
    loss = build_loss("role", 2, num_train_images=3, expected_num_pos=1.5)
    with torch.no_grad():
        loss.label_logits.copy_(T([[0.0, 0.0], [2.0, -2.0], [5.0, 5.0]]))
    logits, targets, idx = T([[1.0, -1.0]]), T([[1, 0]]), torch.tensor([1])
    p0, p1, q0, q1 = sig(1.0), sig(-1.0), sig(2.0), sig(-2.0)

    def bce(a, t):
        return -(t * math.log(a) + (1 - t) * math.log(1 - a))

    # entry (y=1): 1/2 [-log p - log q + BCE(p, q) + BCE(q, p)]; entry (y=0): 1/2 [BCE(p, q) + BCE(q, p)]
    e0 = 0.5 * (-math.log(p0) - math.log(q0) + bce(p0, q0) + bce(q0, p0))
    e1 = 0.5 * (bce(p1, q1) + bce(q1, p1))
    # R_k: sum_c p = sum_c q = 1 for this batch: ((1 - 1.5) / 2)^2 = 0.0625 for both
    # (k = expected_num_pos must be in (0, C], docs/method.md section 3.3)
    reg = 0.5 * (((p0 + p1 - 1.5) / 2) ** 2 + ((q0 + q1 - 1.5) / 2) ** 2)
    assert reg == pytest.approx(0.0625)
    x = logits.clone().requires_grad_(True)
    out = loss(x, targets, indices=idx)
    assert out.item() == pytest.approx((e0 + e1) / 2 + reg, rel=1e-6)
    out.backward()
    g = loss.label_logits.grad
    assert torch.isfinite(g).all() and torch.isfinite(x.grad).all()
    assert (g[0] == 0).all() and (g[2] == 0).all() and (g[1] != 0).all()
    assert x.grad[0, 0] < 0  # observed positive pushed up


def test_role_requires_indices_and_initialisation():
    loss = build_loss("role", 3, num_train_images=5, init_seed=1)
    assert L.ROLELoss.requires_indices is True
    with pytest.raises(ValueError, match="indices"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3))
    bound = math.log(0.6 / 0.4)  # logit(0.5 + 0.1)
    assert loss.label_logits.abs().max().item() <= bound + 1e-6
    assert isinstance(loss.label_logits, torch.nn.Parameter)
    assert torch.equal(loss.label_logits, build_loss("role", 3, num_train_images=5, init_seed=1).label_logits)
    observed = torch.zeros(5, 3)
    observed[2, 1] = 1
    loss.initialize_observed(observed)
    assert loss.estimated_labels[2, 1].item() == pytest.approx(0.995, abs=1e-6)
    # state_dict round trip keeps the learnt estimates
    fresh = build_loss("role", 3, num_train_images=5, init_seed=7)
    fresh.load_state_dict(loss.state_dict())
    assert torch.equal(fresh.label_logits, loss.label_logits)


# ----------------------------------------------------------------------------------------------------------------------
# EM, LL-R, Hill, focal, ASL (docs/method.md, section 3.3)
# ----------------------------------------------------------------------------------------------------------------------


def test_em_by_hand_and_gradient_signs():
    loss = build_loss("em", 3)  # alpha 0.1
    # y=1: -log sig(1); y=0: -alpha * H(p), H(p) = -p log p - (1-p) log(1-p)
    h0 = math.log(2.0)  # H(1/2)
    h2 = -(sig(-2) * math.log(sig(-2)) + sig(2) * math.log(sig(2)))
    expected = -math.log(sig(1.0)) - 0.1 * h0 - 0.1 * h2
    assert value(loss, [[1.0, 0.0, -2.0]], [[1, 0, 0]]) == pytest.approx(expected / 3, rel=1e-6)
    # unobserved labels are pushed towards p = 1/2 from both sides
    g = grad(loss, [[1.0, 2.0, -2.0]], [[1, 0, 0]])
    assert g[0] < 0 and g[1] > 0 and g[2] < 0
    assert grad(loss, [[1.0, 0.0, 0.0]], [[1, 0, 0]])[1] == pytest.approx(0.0, abs=1e-7)


def test_ll_r_by_hand():
    loss = build_loss("ll_r", 5, delta_rel=0.25, reduction="sum")
    logits, targets = [[0.0, 3.0, 1.0, -1.0, 2.0]], [[1, 0, 0, 0, 0]]
    # AN terms: -log sig(0) = log 2; unobserved -log(1 - sig(z)) = log(1 + e^z)
    an = [math.log(2.0)] + [math.log(1 + math.exp(z)) for z in (3.0, 1.0, -1.0, 2.0)]
    # epoch 0: rate 0, nothing rejected
    assert value(loss, logits, targets, epoch=0) == pytest.approx(sum(an), rel=1e-6)
    # epoch 1: rate 0.25 of U = 4 unobserved -> 1 rejected: the largest loss (z = 3)
    assert value(loss, logits, targets, epoch=1) == pytest.approx(sum(an) - an[1], rel=1e-6)
    # epoch 2: rate 0.5 -> 2 rejected (z = 3 and z = 2)
    assert value(loss, logits, targets, epoch=2) == pytest.approx(sum(an) - an[1] - an[4], rel=1e-6)
    g = grad(loss, logits, targets, epoch=2)
    assert g[1] == 0.0 and g[4] == 0.0 and g[2] > 0 and g[0] < 0
    # LL-Ct: the rejected entry is taken as positive: -log sig(3) = log(1 + e^-3)
    ct = build_loss("ll_r", 5, delta_rel=0.25, mode="correct", reduction="sum")
    assert value(ct, logits, targets, epoch=1) == pytest.approx(
        sum(an) - an[1] + math.log(1 + math.exp(-3.0)), rel=1e-6
    )
    # mean divides by B*C = 5 (rejected entries included)
    mean = build_loss("ll_r", 5, delta_rel=0.25)
    assert value(mean, logits, targets, epoch=1) == pytest.approx((sum(an) - an[1]) / 5, rel=1e-6)


def test_ll_r_count_and_epoch_required():
    loss = build_loss("ll_r", 11, delta_rel=0.1)
    # epoch 3: rate 0.3 of U = 10 -> exactly 3 rejected (0.3 * 10 must not round up to 4)
    x = torch.linspace(-2, 2, 11).unsqueeze(0).requires_grad_(True)
    y = torch.zeros(1, 11)
    y[0, 0] = 1
    loss(x, y, epoch=3).backward()
    assert int((x.grad == 0).sum()) == 3
    assert (x.grad[0, -3:] == 0).all()  # the three largest logits
    with pytest.raises(ValueError, match="epoch"):
        build_loss("ll_r", 2)(torch.zeros(1, 2), torch.zeros(1, 2))
    fresh = build_loss("ll_r", 11, delta_rel=0.1)
    fresh.load_state_dict(loss.state_dict())
    assert fresh.get_epoch() == 3


def test_hill_by_hand():
    loss = build_loss("hill", 2)  # lambda 1.5, margin 1, gamma 2, sum
    # pos (x = 2): p_m = sig(2 - 1): -(1 - p_m)^2 log p_m ; neg (x = 0): (1.5 - 1/2) (1/2)^2 = 0.25
    pos = -((1 - sig(1.0)) ** 2) * math.log(sig(1.0))
    assert value(loss, [[2.0, 0.0]], [[1, 0]]) == pytest.approx(pos + 0.25, rel=1e-6)
    g = grad(loss, [[2.0, 0.0]], [[1, 0]])
    # d/dx (lambda - p) p^2 = p (1-p) (2 lambda p - 3 p^2) = 1/4 * (1.5 - 0.75) = 0.1875 at x = 0
    assert g[1] == pytest.approx(0.1875, rel=1e-5)
    assert g[0] < 0


def test_focal_by_hand():
    pos = -((1 - sig(1.0)) ** 2) * math.log(sig(1.0))
    neg = -(sig(-0.5) ** 2) * math.log(1 - sig(-0.5))
    assert value(build_loss("focal", 2), [[1.0, -0.5]], [[1, 0]]) == pytest.approx(pos + neg, rel=1e-6)
    balanced = build_loss("focal", 2, alpha=0.25)
    assert value(balanced, [[1.0, -0.5]], [[1, 0]]) == pytest.approx(0.25 * pos + 0.75 * neg, rel=1e-6)
    g = grad(build_loss("focal", 2), [[1.0, -0.5]], [[1, 0]])
    assert g[0] < 0 < g[1]


def test_asl_by_hand():
    loss = build_loss("asl", 3)  # gamma_neg 4, gamma_pos 1, clip 0.05, sum
    # pos: -(1 - p) log p at x = 1
    pos = -(1 - sig(1.0)) * math.log(sig(1.0))
    # neg x = -1: p_m = sig(-1) - 0.05 ; -(p_m^4) log(1 - p_m)
    pm = sig(-1.0) - 0.05
    neg1 = -(pm**4) * math.log(1 - pm)
    # neg x = -4: sig(-4) = 0.018 < 0.05 -> p_m = 0: no loss and no gradient
    assert sig(-4.0) < 0.05
    assert value(loss, [[1.0, -1.0, -4.0]], [[1, 0, 0]]) == pytest.approx(pos + neg1, rel=1e-5)
    g = grad(loss, [[1.0, -1.0, -4.0]], [[1, 0, 0]])
    assert g[0] < 0 and g[1] > 0 and g[2] == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# properties common to every loss
# ----------------------------------------------------------------------------------------------------------------------


LOGITS = torch.tensor([[0.3, -0.4, 0.8, -1.2], [-0.5, 0.9, 0.1, -0.2]])


TARGETS = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]])


KW = {"epoch": 2, "indices": torch.tensor([0, 3])}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_sum_is_bc_times_mean(name):
    kw = {"epoch": 2, "indices": torch.tensor([0, 3])}
    s = make(name, 4, reduction="sum")(LOGITS, TARGETS, **kw).item()
    m = make(name, 4, reduction="mean")(LOGITS, TARGETS, **kw).item()
    assert s == pytest.approx(8 * m, rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_finite_and_observed_positive_pushed_up(name):
    loss = make(name, 4)
    x = LOGITS.clone().requires_grad_(True)
    out = loss(x, TARGETS, epoch=2, indices=torch.tensor([0, 3]))
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, 0] < 0 and x.grad[1, 1] < 0


@pytest.mark.parametrize("name", ["an", "an_ls", "wan", "hill", "focal", "asl", "splc", "ll_r"])
def test_assumed_negatives_pushed_down(name):
    loss = make(name, 4)
    x = LOGITS.clone().requires_grad_(True)
    loss(x, TARGETS, epoch=0).backward()
    unobserved = TARGETS == 0
    assert (x.grad[unobserved] > 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    loss = make(name, 4)
    kw = {"epoch": 2, "indices": torch.tensor([0, 3])}
    x = LOGITS.to(dtype)
    out = loss(x, TARGETS.to(dtype), **kw)
    assert out.dtype == torch.float32
    ref = loss(x.float(), TARGETS, **kw)
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bool_and_integer_targets_equal_float_targets(name):
    expected = make(name)(LOGITS, TARGETS, **KW).item()
    assert make(name)(LOGITS, TARGETS.bool(), **KW).item() == pytest.approx(expected, rel=1e-6)
    assert make(name)(LOGITS, TARGETS.long(), **KW).item() == pytest.approx(expected, rel=1e-6)


def test_whole_float_epoch_equals_int_epoch():
    # transformers.TrainerState.epoch is a float (2.0 at the start of the third epoch)
    loss = make("splc")
    assert loss(LOGITS, TARGETS, epoch=2.0).item() == loss(LOGITS, TARGETS, epoch=2).item()
    assert loss.get_epoch() == 2


def test_loss_is_computed_without_autocast():
    loss = make("splc")
    expected = loss(LOGITS, TARGETS, epoch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(LOGITS, TARGETS, epoch=1)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
