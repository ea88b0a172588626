# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""What HSPNet's text side derives once and reuses (remote code beside `modeling_hspnet.py`: imports only torch and
its siblings).

- `HSPNetTextOptions`: how the text side runs (caches, prompt truncation, shared prefixes, label chunks); every
  choice gives the same results up to float rounding.
- `PromptLayout` and `LabelGraph`: what `HSPNetModel` derives from its fixed buffers: prompt lengths, the chunk plans
  of the label prompts, the label -> group index, and the two adjacencies.
- `TextCache`: the group features and label embeddings a model computed.

One rule decides when something derived or cached is reused (`Sources`):

    A value is reused while the tensors it was computed from are the same tensor objects, unchanged since then
    (their in-place version counters), on the same device and in the same dtype, and the settings it depends on
    are the same.

Optimizer steps, `load_state_dict`, EMA updates, `copy_` and any in-place edit bump a version counter; `.to()` and
casts change the device or dtype; a parameter or layer replaced by a new object is a new tensor. Not seen: writes
through `.data`, and optimizers that change weights without bumping version counters (fused Adam) while the model
stays in eval mode; `HSPNetModel.train()` drops the cached embeddings for the usual `train()` ... `eval()` flow, and
`clear_text_cache()` for anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .modeling_label_graph import process_relation
from .modeling_prompts import LabelPlan


@dataclass(frozen=True)
class HSPNetTextOptions:
    """How `HSPNetModel` runs its text side (`model.hspnet.text_options`; replace it with
    `dataclasses.replace(model.hspnet.text_options, ...)`). Every choice gives the same results up to float rounding;
    the defaults are the fastest exact ones.

    Args:
        cache_label_embeddings: in eval mode, when no gradient is needed, compute the `(C, D)` label embeddings once.
        cache_group_features: compute the group features before the GCN once (fixed prompts, frozen tower), in
            training too.
        truncate_prompts: cut prompts after their last EOS token (the text tower is causal).
        share_prompt_prefix: run each group's prompt prefix `[SOS] ctx_1..ctx_n` once for all its labels.
        label_chunk_size: run at most this many label prompts at once (all under activation checkpointing when there
            are several chunks); None: chunks planned for `memory_budget_mb`.
        memory_budget_mb: the activations of the label prompts kept for the backward pass; past it, label chunks run
            under activation checkpointing (see `plan_label_chunks`).
        before_recomputed_chunk: called before each label chunk that runs under activation checkpointing (in the
            forward pass and when the backward pass recomputes it), e.g. to give freed memory back; None: nothing.
    """

    cache_label_embeddings: bool = True
    cache_group_features: bool = True
    truncate_prompts: bool = True
    share_prompt_prefix: bool = True
    label_chunk_size: int | None = None
    memory_budget_mb: float = 2048
    before_recomputed_chunk: Callable[[], None] | None = None


def _version(tensor: torch.Tensor) -> int:
    """The in-place version counter; tensors made under `torch.inference_mode()` have none (they cannot be changed
    outside it) and count as -1."""
    return -1 if tensor.is_inference() else tensor._version


@dataclass(frozen=True)
class Sources:
    """The tensors a value was computed from, as they were then, and the settings it depends on (the one rule of
    this module's docstring)."""

    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]
    placements: tuple[tuple[torch.device, torch.dtype], ...]
    settings: tuple

    @classmethod
    def of(cls, tensors: list[torch.Tensor], settings: tuple = ()) -> Sources:
        return cls(tuple(tensors), tuple(_version(t) for t in tensors), tuple((t.device, t.dtype) for t in tensors),
                   settings)

    def hold(self, tensors: list[torch.Tensor], settings: tuple = ()) -> bool:
        """Whether a value computed from these sources is still valid for `tensors` and `settings` now."""
        return (
            settings == self.settings
            and len(tensors) == len(self.tensors)
            and all(now is then for now, then in zip(tensors, self.tensors))
            and all(_version(t) == version for t, version in zip(tensors, self.versions))
            and all((t.device, t.dtype) == placement for t, placement in zip(tensors, self.placements))
        )


@dataclass(frozen=True)
class PromptLayout:
    """What the prompt buffers say, as Python values and small tensors (`HSPNetModel.prompt_layout()`).

    Args:
        group_length / label_length: prompt tokens up to the last EOS (+1), what truncation keeps.
        first_label_eos: the earliest EOS position of a label prompt (a label's suffix starts after the context).
        suffix_lengths: each label's suffix length (name, ".", EOS), for the chunk plans.
        shared_prefix: every label prompt starts with the same SOS row, so prefixes can be shared by group.
        plan_with_grad / plan_without_grad: how the label prompts run through the text tower (`plan_label_chunks`).
        label_group: `(C,)` the group index of each label.
    """

    group_length: int
    label_length: int
    first_label_eos: int
    suffix_lengths: tuple[int, ...]
    shared_prefix: bool
    plan_with_grad: LabelPlan
    plan_without_grad: LabelPlan
    label_group: torch.Tensor
    sources: Sources

    def plan(self, needs_grad: bool) -> LabelPlan:
        return self.plan_with_grad if needs_grad else self.plan_without_grad


@dataclass(frozen=True)
class LabelGraph:
    """The fixed adjacencies the GCN runs on (`HSPNetModel.label_graph()`): `label_adjacency` `(C, C)` and
    `group_adjacency` `(G, G)`, processed from the raw relation (`process_relation`)."""

    label_adjacency: torch.Tensor
    group_adjacency: torch.Tensor
    sources: Sources


