"""The weight EMA of the released recipe and the choice it enters: :class:`ModelEMA` (decay chosen by :func:`ema_decay`
so that one epoch keeps ``ema_keep_per_epoch``, 0.82, of the old average) and :func:`select_source` ("ema" or
"regular", the model with the higher selection mAP; ties go to the EMA).
"""

from __future__ import annotations

import copy

import torch

from hspnet.evaluation.loop import selection_map


def ema_decay(steps_per_epoch: int, keep_per_epoch: float = 0.82) -> float:
    """The per-step decay such that `steps_per_epoch` updates keep `keep_per_epoch` of the old average."""
    return keep_per_epoch ** (1.0 / max(1, steps_per_epoch))


def constant_buffer_names(model: torch.nn.Module) -> set[str]:
    """The full names of the buffers that every submodule declares fixed in its `constant_buffers` class attribute
    (for HSPNet: `HSPNetModel.constant_buffers`, the prompts and the relation)."""
    names = set()
    for prefix, module in model.named_modules():
        for name in getattr(type(module), "constant_buffers", ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


class ModelEMA:
    """Exponential moving average of a model's weights, `ema = decay * ema + (1 - decay) * model`, for every
    floating-point parameter and buffer (batch-norm statistics included) as in the released code, except the tensors
    that cannot change during training: the parameters that do not require grad (the frozen text tower), the buffers
    the model declares constant (:func:`constant_buffer_names`) and any names in `constant`; averaging them would only
    cost time and add rounding. Integer buffers are copied. `module` is a full model (eval mode) that can be evaluated
    and saved; :meth:`trained_state` / :meth:`load_trained_state` are what a checkpoint stores.

    The copy shares with `model` what each submodule declares fixed by construction (`constant_buffers` and the
    attributes derived from them only, `constant_derived`: for HSPNet the prompts, the relation and the processed
    adjacencies, ~0.8 GB at 10,000 labels) and leaves out what it declares a training run's state (`run_state`:
    HSPNet's loss with ROLE's `(N, C)` label estimates, rebuilt on first use should the copy need a loss)."""

    def __init__(self, model: torch.nn.Module, decay: float, constant: set[str] | None = None):
        memo: dict[int, object] = {}  # copy.deepcopy's: an object found here is replaced by its value, not copied
        for module in model.modules():
            declared = type(module)
            for name in (*getattr(declared, "constant_buffers", ()), *getattr(declared, "constant_derived", ())):
                value = getattr(module, name, None)
                if value is not None:
                    memo[id(value)] = value
            for name in getattr(declared, "run_state", ()):
                if module.__dict__.get(name) is not None:
                    memo[id(module.__dict__[name])] = None
        self.module = copy.deepcopy(model, memo).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.constant = ({name for name, p in model.named_parameters() if not p.requires_grad}
                         | constant_buffer_names(model) | set(constant or ()))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        model_state = model.state_dict()
        averaged, targets = [], []
        for name, ema_value in self.module.state_dict().items():
            if name in self.constant:
                continue
            value = model_state[name]
            if ema_value.is_floating_point():
                averaged.append(ema_value)
                targets.append(value.to(device=ema_value.device, dtype=ema_value.dtype))
            else:
                ema_value.copy_(value)
        if averaged:
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, targets, alpha=1 - self.decay)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The averaged (and copied) tensors: every entry of the copy's `state_dict` that can change in training;
        what a checkpoint stores (the constant ones are the model's own)."""
        return {name: value for name, value in self.module.state_dict().items() if name not in self.constant}

    def load_trained_state(self, tensors: dict[str, torch.Tensor], decay: float, source: str = "the EMA state") -> None:
        """Restore :meth:`trained_state` and the decay; other names or shapes raise a `ValueError` naming `source`."""
        expected = self.trained_state()
        if set(tensors) != set(expected):
            missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise ValueError(f"{source}: other tensors than this run's EMA (missing {missing[:5]}, unknown "
                             f"{unknown[:5]})")
        with torch.no_grad():
            for name, value in tensors.items():
                if value.shape != expected[name].shape:
                    raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, this run's "
                                     f"{tuple(expected[name].shape)}")
                expected[name].copy_(value)
        self.decay = float(decay)


def select_source(scores: dict[str, dict]) -> str:
    """"ema" or "regular": the model with the higher selection mAP (:func:`~hspnet.evaluation.loop.selection_map`);
    a tie goes to the EMA model, as in the released code (`if mAP_score_ema >= mAP_score_regular`)."""
    if "ema" in scores and selection_map(scores["ema"]) >= selection_map(scores["regular"]):
        return "ema"
    return "regular"
