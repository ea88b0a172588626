"""Losses for multi-label learning from single positive labels.

This module imports only the standard library and ``torch``: the model file
imports it with ``from .losses import build_loss, LOSS_DEFAULTS`` and it is
shipped to the Hugging Face Hub as remote code next to saved weights.

Conventions shared by every loss
--------------------------------
* ``forward(logits, targets, *, epoch=None, indices=None)``.
  ``logits``: (B, C) raw scores before the sigmoid. ``targets``: (B, C) observed
  labels, 1 = observed positive, 0 = unobserved.
* Inputs are checked, every call, and a bad one raises ``ValueError`` naming
  the argument: ``logits`` / ``targets`` must be tensors of the same shape
  (B, C) with B >= 1 and C = ``num_labels``; ``targets`` must hold only 0 and
  1 (2, -1, 0.5 or NaN are refused); ``indices`` (ROLE) must be an integer
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

import contextlib
import inspect
import math
import numbers
import operator
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

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

_REDUCTIONS = ("sum", "mean")

# Average number of positive labels per training image, the value Cole et al.
# (CVPR 2021) use for k in EPR / ROLE (their Table of dataset statistics).
# Note: one revision of their train.py uses 2.5 for COCO.
EXPECTED_POSITIVES_PER_IMAGE: Dict[str, float] = {
    "voc": 1.5,
    "coco": 2.9,
    "nuswide": 1.9,
    "cub": 31.4,
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------------------
# argument checks (shared with configuration_hspnet.py)
# ---------------------------------------------------------------------------
def _interval(low: Optional[float], high: Optional[float], low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "finite"


def _check_real(
    name: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number (not a bool, not a string) within the bounds, else
    ``ValueError`` naming ``name`` and the value."""
    bounds = _interval(low, high, low_open, high_open)
    what = "a finite number" if bounds == "finite" else f"a finite number {bounds}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    x = float(value)
    if (
        not math.isfinite(x)
        or (low is not None and (x < low or (low_open and x == low)))
        or (high is not None and (x > high or (high_open and x == high)))
    ):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return x