def build_prompt_layout(group_eos: torch.Tensor, label_eos: torch.Tensor, label_prompts: torch.Tensor, n_ctx: int,
                        label_to_group: list[int], plan: Callable[[list[int], bool], LabelPlan],
                        sources: Sources) -> PromptLayout:
    """The `PromptLayout` of these buffers; `plan(suffix_lengths, needs_grad)` makes a chunk plan."""
    with torch.inference_mode(False), torch.no_grad():  # normal tensors, usable in training later
        lengths = [int(t.max()) + 1 if t.numel() else 1 for t in (group_eos, label_eos)]
        # a suffix runs from position 1 + n_ctx to the EOS, inclusive
        suffix_lengths = (label_eos - n_ctx).clamp(min=1).tolist()
        sos = label_prompts[:, 0]
        return PromptLayout(
            group_length=lengths[0], label_length=lengths[1],
            first_label_eos=int(label_eos.min()) if label_eos.numel() else 0,
            suffix_lengths=tuple(suffix_lengths), shared_prefix=bool((sos == sos[:1]).all()),
            plan_with_grad=plan(suffix_lengths, True), plan_without_grad=plan(suffix_lengths, False),
            label_group=torch.tensor(label_to_group, dtype=torch.long, device=label_eos.device), sources=sources,
        )


def build_label_graph(relation: torch.Tensor, num_labels: int, keep_ratio: float, reweight_p: float,
                      sources: Sources) -> LabelGraph:
    """The `LabelGraph` of a raw `(C + G, C + G)` relation: each block processed by `process_relation`."""
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(relation.device.type, enabled=False):
        return LabelGraph(
            label_adjacency=process_relation(relation[:num_labels, :num_labels], keep_ratio, reweight_p),
            group_adjacency=process_relation(relation[num_labels:, num_labels:], keep_ratio, reweight_p),
            sources=sources,
        )


@dataclass
class _Cached:
    value: torch.Tensor
    version: int
    sources: Sources


class TextCache:
    """The group features (`"group"`) and label embeddings (`"label"`) a model computed, each with its `Sources`. A
    copy of the model (e.g. an EMA copy) starts with an empty cache: its weights are its own."""

    def __init__(self):
        self._values: dict[str, _Cached] = {}

    def lookup(self, model, all_labels: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(label_embeds, group_features)` of `HSPNetModel` `model`, each from the cache (computed and stored on a
        miss) or None where it must be computed in the graph: switched off in `model.text_options`, or a gradient
        must reach it. The label embeddings (of `all_labels`) are cached in eval mode when no gradient is needed,
        the group features whenever the text tower is frozen."""
        options = model.text_options
        device_type = model.relation.device.type
        autocast = torch.is_autocast_enabled(device_type)
        settings = (options, torch.is_inference_mode_enabled(), autocast,
                    torch.get_autocast_dtype(device_type) if autocast else None,
                    model.config.relation_keep_ratio, model.config.relation_reweight_p)
        if all_labels and options.cache_label_embeddings and not model.training and not torch.is_grad_enabled():
            tensors = _text_tensors(model, "label")
            label_embeds = self.get("label", tensors, settings)
            if label_embeds is None:
                label_embeds = model.compute_label_embeddings(self._group_features(model, settings))
                self.put("label", label_embeds, tensors, settings)
            return label_embeds, None
        return None, self._group_features(model, settings)

    def _group_features(self, model, settings: tuple) -> torch.Tensor | None:
        tensors = _text_tensors(model, "group")
        if not model.text_options.cache_group_features or any(t.requires_grad for t in tensors):
            return None  # switched off, or the text tower trains
        group_features = self.get("group", tensors, settings)
        if group_features is None:
            with torch.no_grad():
                group_features = model.encode_groups()
            self.put("group", group_features, tensors, settings)
        return group_features

    def get(self, kind: str, tensors: list[torch.Tensor], settings: tuple) -> torch.Tensor | None:
        """The cached value of `kind` if it was computed from `tensors` and `settings` as they are now, and has not
        been edited in place since."""
        entry = self._values.get(kind)
        if entry is None or _version(entry.value) != entry.version or not entry.sources.hold(tensors, settings):
            return None
        return entry.value

    def put(self, kind: str, value: torch.Tensor, tensors: list[torch.Tensor], settings: tuple) -> None:
        self._values[kind] = _Cached(value, _version(value), Sources.of(tensors, settings))

    def drop(self, kind: str | None = None) -> None:
        """Forget `kind` (or everything)."""
        if kind is None:
            self._values.clear()
        else:
            self._values.pop(kind, None)

    def kinds(self) -> set[str]:
        return set(self._values)

    def __deepcopy__(self, memo: dict) -> TextCache:
        return TextCache()


def _text_tensors(model, kind: str) -> list[torch.Tensor]:
    """The parameters and buffers the text-side value of `kind` ("group" or "label") is computed from."""
    modules = [model.clip.text_model, model.clip.text_projection]
    tensors = [model.group_prompt_embeds, model.group_eos_positions]
    if kind == "label":
        modules += [model.meta_net, model.gcn]
        tensors += [model.relation, model.label_prompt_embeds, model.label_eos_positions]
    return [p for module in modules for p in module.parameters()] + tensors


__all__ = ["HSPNetTextOptions", "LabelGraph", "PromptLayout", "Sources", "TextCache", "build_label_graph",
           "build_prompt_layout"]
