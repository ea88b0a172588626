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


def one_cycle_scheduler(optimizer, steps_per_epoch: int, schedule_epochs: int, pct_start: float = 0.2):
    """OneCycleLR over `schedule_epochs * steps_per_epoch` steps, peaking at each group's `lr`."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(1, schedule_epochs * steps_per_epoch),
        pct_start=pct_start,
    )
