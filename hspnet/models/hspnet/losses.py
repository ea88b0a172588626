"""Losses for multi-label learning from single positive labels.

This module imports only the standard library, ``torch`` and its two siblings
(``losses_base.py``: the base class and argument checks; ``losses_cole.py``:
the baselines of Cole et al.), relatively: the model file imports it with
``from .losses import build_loss, check_loss_spec`` and the three files are
shipped to the Hugging Face Hub as remote code next to saved weights.

Conventions shared by every loss
--------------------------------
* ``forward(logits, targets, *, epoch=None, indices=None)``.
  ``logits``: (B, C) raw scores before the sigmoid. ``targets``: (B, C) observed
  labels, 1 = observed positive, 0 = unobserved, -1 = verified negative.
* Verified negatives (-1, e.g. Open Images' human-verified negatives): every
  loss that is a sum of per-entry terms (SPLC, AN, AN-LS, WAN, EM, Hill,
  focal, ASL) gives such an entry the plain negative log-likelihood
  ``softplus(z) = -log(1 - sigmoid(z))`` with weight 1, in place of its own
  treatment of unobserved labels (no label correction, smoothing, down-weighting
  or focusing), in the same float32 and reduction conventions (B*C entries).
  Targets without -1 give exactly the results of 0/1 targets. EPR, ROLE and
  LL-R (batch-level or per-image terms: ``supports_verified_negatives`` False)
  refuse -1 with a ``ValueError``.
* Inputs are checked, every call, and a bad one raises ``ValueError`` naming
  the argument: ``logits`` / ``targets`` must be tensors of the same shape
  (B, C) with B >= 1 and C = ``num_labels``; ``targets`` must hold only 0 and
  1, or -1 where the loss takes verified negatives (2, 0.5 or NaN are refused); ``indices`` (ROLE) must be an integer
  tensor of shape (B,) with values in [0, num_train_images); ``epoch`` a whole
  number >= 0. The value checks are ONE fused reduction and ONE host-device
  synchronisation per call (cheap next to the model; the training loop of this
  package synchronises every step anyway to log the loss). Under
  ``torch.compile`` they are done with ``torch._assert_async`` instead (no
  graph break): a bad value then raises ``RuntimeError`` with the same
  message (on CUDA, a device-side assert that ends the process).
  ``loss.check_inputs = False`` switches the value checks off (the shape checks
  stay). Non-finite logits are not refused: they give a non-finite loss, which
  is visible.
* Every constructor argument is checked too (type, finiteness and range:
  e.g. SPLC's ``tau`` in (0, 1), ``expected_num_pos`` in (0, num_labels],
  ``change_epoch`` an int >= 0; a bool is not an int, a string is not a
  number); :func:`check_loss_spec` runs the same checks without building the
  loss.
* Computation is done in float32: float16 / bfloat16 logits are cast up and
  autocast is disabled inside the loss. float64 input stays float64.
* ``reduction="sum"`` sums the per-entry loss over the B x C matrix.
  ``reduction="mean"`` divides that sum by **B*C** (the number of label
  entries), for every loss. Batch-level regularisers (EPR, ROLE) are added
  after that division for "mean" (as in Cole et al.'s code) and multiplied by
  B*C for "sum", so for every loss ``sum == B*C * mean`` exactly.
* ``log(sigmoid(z))`` is computed with ``logsigmoid`` (no epsilon). The
  reference implementations of Cole et al. / Zhou et al. use
  ``-log(x + 1e-5)``; the difference is below 1e-5 per entry except for
  saturated probabilities.
* Epochs are 0-based (the first training epoch is epoch 0), as in the loop of
  the released HSPNet code (``for epoch in range(epochs)``): SPLC with
  ``change_epoch=1`` starts correcting labels at the second epoch.
* Epoch-aware losses (SPLC, LL-R) keep the current epoch in a persistent
  long buffer ``current_epoch`` (so it is in ``state_dict``). ``forward``
  uses the ``epoch=`` argument when given (and records it in the buffer),
  otherwise the stored value; if no epoch was ever given (buffer = -1) they
  raise ``ValueError``: there is deliberately no silent default.
* ROLE needs the training-set index of every sample (``indices=``); its label
  estimates are an ``nn.Parameter`` of the loss module.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from .losses_base import (
    MultiLabelLoss,
    _check_epoch,
    check_int,
    _choice,
    _flag,
    _int,
    _real,
)
from .losses_cole import (
    EXPECTED_POSITIVES_PER_IMAGE,
    AssumeNegativeLabelSmoothingLoss,
    AssumeNegativeLoss,
    ExpectedPositiveRegularizationLoss,
    ROLELoss,
    WeakAssumeNegativeLoss,
)

__all__ = [
    "MultiLabelLoss",
    "SPLCLoss",
    "AssumeNegativeLoss",
    "AssumeNegativeLabelSmoothingLoss",
    "WeakAssumeNegativeLoss",
    "ExpectedPositiveRegularizationLoss",
    "ROLELoss",
    "EntropyMaximizationLoss",
    "LargeLossRejectionLoss",
    "HillLoss",
    "FocalLoss",
    "AsymmetricLoss",
    "LOSSES",
    "LOSS_DEFAULTS",
    "EXPECTED_POSITIVES_PER_IMAGE",
    "build_loss",
    "check_loss_spec",
]


# ---------------------------------------------------------------------------
# SPLC (the HSPNet reference loss)
# ---------------------------------------------------------------------------
class SPLCLoss(MultiLabelLoss):
    r"""SPLC with focal margin: the loss of HSPNet's released code.

    Paper: Zhang et al., "Simple and Robust Loss Design for Multi-Label
    Learning with Missing Labels", arXiv:2112.07368 (2021), Sec. "Self-paced
    loss correction", with the focal-margin loss for positives; used
    unchanged by HSPNet (Wang et al., ACM MM 2023).

    Implemented exactly as the released code (HSPNET.md, "Loss"):

    1. :math:`z = x - m` where :math:`y = 1`, else :math:`z = x`;
    2. if ``epoch >= change_epoch``: :math:`y \leftarrow 1` where
       :math:`\sigma(z) > \tau` (pseudo-positives; observed positives stay 1);
    3. :math:`p = \sigma(z)`, :math:`p_t = (1-p) y + p (1-y)`,
       :math:`w = p_t^{\gamma}` (NOT detached);
    4. :math:`\ell = -[y \log\sigma(z) + (1-y)\log\sigma(-z)]\, w`.

    The pseudo-positive selection itself carries no gradient (it is a
    comparison). Reference reduction: ``"sum"``.

    Shapes: logits, targets (B, C) -> scalar. Needs the 0-based epoch
    (``epoch=`` or :meth:`set_epoch`).
    """

    requires_epoch = True
    param_rules = {
        **MultiLabelLoss.param_rules,
        "tau": _real(0.0, 1.0, low_open=True, high_open=True),
        "margin": _real(),
        "gamma": _real(0.0),
        "change_epoch": _int(0),
    }

    def __init__(
        self,
        num_labels: int,
        tau: float = 0.6,
        margin: float = 1.0,
        gamma: float = 2.0,
        change_epoch: int = 1,
        reduction: str = "sum",
    ) -> None:
        super().__init__(num_labels, reduction)
        p = self.check_params(dict(tau=tau, margin=margin, gamma=gamma, change_epoch=change_epoch), self.num_labels)
        self.tau = p["tau"]
        self.margin = p["margin"]
        self.gamma = p["gamma"]
        self.change_epoch = p["change_epoch"]

    def _loss_terms(self, z, y, epoch, indices):
        z = torch.where(y == 1, z - self.margin, z)
        if torch.compiler.is_compiling():  # the epoch as a tensor (the buffer): no recompilation when it changes
            corrected = torch.where(torch.sigmoid(z) > self.tau, torch.ones_like(y), y)
            y = torch.where(self.current_epoch >= self.change_epoch, corrected, y)
        elif epoch >= self.change_epoch:
            y = torch.where(torch.sigmoid(z) > self.tau, torch.ones_like(y), y)
        p = torch.sigmoid(z)
        pt = (1 - p) * y + p * (1 - y)
        w = pt.pow(self.gamma)
        loss = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)) * w
        return loss, None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, tau={self.tau}, margin={self.margin}, gamma={self.gamma}, "
            f"change_epoch={self.change_epoch}"
        )


# ---------------------------------------------------------------------------
# Other single-positive / missing-label losses
# ---------------------------------------------------------------------------
class EntropyMaximizationLoss(MultiLabelLoss):
    r"""EM: entropy maximisation on unobserved labels.

    Paper: Zhou et al., "Acknowledging the Unknown for Multi-label Learning
    with Single Positive Labels", ECCV 2022, Sec. 3 (the EM loss):

    :math:`\ell = -y \log p - \alpha (1-y) H(p)`,
    :math:`H(p) = -p\log p - (1-p)\log(1-p)`.

    The loss on unobserved labels is negative (it is minimised by
    :math:`p = 1/2`). ``alpha``: 0.1 (the authors' COCO and NUS-WIDE value;
    VOC 0.2, CUB 0.01). Reference reduction: ``"mean"`` over B*C.
    Shapes: (B, C) -> scalar.
    """

    param_rules = {**MultiLabelLoss.param_rules, "alpha": _real(0.0)}

    def __init__(self, num_labels: int, alpha: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(num_labels, reduction)
        self.alpha = self.check_params(dict(alpha=alpha), self.num_labels)["alpha"]

    def _loss_terms(self, z, y, epoch, indices):
        log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)
        p = torch.sigmoid(z)
        entropy = -(p * log_p + (1 - p) * log_1mp)
        return -y * log_p - self.alpha * (1 - y) * entropy, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


class LargeLossRejectionLoss(MultiLabelLoss):
    r"""LL-R: assume negative, rejecting the largest losses on unobserved labels.

    Paper: Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label
    Classification", CVPR 2022, Sec. 3 (LL-R): the AN loss with weight
    :math:`\lambda = 0` on the unobserved entries whose loss is among the
    largest :math:`(t-1)\,\Delta_{rel}` fraction in the mini-batch, at the
    1-based epoch t; :math:`\lambda = 1` elsewhere.

    Here epochs are 0-based, so the rejection rate at epoch e is
    ``min(1, e * delta_rel)`` (nothing is rejected in the first epoch), and
    ``ceil(rate * U)`` entries are rejected, U = number of unobserved entries
    in the batch (the paper's definition; the released code takes the rate of
    all B*C entries). ``delta_rel`` is a FRACTION per epoch (the released code
    takes it in percent, from {0.1, ..., 0.5}); default 0.002 = 0.2 %.
    ``mode="correct"`` gives LL-Ct instead (rejected entries are treated as
    positives for this step). The selection carries no gradient.
    Reference reduction: ``"mean"`` over B*C (rejected entries count in B*C).
    Shapes: (B, C) -> scalar. Needs the 0-based epoch.
    """

    supports_label_sampling = False
    supports_verified_negatives = False

    requires_epoch = True
    param_rules = {**MultiLabelLoss.param_rules, "delta_rel": _real(0.0, 1.0), "mode": _choice("reject", "correct")}

    def __init__(
        self, num_labels: int, delta_rel: float = 0.002, mode: str = "reject", reduction: str = "mean"
    ) -> None:
        super().__init__(num_labels, reduction)
        p = self.check_params(dict(delta_rel=delta_rel, mode=mode), self.num_labels)
        self.delta_rel = p["delta_rel"]
        self.mode = p["mode"]

    def rejection_rate(self, epoch: int) -> float:
        """Fraction of the unobserved entries rejected at the 0-based ``epoch`` (an int >= 0)."""
        return min(1.0, _check_epoch(epoch) * self.delta_rel)

    def _loss_terms(self, z, y, epoch, indices):
        loss = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))
        rate = self.rejection_rate(epoch)
        if rate <= 0:
            return loss, None
        unobserved = y == 0
        n_unobs = int(unobserved.sum().item())
        # ceil with a tolerance so that e.g. 0.3 * 10 rejects 3, not 4
        k = min(n_unobs, math.ceil(rate * n_unobs - 1e-9))
        if k <= 0:
            return loss, None
        ranked = torch.where(unobserved, loss.detach(), torch.full_like(loss, -float("inf")))
        top = torch.topk(ranked.flatten(), k).indices
        reject = torch.zeros(loss.numel(), dtype=torch.bool, device=loss.device)
        reject[top] = True
        reject = reject.view_as(loss)
        if self.mode == "reject":
            loss = torch.where(reject, torch.zeros_like(loss), loss)
        else:
            loss = torch.where(reject, -F.logsigmoid(z), loss)
        return loss, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, delta_rel={self.delta_rel}, mode={self.mode!r}"


class HillLoss(MultiLabelLoss):
    r"""Hill loss: focal margin on positives, hill-shaped loss on negatives.

    Paper: Zhang et al., "Simple and Robust Loss Design for Multi-Label
    Learning with Missing Labels", arXiv:2112.07368 (2021), Sec. "Hill loss":

    :math:`\ell^+ = -(1-p_m)^{\gamma}\log p_m`, :math:`p_m = \sigma(x - m)`;
    :math:`\ell^- = (\lambda - p)\,p^2`, :math:`p = \sigma(x)`.

    Defaults lambda = 1.5, margin m = 1, gamma = 2 (the paper's), focal
    weight not detached. Reference reduction: ``"sum"``.
    Shapes: (B, C) -> scalar.
    """

    param_rules = {**MultiLabelLoss.param_rules, "lamb": _real(), "margin": _real(), "gamma": _real(0.0)}

    def __init__(
        self, num_labels: int, lamb: float = 1.5, margin: float = 1.0, gamma: float = 2.0, reduction: str = "sum"
    ) -> None:
        super().__init__(num_labels, reduction)
        p = self.check_params(dict(lamb=lamb, margin=margin, gamma=gamma), self.num_labels)
        self.lamb = p["lamb"]
        self.margin = p["margin"]
        self.gamma = p["gamma"]

    def _loss_terms(self, z, y, epoch, indices):
        zm = z - self.margin
        p_m = torch.sigmoid(zm)
        p = torch.sigmoid(z)
        pos = -((1 - p_m).pow(self.gamma)) * F.logsigmoid(zm)
        neg = (self.lamb - p) * p.pow(2)
        return y * pos + (1 - y) * neg, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lamb={self.lamb}, margin={self.margin}, gamma={self.gamma}"


class FocalLoss(MultiLabelLoss):
    r"""Sigmoid focal loss, per label, unobserved labels taken as negatives.

    Paper: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017,
    Eq. (5): :math:`FL(p_t) = -\alpha_t (1-p_t)^{\gamma} \log p_t`,
    :math:`p_t = p` if y = 1 else :math:`1-p`.

    ``gamma`` = 2 (the paper's). ``alpha=None`` disables alpha-balancing
    (the paper's detection setting used alpha = 0.25, :math:`\alpha_t = \alpha`
    for positives and :math:`1-\alpha` for negatives). The modulating factor
    is not detached. Reduction default ``"sum"`` (as SPLC / Hill / ASL).
    Shapes: (B, C) -> scalar.
    """

    param_rules = {**MultiLabelLoss.param_rules, "gamma": _real(0.0), "alpha": _real(0.0, 1.0, allow_none=True)}

    def __init__(
        self, num_labels: int, gamma: float = 2.0, alpha: Optional[float] = None, reduction: str = "sum"
    ) -> None:
        super().__init__(num_labels, reduction)
        p = self.check_params(dict(gamma=gamma, alpha=alpha), self.num_labels)
        self.gamma = p["gamma"]
        self.alpha = p["alpha"]

    def _loss_terms(self, z, y, epoch, indices):
        p = torch.sigmoid(z)
        log_pt = y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)
        pt = y * p + (1 - y) * (1 - p)
        loss = -((1 - pt).pow(self.gamma)) * log_pt
        if self.alpha is not None:
            loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return loss, None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}, alpha={self.alpha}"


class AsymmetricLoss(MultiLabelLoss):
    r"""ASL: asymmetric loss, unobserved labels taken as negatives.

    Paper: Ridnik et al., "Asymmetric Loss For Multi-Label Classification",
    ICCV 2021, Sec. 3 (:math:`L_+`, :math:`L_-` with probability shifting):

    :math:`\ell^+ = -(1-p)^{\gamma_+}\log p`,
    :math:`\ell^- = -p_m^{\gamma_-}\log(1-p_m)`, :math:`p_m = \max(p - m, 0)`.

    Defaults gamma_neg = 4, gamma_pos = 1, clip m = 0.05 (the defaults of the
    authors' ``AsymmetricLoss``); the log argument is clamped at ``eps`` =
    1e-8 as in their code. ``detach_weight`` computes the focusing weights
    without gradient (their ``disable_torch_grad_focal_loss``); default
    False (gradient flows through the weights, as in their current
    ``AsymmetricLoss``). Reference reduction: ``"sum"``.
    Shapes: (B, C) -> scalar.
    """

    param_rules = {
        **MultiLabelLoss.param_rules,
        "gamma_neg": _real(0.0),
        "gamma_pos": _real(0.0),
        "clip": _real(0.0, 1.0, high_open=True, allow_none=True),
        "eps": _real(0.0, 1.0, low_open=True, high_open=True),
        "detach_weight": _flag,
    }

    def __init__(
        self,
        num_labels: int,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_weight: bool = False,
        reduction: str = "sum",
    ) -> None:
        super().__init__(num_labels, reduction)
        p = self.check_params(
            dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps, detach_weight=detach_weight),
            self.num_labels,
        )
        self.gamma_neg = p["gamma_neg"]
        self.gamma_pos = p["gamma_pos"]
        self.clip = p["clip"] or 0.0  # None or 0: no probability shifting
        self.eps = p["eps"]
        self.detach_weight = p["detach_weight"]

    def _loss_terms(self, z, y, epoch, indices):
        p = torch.sigmoid(z)
        one_minus_p = torch.sigmoid(-z)
        if self.clip > 0:
            one_minus_pm = (one_minus_p + self.clip).clamp(max=1.0)
        else:
            one_minus_pm = one_minus_p
        log_pos = torch.log(p.clamp(min=self.eps))
        log_neg = torch.log(one_minus_pm.clamp(min=self.eps))
        w_pos = one_minus_p.pow(self.gamma_pos)
        w_neg = (1 - one_minus_pm).pow(self.gamma_neg)
        if self.detach_weight:
            w_pos, w_neg = w_pos.detach(), w_neg.detach()
        loss = -(y * w_pos * log_pos + (1 - y) * w_neg * log_neg)
        return loss, None

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, "
            f"clip={self.clip}, detach_weight={self.detach_weight}"
        )


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------
LOSSES: Dict[str, type] = {
    "splc": SPLCLoss,
    "an": AssumeNegativeLoss,
    "an_ls": AssumeNegativeLabelSmoothingLoss,
    "wan": WeakAssumeNegativeLoss,
    "epr": ExpectedPositiveRegularizationLoss,
    "role": ROLELoss,
    "em": EntropyMaximizationLoss,
    "ll_r": LargeLossRejectionLoss,
    "hill": HillLoss,
    "focal": FocalLoss,
    "asl": AsymmetricLoss,
}

def _constructor_defaults(cls: type) -> Dict[str, Any]:
    """The keyword parameters of a loss constructor with their defaults (everything but ``num_labels``)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("self", "num_labels")}


# Default keyword parameters of every loss, read from the constructors (the one place they are written): what
# build_loss(name, num_labels) uses when a key is not given.
LOSS_DEFAULTS: Dict[str, Dict[str, Any]] = {name: _constructor_defaults(cls) for name, cls in LOSSES.items()}


def _normalize_name(name: str) -> str:
    if not isinstance(name, str):
        raise ValueError(f"loss name must be a string, got {name!r}")
    return name.strip().lower().replace("-", "_")


def check_loss_spec(name: str, kwargs: Mapping[str, Any], num_labels: Optional[int] = None) -> str:
    """Check a loss name and its keyword arguments without building the loss (which may allocate per-image state);
    returns the registry key. Raises ``ValueError`` naming the valid choices, or the parameter and its bad value
    (type, finiteness, range: the constructor's checks; ``num_labels``, when given, also bounds
    ``expected_num_pos``)."""
    key = _normalize_name(name)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"the parameters of loss {key!r} must be a dict, got {type(kwargs).__name__}")
    defaults = LOSS_DEFAULTS[key]
    bad = [k for k in kwargs if k not in defaults]
    if bad:
        raise ValueError(
            f"unknown parameter(s) {', '.join(repr(b) for b in bad)} for loss {key!r}; "
            f"valid parameters: {', '.join(sorted(defaults)) or '(none)'}"
        )
    if num_labels is not None:
        num_labels = check_int("num_labels", num_labels, 1)
    LOSSES[key].check_params(kwargs, num_labels)
    return key


def build_loss(name: str, num_labels: int, **kwargs: Any) -> MultiLabelLoss:
    """Build a loss by registry name with its defaults overridden by ``kwargs``.

    ``name`` is one of :data:`LOSSES` (case-insensitive, "-" accepted for
    "_", e.g. "LL-R"). Unknown names and unknown keyword arguments raise
    ``ValueError`` naming the valid choices.
    """
    key = check_loss_spec(name, kwargs)
    params = dict(LOSS_DEFAULTS[key])
    params.update(kwargs)
    return LOSSES[key](num_labels, **params)
