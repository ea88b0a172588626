# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""HSPNet's text-side state and cache (remote code beside `modeling_hspnet.py`: imports only torch and its
siblings).

`HSPNetModel` derives state from its buffers and config (prompt lengths, the label chunk plans, the label -> group
index, the two adjacencies) and caches the text side (the group features; in eval mode without gradients, the label
embeddings). `HSPNetTextCacheMixin` holds all of that bookkeeping, one rule for when a value is reused (see
`HSPNetModel`'s docstring), and one compile-disabled call per forward pass (`_text_from_cache`): the model's own file
keeps what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .modeling_label_graph import process_relation


def _tensor_state(tensors: list[torch.Tensor]) -> tuple:
    """`(in-place version counter, storage address)` of each tensor. Tensors made under `torch.inference_mode()`
    have no version counter (and cannot be modified outside it): they count as version -1."""
    try:
        return tuple((t._version, t.data_ptr()) for t in tensors)
    except RuntimeError:
        return tuple((-1 if t.is_inference() else t._version, t.data_ptr()) for t in tensors)


@dataclass
class _CacheEntry:
    """A cached text-side tensor (`value`), the trainable-or-not parameters it depends on (`params`), every tensor
    it was computed from plus itself (`sources`) with their `_tensor_state` then (`state`), and the `context`."""

    value: torch.Tensor | None
    params: list[torch.Tensor]
    sources: list[torch.Tensor]
    state: tuple
    context: tuple


class HSPNetTextCacheMixin:
    """The text-side state and cache of `HSPNetModel` (which provides the buffers, `config`, `_plan`,
    `_encode_groups` and `compute_label_embeddings` used here). Listed before `PreTrainedModel` in the bases, so
    `train`, `_apply` and `_load_from_state_dict` drop the cache and then do what `nn.Module` does."""

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed `(C, C)` label adjacency and `(G, G)` group adjacency, from the raw `relation`; computed once per
        content of `relation` and relation settings (not at every training step)."""
        self._refresh_text_state()
        return self._adjacency[1], self._adjacency[2]

    def clear_text_cache(self) -> None:
        """Forget the cached group features, label embeddings and everything derived from the buffers (prompt
        lengths, label -> group index, adjacencies)."""
        self._text_cache: dict[str, _CacheEntry] = {}
        # (state of the EOS buffers, group prompt length, label prompt length, earliest label EOS position)
        self._prompt_lengths: tuple | None = None
        self._label_group_index: torch.Tensor | None = None
        self._prefix_shared: tuple | None = None  # (state of label_prompt_embeds, whether all SOS rows are equal)
        self._adjacency: tuple | None = None  # (key, label adjacency, group adjacency)
        self._label_plans: tuple | None = None  # (key, label suffix lengths, {needs_grad: LabelPlan})

    def train(self, mode: bool = True):
        self._text_cache = {}  # the keyed derived state (lengths, index, adjacencies) stays: it cannot go stale here
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):  # load_state_dict, also when called on a parent module
        self.clear_text_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self.clear_text_cache()
        relation = self.relation
        result = super()._apply(fn, *args, **kwargs)
        if self.relation.dtype != torch.float32:  # moved to a device: yes; cast to half precision: no
            self._buffers["relation"] = relation.to(device=self.relation.device, dtype=torch.float32)
        return result

    def _refresh_text_state(self) -> None:
        """State the text side reads, derived from the buffers and the config and recomputed only when they change:
        the prompt lengths as Python ints, the plans of label chunks (with and without gradients), whether all label
        prompts start with the same SOS row (then their prefixes can be shared), the label -> group index, and the
        two adjacencies."""
        eos = (self.group_eos_positions, self.label_eos_positions)
        state = _tensor_state(eos)
        if self._prompt_lengths is None or self._prompt_lengths[0] != state:
            lengths = [int(t.max()) + 1 if t.numel() else 1 for t in eos]
            first_eos = int(self.label_eos_positions.min()) if self.label_eos_positions.numel() else 0
            self._prompt_lengths = (state, *lengths, first_eos)
        state = _tensor_state([self.label_prompt_embeds])
        if self._prefix_shared is None or self._prefix_shared[0] != state:
            sos = self.label_prompt_embeds[:, 0]
            self._prefix_shared = (state, bool((sos == sos[:1]).all()))
        device = self.relation.device
        config = self.config
        key = (_tensor_state([self.relation]), config.relation_keep_ratio, config.relation_reweight_p)
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            # normal tensors (not inference tensors), usable in training later
            plan_key = (self._prompt_lengths[0], self.config.n_ctx, self.text_memory_budget_mb, self.label_chunk_size,
                        self.label_eos_positions.device)
            if self._label_plans is None or self._label_plans[0] != plan_key:
                # a suffix runs from position 1 + n_ctx to the EOS, inclusive
                suffix_lengths = (self.label_eos_positions - self.config.n_ctx).clamp(min=1).tolist()
                plans = {grad: self._plan(suffix_lengths, grad) for grad in (True, False)}
                self._label_plans = (plan_key, suffix_lengths, plans)
            if self._label_group_index is None or self._label_group_index.device != device:
                self._label_group_index = torch.tensor(config.label_to_group, dtype=torch.long, device=device)
            if self._adjacency is None or self._adjacency[0] != key:
                num_labels, keep, p = config.num_labels, config.relation_keep_ratio, config.relation_reweight_p
                self._adjacency = (
                    key,
                    process_relation(self.relation[:num_labels, :num_labels], keep, p),
                    process_relation(self.relation[num_labels:, num_labels:], keep, p),
                )

    def _text_sources(self, kind: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The parameters and buffers the cached value of `kind` ("group" or "label") is computed from."""
        modules = [self.clip.text_model, self.clip.text_projection]
        buffers = [self.group_prompt_embeds, self.group_eos_positions]
        if kind == "label":
            modules += [self.meta_net, self.gcn]
            buffers += [self.relation, self.label_prompt_embeds, self.label_eos_positions]
        return [p for module in modules for p in module.parameters()], buffers

    @torch.compiler.disable
    def _cached_text(self, kind: str) -> torch.Tensor | None:
        """All the cache bookkeeping, kept out of compiled graphs: refreshes the Python-side state, then returns the
        value of `kind` ("group" features or "label" embeddings) from the cache, computing and storing it on a miss,
        or None when it cannot be cached (switched off; gradients must reach it) and must be computed in the graph."""
        self._refresh_text_state()
        if kind == "group":
            enabled, needs_grad = self.cache_group_features, True
        else:
            enabled, needs_grad = self.cache_label_embeddings and not self.training, torch.is_grad_enabled()
        if not enabled:
            return None
        device_type = self.relation.device.type
        autocast = torch.is_autocast_enabled(device_type)
        context = (
            torch.is_inference_mode_enabled(),  # an inference tensor cannot enter an autograd graph later
            autocast,
            torch.get_autocast_dtype(device_type) if autocast else None,
            self.truncate_prompts,
            self.config.relation_keep_ratio,
            self.config.relation_reweight_p,
        )
        if kind == "label":  # a parameter or layer of HSPNet's own small modules replaced by a new object is seen too
            context += (tuple(id(p) for module in (self.gcn, self.meta_net) for p in module.parameters()),)
        entry = self._text_cache.get(kind)
        if entry is None or entry.context != context or _tensor_state(entry.sources) != entry.state:
            params, buffers = self._text_sources(kind)
            entry = _CacheEntry(None, params, params + buffers, (), context)
        if needs_grad and any(p.requires_grad for p in entry.params):
            return None
        if entry.value is None:
            with torch.no_grad():
                value = self._encode_groups() if kind == "group" else self.compute_label_embeddings()
            entry.value, entry.sources = value, entry.sources + [value]  # in-place edits of the output count too
            entry.state = _tensor_state(entry.sources)
            self._text_cache[kind] = entry
        return entry.value

    @torch.compiler.disable
    def _text_from_cache(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(label_embeds, group_features)` from the cache, each None where it must be computed in the graph; one
        call, so a compiled forward pass has a single graph break."""
        label_embeds = self._cached_text("label") if self.cache_label_embeddings and not self.training else None
        return label_embeds, (self._cached_text("group") if label_embeds is None else None)


__all__ = ["HSPNetTextCacheMixin"]
