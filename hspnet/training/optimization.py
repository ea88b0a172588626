"""The optimiser and schedule of the released recipe: Adam parameter groups (image tower + meta-net at ``lr``, GCN at
``gcn_lr``; weight decay only on weights with more than one dimension; a loss's own parameters at ``loss_lr_scale`` x
``lr``) and OneCycleLR with ``pct_start`` over a schedule that may be longer than the epochs trained.
"""

from __future__ import annotations

import torch


def parameter_groups(model, lr: float, gcn_lr: float, weight_decay: float) -> list[dict]:
    """Adam parameter groups of the reference recipe, in the order `[lr decay, lr no-decay, gcn decay, gcn
    no-decay]` (empty groups dropped): GCN parameters get `gcn_lr`, everything else that trains (image tower, meta-net,
    and the text tower if unfrozen) gets `lr`; weight decay applies only to parameters with more than one dimension
    (no decay on biases, norms, gamma, embeddings of shape (n,))."""
    groups = {key: [] for key in ("decay", "no_decay", "gcn_decay", "gcn_no_decay")}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = "gcn_" if ".gcn." in f".{name}" else ""
        groups[prefix + ("decay" if param.ndim > 1 else "no_decay")].append(param)
    spec = [("decay", lr, weight_decay), ("no_decay", lr, 0.0), ("gcn_decay", gcn_lr, weight_decay),
            ("gcn_no_decay", gcn_lr, 0.0)]
    return [
        {"params": groups[key], "lr": group_lr, "weight_decay": decay, "name": key}
        for key, group_lr, decay in spec
        if groups[key]
    ]


def loss_parameter_group(loss: torch.nn.Module, lr: float, loss_lr_scale: float) -> list[dict]:
    """The Adam group of a loss's own parameters (ROLE's label estimates) at `lr * loss_lr_scale`, without weight
    decay; `[]` for a loss without parameters."""
    parameters = [p for p in loss.parameters() if p.requires_grad]
    return [{"params": parameters, "lr": lr * loss_lr_scale, "weight_decay": 0.0, "name": "loss"}] if parameters else []


class OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's OneCycleLR, also for schedules so short that a phase has no length.

    torch's warm-up phase ends at step ``pct_start * total_steps - 1`` and the annealing phase at ``total_steps - 1``;
    each step's learning rate is interpolated over ``(step - phase start) / (phase end - phase start)``, a division by
    zero (ZeroDivisionError) when ``pct_start * total_steps`` is exactly 1 (e.g. 5 steps at the default 0.2, 4 at 0.25,
    2 at 0.5, 10 at 0.1: the warm-up ends at step 0) or ``pct_start`` is 1 (the annealing phase is empty; at the step
    after the last one). Here a step of a phase without length is at that phase's end (fraction 1: the phase's end
    value), the limit the interpolation reaches in every other case; every other step, and so any schedule torch can
    compute, is torch's own value (same class, same state dict, resumable)."""

    def get_lr(self):
        try:
            return super().get_lr()
        except ZeroDivisionError:  # raised for the first group before any group was changed
            return self._lr_of_empty_phase()

    def _lr_of_empty_phase(self) -> list[float]:
        step, lrs = self.last_epoch, []
        for group in self.optimizer.param_groups:
            start = 0.0
            for index, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if step <= end or index == len(self._schedule_phases) - 1:
                    fraction = (step - start) / (end - start) if end != start else 1.0
                    lrs.append(self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], fraction))
                    if self.cycle_momentum:
                        momentum = self._anneal_func(group[phase["start_momentum"]], group[phase["end_momentum"]],
                                                     fraction)
                        if self.use_beta1:
                            group["betas"] = (momentum, *group["betas"][1:])
                        else:
                            group["momentum"] = momentum
                    break
                start = end
        return lrs


def one_cycle_scheduler(optimizer, steps_per_epoch: int, schedule_epochs: int, pct_start: float = 0.2):
    """OneCycleLR over `schedule_epochs * steps_per_epoch` steps, peaking at each group's `lr` (torch's schedule,
    step for step; schedules of a few steps, where torch divides by zero, work too: see :class:`OneCycleLR`).
    `pct_start` must be a number in [0, 1] (``ValueError`` naming it otherwise)."""
    if isinstance(pct_start, bool) or not isinstance(pct_start, (int, float)) or not 0.0 <= float(pct_start) <= 1.0:
        raise ValueError(f"pct_start must be a number in [0, 1] (the fraction of the schedule spent warming up), "
                         f"got {pct_start!r}")
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, schedule_epochs * steps_per_epoch),
        pct_start=float(pct_start),
    )