def _check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as an int if it is an integer (``operator.index``: int, numpy integer; not a bool, not a float)
    within the bounds, else ``ValueError`` naming ``name`` and the value."""
    what = "an int" if low is None and high is None else f"an int {_interval(low, high, False, False)}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {what}, got {value!r} (bool)")
    try:
        x = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})") from None
    if (low is not None and x < low) or (high is not None and x > high):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(x)


def _check_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_ without importing numpy
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_epoch(epoch: Any) -> int:
    """A 0-based epoch: an int >= 0 (a float is accepted only if it is whole, e.g. the Trainer's ``state.epoch``
    at the start of an epoch)."""
    if isinstance(epoch, float) and math.isfinite(epoch) and epoch.is_integer():
        epoch = int(epoch)
    elif isinstance(epoch, numbers.Real) and not isinstance(epoch, (bool, numbers.Integral)):
        raise ValueError(f"epoch must be a whole number >= 0 (the 0-based epoch index), got {epoch!r}")
    return _check_int("epoch", epoch, 0)


# A parameter rule: (name, value, num_labels or None) -> normalised value, or ValueError naming the parameter.
_Rule = Callable[[str, Any, Optional[int]], Any]


def _real(
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> _Rule:
    def rule(name: str, value: Any, num_labels: Optional[int]) -> Optional[float]:
        if value is None and allow_none:
            return None
        return _check_real(name, value, low, high, low_open=low_open, high_open=high_open)

    return rule


def _int(low: Optional[int] = None, *, allow_none: bool = False) -> _Rule:
    def rule(name: str, value: Any, num_labels: Optional[int]) -> Optional[int]:
        if value is None and allow_none:
            return None
        return _check_int(name, value, low)

    return rule


def _choice(*choices: str) -> _Rule:
    return lambda name, value, num_labels: _check_choice(name, value, choices)


def _flag(name: str, value: Any, num_labels: Optional[int]) -> bool:
    return _check_bool(name, value)


def _expected_positives(name: str, value: Any, num_labels: Optional[int]) -> float:
    """k of EPR / ROLE: the expected number of positives per image, in (0, C]."""
    k = _check_real(name, value, 0.0, low_open=True)
    if num_labels is not None and k > num_labels:
        raise ValueError(
            f"{name} (the expected number of positive labels per image) must be in (0, num_labels={num_labels}], "
            f"got {value!r}"
        )
    return k


class MultiLabelLoss(nn.Module):
    """Base class: input checks, float32 computation and the reduction.

    Subclasses implement ``_loss_terms(z, y, epoch, indices)`` returning the
    (B, C) per-entry loss matrix and an optional batch-level scalar
    regulariser (already in "mean" units, see the module docstring).
    """

    requires_indices: bool = False
    requires_epoch: bool = False
    #: The loss is a sum of independent per-entry terms, so a sample of label columns with weights (``label_weights``
    #: in ``forward``) gives an unbiased estimate of it. False where terms couple labels (EPR and ROLE regularisers
    #: over all labels, ROLE's per-label estimates, LL-R's rejection quantile over all entries).
    supports_label_sampling: bool = True
    #: Check the VALUES of ``targets`` (0/1) and ``indices`` (in range) at every call (one fused reduction, one
    #: synchronisation; ``torch._assert_async`` under ``torch.compile``). Set to False on an instance to skip them.
    check_inputs: bool = True
    #: Constructor parameter -> rule (type, finiteness, range); subclasses extend it. Used by the constructors and,
    #: without building the loss, by :func:`check_loss_spec`.
    param_rules: Dict[str, _Rule] = {"reduction": _choice(*_REDUCTIONS)}

    def __init__(self, num_labels: int, reduction: str = "mean") -> None:
        super().__init__()
        if isinstance(num_labels, bool):
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        try:
            num_labels = operator.index(num_labels)
        except TypeError:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}") from None
        if num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        self.num_labels = int(num_labels)
        self.reduction = self.check_params({"reduction": reduction})["reduction"]
        if self.requires_epoch:
            self.register_buffer("current_epoch", torch.tensor(-1, dtype=torch.long), persistent=True)
            self._epoch_cache: Optional[int] = None

    @classmethod
    def check_params(cls, params: Mapping[str, Any], num_labels: Optional[int] = None) -> Dict[str, Any]:
        """Check constructor parameters (only those given) against :attr:`param_rules`; returns them normalised
        (floats as float, ints as int). ``num_labels``, when known, bounds ``expected_num_pos``. A bad value raises
        ``ValueError`` naming the class, the parameter and the value."""
        out = {}
        for name, value in params.items():
            rule = cls.param_rules.get(name)
            try:
                out[name] = value if rule is None else rule(name, value, num_labels)
            except ValueError as error:
                raise ValueError(f"{cls.__name__}: {error}") from None
        return out

    # ------------------------------------------------------------------ epoch
    def set_epoch(self, epoch: int) -> None:
        """Record the current (0-based) training epoch (an int >= 0)."""
        epoch = _check_epoch(epoch)
        if not self.requires_epoch:
            return
        if self._epoch_cache != epoch:
            self.current_epoch.fill_(epoch)
            self._epoch_cache = epoch

    def get_epoch(self) -> int:
        """The stored epoch, -1 if none was ever given."""
        if not self.requires_epoch:
            return -1
        if self._epoch_cache is None:
            self._epoch_cache = int(self.current_epoch.item())
        return self._epoch_cache

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401
        super()._load_from_state_dict(*args, **kwargs)
        if self.requires_epoch:
            self._epoch_cache = None  # re-read from the loaded buffer on next use

    def _resolve_epoch(self, epoch: Optional[int]) -> Optional[int]:
        if epoch is not None:
            epoch = _check_epoch(epoch)
        if not self.requires_epoch:
            return None
        if epoch is not None:
            self.set_epoch(epoch)
            return epoch
        stored = self.get_epoch()
        if stored < 0:
            raise ValueError(
                f"{type(self).__name__} needs the current 0-based training epoch: pass "
                "forward(..., epoch=e) or call loss.set_epoch(e) at the start of every epoch."
            )
        return stored

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        *,
        epoch: Optional[int] = None,
        indices: Optional[torch.Tensor] = None,
        label_weights: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The loss of ``logits`` ``(B, C)`` against the observed ``targets`` ``(B, C)``.

        ``label_weights`` ``(C',)``: ``logits`` and ``targets`` hold only ``C' <= C`` sampled label columns and each
        column's terms count ``label_weights[j]`` times (e.g. ``|unobserved| / sample size`` for a uniform sample of
        the unobserved labels, 1 for the always-included ones): an unbiased estimate of the full loss, with "mean"
        still dividing by ``B * C``. Only for losses with :attr:`supports_label_sampling`.
        """
        name = type(self).__name__
        for arg, value in (("logits", logits), ("targets", targets)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}: {arg} must be a torch.Tensor of shape (B, C), got {type(value).__name__}")
        if label_weights is not None:
            if not self.supports_label_sampling:
                raise ValueError(f"{name} couples the labels and cannot be computed on a sample of them "
                                 "(label_sample_size); use it without label sampling")
            if (not isinstance(label_weights, torch.Tensor) or label_weights.dim() != 1
                    or logits.dim() != 2 or label_weights.shape[0] != logits.shape[1]
                    or not 1 <= logits.shape[1] <= self.num_labels):
                raise ValueError(f"{name}: label_weights must be a tensor of shape (C',) with one weight per logits "
                                 f"column and C' <= num_labels={self.num_labels}")
        elif logits.dim() != 2 or logits.shape[1] != self.num_labels:
            raise ValueError(
                f"{name}: logits must have shape (B, {self.num_labels}) (num_labels={self.num_labels}), "
                f"got {tuple(logits.shape)}"
            )
        if targets.shape != logits.shape:
            raise ValueError(
                f"{name}: targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        if logits.shape[0] == 0:
            raise ValueError(f"{name}: logits is an empty batch (shape {tuple(logits.shape)}); B must be >= 1")
        if self.requires_indices:
            if indices is None:
                raise ValueError(
                    f"{name} needs the training-set index of every sample: "
                    "pass forward(..., indices=LongTensor of shape (B,))."
                )
            if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.is_complex() or (
                indices.dtype == torch.bool
            ):
                raise ValueError(
                    f"{name}: indices must be an integer tensor of shape ({logits.shape[0]},), got "
                    f"{indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__}"
                )
            if indices.dim() != 1 or indices.shape[0] != logits.shape[0]:
                raise ValueError(f"{name}: indices must have shape ({logits.shape[0]},), got {tuple(indices.shape)}")
        ep = self._resolve_epoch(epoch)
        if self.check_inputs:
            self._check_values(targets, indices if self.requires_indices else None)
        if logits.dtype in (torch.float16, torch.bfloat16) or not logits.is_floating_point():
            logits = logits.float()
        targets = targets.to(dtype=logits.dtype)
        with _no_autocast(logits.device.type):
            matrix, reg = self._loss_terms(logits, targets, ep, indices)
            if label_weights is None:
                total = matrix.sum()
            else:
                total = (matrix * label_weights.to(device=matrix.device, dtype=matrix.dtype)).sum()
            n_entries = matrix.shape[0] * self.num_labels
            if self.reduction == "mean":
                total = total / n_entries
                if reg is not None:
                    total = total + reg
            elif reg is not None:
                total = total + reg * n_entries
        return total

    def _index_limit(self) -> Optional[int]:
        """The exclusive upper bound of ``indices`` (ROLE: the number of training images)."""
        return None

    def _check_values(self, targets: torch.Tensor, indices: Optional[torch.Tensor]) -> None:
        """targets in {0, 1} (NaN included in "not"), indices in [0, limit): one fused reduction, one sync."""
        name = type(self).__name__
        messages, flags = [], []
        if targets.dtype != torch.bool:
            messages.append(f"{name}: targets must hold only 0 and 1 (1 = observed positive, 0 = unobserved)")
            flags.append(((targets != 0) & (targets != 1)).any())
        limit = self._index_limit()
        if indices is not None and limit is not None:
            messages.append(f"{name}: indices must be training-set rows in [0, {limit}) (num_train_images={limit})")
            flags.append(((indices < 0) | (indices >= limit)).any().to(device=targets.device))
        if not flags:
            return
        if torch.compiler.is_compiling():  # no graph break; raises RuntimeError (a device-side assert on CUDA)
            for message, flag in zip(messages, flags):
                torch._assert_async(~flag, message)
            return
        bad = torch.stack(flags).tolist() if len(flags) > 1 else [bool(flags[0])]
        for message, is_bad in zip(messages, bad):
            if is_bad:
                raise ValueError(self._describe_bad(message, targets, indices, limit))

    @staticmethod
    def _describe_bad(message: str, targets: torch.Tensor, indices: Optional[torch.Tensor], limit: Optional[int]) -> str:
        """The message with the first offending value (only computed on the error path)."""
        if message.split(": ", 1)[1].startswith("targets"):
            bad = ((targets != 0) & (targets != 1)).nonzero()[0].tolist()
            return f"{message}; got {targets[tuple(bad)].item()!r} at targets[{bad[0]}, {bad[1]}]"
        bad = int(((indices < 0) | (indices >= limit)).nonzero()[0, 0])
        return f"{message}; got {int(indices[bad])} at indices[{bad}]"

    def _loss_terms(
        self, z: torch.Tensor, y: torch.Tensor, epoch: Optional[int], indices: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, reduction={self.reduction!r}"


def _no_autocast(device_type: str) -> Any:
    """Disable autocast for the loss computation (a no-op where unsupported). A plain ``torch.autocast`` /
    ``nullcontext`` (not a custom context-manager class), so ``torch.compile`` traces it without a graph break."""
    try:
        available = getattr(torch.amp, "is_autocast_available", None)
        if available is None or available(device_type):
            return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic devices
        pass
    return contextlib.nullcontext()


def _expected_positive_regularizer(probs: torch.Tensor, k: float, num_labels: int) -> torch.Tensor:
    # R_k = ((k_hat - k) / C)^2 with k_hat = mean over the batch of sum_c p_bc
    k_hat = probs.sum(dim=1).mean(dim=0)
    return ((k_hat - k) / num_labels) ** 2


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
        if epoch >= self.change_epoch:
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
# Cole et al. (CVPR 2021) baselines
# ---------------------------------------------------------------------------
class AssumeNegativeLoss(MultiLabelLoss):
    r"""AN: binary cross-entropy treating every unobserved label as negative.

    Paper: Cole et al., "Multi-Label Learning from Single Positive Labels",
    CVPR 2021, Sec. 3 (loss :math:`\mathcal{L}_{AN}`):

    :math:`\ell = -[\,y \log p + (1-y) \log(1-p)\,]`, :math:`p = \sigma(x)`.

    This is plain BCE on the observed targets. Reference reduction: ``"mean"``
    over B*C (Cole et al.'s ``compute_batch_loss``). Shapes: (B, C) -> scalar.
    """

    def _loss_terms(self, z, y, epoch, indices):
        return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)), None


