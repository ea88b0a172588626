"""The base class of every loss in :mod:`losses` (input checks, float32 computation, the reduction, the epoch) and
the argument checks it shares with ``configuration_hspnet.py``. The conventions are written in ``losses.py``.

Imports only the standard library and ``torch``: it ships to the Hub as remote code with ``losses.py``.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_REDUCTIONS = ("sum", "mean")


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


def check_real(
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


def check_int(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
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


def check_bool(name: str, value: Any) -> bool:
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
    return check_int("epoch", epoch, 0)


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
        return check_real(name, value, low, high, low_open=low_open, high_open=high_open)

    return rule


def _int(low: Optional[int] = None, *, allow_none: bool = False) -> _Rule:
    def rule(name: str, value: Any, num_labels: Optional[int]) -> Optional[int]:
        if value is None and allow_none:
            return None
        return check_int(name, value, low)

    return rule


def _choice(*choices: str) -> _Rule:
    return lambda name, value, num_labels: _check_choice(name, value, choices)


def _flag(name: str, value: Any, num_labels: Optional[int]) -> bool:
    return check_bool(name, value)


def _expected_positives(name: str, value: Any, num_labels: Optional[int]) -> float:
    """k of EPR / ROLE: the expected number of positives per image, in (0, C]."""
    k = check_real(name, value, 0.0, low_open=True)
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
    #: ``targets`` may hold -1 (a verified negative): its entry's term is ``softplus(z) = -log(1 - sigmoid(z))`` with
    #: weight 1, whatever the loss does with unobserved labels. False where terms couple labels or images (EPR, ROLE,
    #: LL-R): those refuse -1.
    supports_verified_negatives: bool = True
    #: Check the VALUES of ``targets`` (0/1, or -1) and ``indices`` (in range) at every call (one fused reduction, one
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
        if torch.compiler.is_compiling() and self.requires_epoch and type(epoch) is int:
            # in a compiled graph the epoch goes to the buffer only: an int attribute of a module is a guard (and int()
            # of a symbolic int specialises it), so every new epoch would compile the loss again
            if epoch < 0:
                raise ValueError(f"epoch must be a whole number >= 0 (the 0-based epoch index), got {epoch!r}")
            self.current_epoch.fill_(epoch)
            self._epoch_cache = None  # re-read from the buffer by the next eager get_epoch()
            return epoch
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
        verified = self.supports_verified_negatives and targets.dtype != torch.bool
        targets = targets.to(dtype=logits.dtype)
        if verified:  # -1 = a verified negative: the loss sees 0 there, then its term is replaced
            known_negative, targets = targets == -1, targets.clamp(min=0)
        with _no_autocast(logits.device.type):
            matrix, reg = self._loss_terms(logits, targets, ep, indices)
            if verified:
                matrix = torch.where(known_negative, -F.logsigmoid(-logits), matrix)
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
        """targets in {0, 1} (or -1 with :attr:`supports_verified_negatives`; NaN included in "not"), indices in
        [0, limit): one fused reduction, one sync."""
        name = type(self).__name__
        messages, masks = [], []
        if targets.dtype != torch.bool:
            bad = (targets != 0) & (targets != 1)
            if self.supports_verified_negatives:
                messages.append(f"{name}: targets must hold only 0 and 1 (1 = observed positive, 0 = unobserved) "
                                "or -1 (a verified negative)")
                bad = bad & (targets != -1)
            else:
                messages.append(f"{name}: targets must hold only 0 and 1 (1 = observed positive, 0 = unobserved)")
            masks.append(bad)
        flags = [mask.any() for mask in masks]
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
        bad_flags = torch.stack(flags).tolist() if len(flags) > 1 else [bool(flags[0])]
        for k, (message, is_bad) in enumerate(zip(messages, bad_flags)):
            if is_bad:
                mask = masks[k] if k < len(masks) else None
                if mask is not None and not self.supports_verified_negatives and bool((targets == -1).any()):
                    message, mask = (f"{name}: {name} does not take verified negatives (targets -1): its loss couples "
                                     "the labels; give it targets of 0 and 1"), targets == -1
                raise ValueError(self._describe_bad(message, targets, mask, indices, limit))

    @staticmethod
    def _describe_bad(message: str, targets: torch.Tensor, mask: Optional[torch.Tensor],
                      indices: Optional[torch.Tensor], limit: Optional[int]) -> str:
        """The message with the first offending value (only computed on the error path); ``mask``: the bad targets."""
        if mask is not None:
            bad = mask.nonzero()[0].tolist()
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
