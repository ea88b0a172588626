"""The single-positive baselines of Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021:
AN, AN with label smoothing, WAN, EPR and ROLE. The conventions every loss follows are written in ``losses.py``.

Imports only the standard library, ``torch`` and ``losses_base.py``: it ships to the Hub as remote code.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses_base import MultiLabelLoss, _expected_positive_regularizer, _expected_positives, _int, _logit, _real

# Average number of positive labels per training image, the value Cole et al.
# (CVPR 2021) use for k in EPR / ROLE (their Table of dataset statistics).
# Note: one revision of their train.py uses 2.5 for COCO.
EXPECTED_POSITIVES_PER_IMAGE: Dict[str, float] = {
    "voc": 1.5,
    "coco": 2.9,
    "nuswide": 1.9,
    "cub": 31.4,
}


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
    supports_verified_negatives = False

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
    checkpoint the module's ``state_dict`` (``hspnet train`` stores it as
    safetensors). Under multi-process training, prepare the
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
    supports_verified_negatives = False

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