class AssumeNegativeLabelSmoothingLoss(MultiLabelLoss):
    r"""AN-LS: assume negative with label smoothing.

    Paper: Cole et al., CVPR 2021, Sec. 3 (:math:`\mathcal{L}_{AN-LS}`),
    smoothing coefficient :math:`\epsilon` = ``ls_coef`` (0.1 in the paper):

    :math:`\ell = -[\,\tilde y \log p + (1-\tilde y)\log(1-p)\,]`,
    :math:`\tilde y = (1-\epsilon) y + \epsilon (1-y)`.

    Reference reduction: ``"mean"`` over B*C. Shapes: (B, C) -> scalar.
    """

    param_rules = {**MultiLabelLoss.param_rules, "ls_coef": _real(0.0, 1.0, high_open=True)}

    def __init__(self, num_labels: int, ls_coef: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(num_labels, reduction)
        self.ls_coef = self.check_params(dict(ls_coef=ls_coef), self.num_labels)["ls_coef"]

    def _loss_terms(self, z, y, epoch, indices):
        eps = self.ls_coef
        y_s = (1 - eps) * y + eps * (1 - y)
        return -(y_s * F.logsigmoid(z) + (1 - y_s) * F.logsigmoid(-z)), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ls_coef={self.ls_coef}"


class WeakAssumeNegativeLoss(MultiLabelLoss):
    r"""WAN: weak assume negative, down-weighting the assumed negatives.

    Paper: Cole et al., CVPR 2021, Sec. 3 (:math:`\mathcal{L}_{WAN}`):

    :math:`\ell = -[\,y \log p + \gamma (1-y) \log(1-p)\,]`,
    :math:`\gamma = 1/(C-1)` by default (``gamma=None``).

    Reference reduction: ``"mean"`` over B*C. Shapes: (B, C) -> scalar.
    """

    param_rules = {**MultiLabelLoss.param_rules, "gamma": _real(0.0, allow_none=True)}

    def __init__(self, num_labels: int, gamma: Optional[float] = None, reduction: str = "mean") -> None:
        super().__init__(num_labels, reduction)
        gamma = self.check_params(dict(gamma=gamma), self.num_labels)["gamma"]
        if gamma is None:
            gamma = 1.0 / (self.num_labels - 1) if self.num_labels > 1 else 1.0
        self.gamma = float(gamma)

    def _loss_terms(self, z, y, epoch, indices):
        return -(y * F.logsigmoid(z) + self.gamma * (1 - y) * F.logsigmoid(-z)), None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


class ExpectedPositiveRegularizationLoss(MultiLabelLoss):
    r"""EPR: observed positives only, plus the expected-positive regulariser.

    Paper: Cole et al., CVPR 2021, Sec. 3 (:math:`\mathcal{L}_{EPR}` and the
    regulariser :math:`R_k`):

    :math:`\mathcal{L} = \frac{1}{BC}\sum_{b,c} -y_{bc}\log p_{bc} + R_k`,
    :math:`R_k = \big((\hat k - k)/C\big)^2`,
    :math:`\hat k = \frac{1}{B}\sum_b \sum_c p_{bc}`.

    ``expected_num_pos`` is k, the average number of positives per image
    (paper: VOC 1.5, COCO 2.9, NUS-WIDE 1.9, CUB 31.4; see
    :data:`EXPECTED_POSITIVES_PER_IMAGE`); default 2.9 (COCO).
    With ``"sum"`` the whole expression is multiplied by B*C.
    Shapes: (B, C) -> scalar.
    """

    supports_label_sampling = False

    param_rules = {**MultiLabelLoss.param_rules, "expected_num_pos": _expected_positives}

    def __init__(self, num_labels: int, expected_num_pos: float = 2.9, reduction: str = "mean") -> None:
        super().__init__(num_labels, reduction)
        self.expected_num_pos = self.check_params(dict(expected_num_pos=expected_num_pos), self.num_labels)[
            "expected_num_pos"
        ]

    def _loss_terms(self, z, y, epoch, indices):
        loss = -y * F.logsigmoid(z)
        reg = _expected_positive_regularizer(torch.sigmoid(z), self.expected_num_pos, self.num_labels)
        return loss, reg

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, expected_num_pos={self.expected_num_pos}"


class ROLELoss(MultiLabelLoss):
    r"""ROLE: regularised online label estimation.

    Paper: Cole et al., CVPR 2021, Sec. 3 ("Online estimation of unobserved
    labels"). A label estimate :math:`q_{nc} = \sigma(\theta_{nc})` is kept for
    every training image n; :math:`\theta` (``label_logits``, shape
    ``(num_train_images, C)``) is an ``nn.Parameter`` of this module, so put
    it in the optimizer (Cole et al. use 10x the classifier learning rate) and
    checkpoint the module (``state_dict`` / accelerate's
    ``register_for_checkpointing``). Under multi-process training, prepare the
    loss module too (it has parameters) so that its gradients are all-reduced.

    Per batch, with :math:`p = \sigma(x)` and :math:`q = \sigma(\theta[\text{indices}])`
    (:math:`\bar\cdot` = detached):

    :math:`\mathcal{L} = \frac{1}{BC}\sum_{b,c}\tfrac12\big[-y\log p - y\log q
    + \mathrm{BCE}(p, \bar q) + \mathrm{BCE}(q, \bar p)\big]
    + \tfrac12\big[R_k(p) + R_k(q)\big]`,

    where :math:`\mathrm{BCE}(a, t) = -t\log a - (1-t)\log(1-a)` and
    :math:`R_k` is the EPR regulariser. This is the symmetric form of the
    authors' released code.

    Initialisation (as the released code): :math:`\theta` uniform in
    :math:`[-\mathrm{logit}(0.5+w), \mathrm{logit}(0.5+w)]` with
    ``init_width`` w = 0.1 (a seeded generator, ``init_seed``), and
    :meth:`initialize_observed` sets observed positives to
    :math:`\mathrm{logit}(0.995)` (call it once with the (N, C) observed
    label matrix before training).

    Shapes: logits, targets (B, C); ``indices`` (B,) long, the training-set
    row of every sample -> scalar.
    """

    supports_label_sampling = False

    requires_indices = True
    param_rules = {
        **MultiLabelLoss.param_rules,
        "num_train_images": _int(1, allow_none=True),  # None = not given yet (required by the constructor)
        "expected_num_pos": _expected_positives,
        "init_width": _real(0.0, 0.5, low_open=True, high_open=True),
        "init_positive_prob": _real(0.0, 1.0, low_open=True, high_open=True),
        "init_seed": _int(),
    }

    def __init__(
        self,
        num_labels: int,
        num_train_images: Optional[int] = None,
        expected_num_pos: float = 2.9,
        init_width: float = 0.1,
        init_positive_prob: float = 0.995,
        init_seed: int = 0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_labels, reduction)
        if num_train_images is None:
            raise ValueError(
                "ROLE keeps a label estimate per training image: pass num_train_images=<size of the training set>"
            )
        p = self.check_params(
            dict(
                num_train_images=num_train_images,
                expected_num_pos=expected_num_pos,
                init_width=init_width,
                init_positive_prob=init_positive_prob,
                init_seed=init_seed,
            ),
            self.num_labels,
        )
        self.num_train_images = p["num_train_images"]
        self.expected_num_pos = p["expected_num_pos"]
        self.init_width = p["init_width"]
        self.init_positive_prob = p["init_positive_prob"]
        self.init_seed = p["init_seed"]
        gen = torch.Generator().manual_seed(self.init_seed)
        bound = _logit(0.5 + self.init_width)
        init = bound * (2 * torch.rand(self.num_train_images, num_labels, generator=gen) - 1)
        self.label_logits = nn.Parameter(init)

    @torch.no_grad()
    def initialize_observed(self, observed_targets: torch.Tensor) -> None:
        """Set the estimates of observed positives to ``init_positive_prob``.

        ``observed_targets``: (num_train_images, C) matrix, 1 = observed positive.
        """
        observed_targets = torch.as_tensor(observed_targets)
        if tuple(observed_targets.shape) != tuple(self.label_logits.shape):
            raise ValueError(
                f"observed_targets must have shape {tuple(self.label_logits.shape)}, "
                f"got {tuple(observed_targets.shape)}"
            )
        if observed_targets.numel() and not bool(((observed_targets == 0) | (observed_targets == 1)).all()):
            raise ValueError("ROLELoss: observed_targets must hold only 0 and 1 (1 = observed positive)")
        mask = observed_targets.to(self.label_logits.device) == 1
        self.label_logits[mask] = _logit(self.init_positive_prob)

    def _index_limit(self) -> Optional[int]:
        return self.num_train_images

    @property
    def estimated_labels(self) -> torch.Tensor:
        """Current label estimates sigma(theta), detached, (num_train_images, C)."""
        return torch.sigmoid(self.label_logits.detach())

    def _loss_terms(self, z, y, epoch, indices):
        theta = self.label_logits[indices.to(device=self.label_logits.device, dtype=torch.long)]
        theta = theta.to(device=z.device, dtype=z.dtype)
        log_p, log_1mp = F.logsigmoid(z), F.logsigmoid(-z)
        log_q, log_1mq = F.logsigmoid(theta), F.logsigmoid(-theta)
        p, q = torch.sigmoid(z), torch.sigmoid(theta)
        p_bar, q_bar = p.detach(), q.detach()
        pos = -y * log_p - y * log_q
        cross_f = -(q_bar * log_p + (1 - q_bar) * log_1mp)
        cross_g = -(p_bar * log_q + (1 - p_bar) * log_1mq)
        loss = 0.5 * (pos + cross_f + cross_g)
        k, c = self.expected_num_pos, self.num_labels
        reg = 0.5 * (_expected_positive_regularizer(p, k, c) + _expected_positive_regularizer(q, k, c))
        return loss, reg

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_train_images={self.num_train_images}, "
            f"expected_num_pos={self.expected_num_pos}"
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
        num_labels = _check_int("num_labels", num_labels, 1)
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
