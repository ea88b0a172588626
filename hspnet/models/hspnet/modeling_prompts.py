# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""The frozen CLIP text tower run on prompt *embeddings*, as HSPNet needs it (remote code beside `modeling_hspnet.py`:
imports only torch, transformers and the standard library).

Reading order:

1. `encode_prompt_embeddings`: whole prompts `(N, L, W)` -> projected EOS features `(N, D)`.
2. `encode_shared_prefix_prompts`: label prompts `[prefix of the label's group] + [label suffix]`, each group's prefix
   run once (the tower is causal), labels in chunks sorted by suffix length, under activation checkpointing where a
   chunk does not fit the memory budget. Exact: the same features and gradients as (1), up to float rounding.
3. `plan_label_chunks` / `label_activation_bytes`: how labels are split into chunks for a memory budget.
4. `clip_text_embeddings`: CLIP text features of plain strings (automatic hierarchy, zero-shot baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from transformers import CLIPModel
from transformers.masking_utils import create_causal_mask


def encode_prompt_embeddings(
    clip: CLIPModel,
    prompt_embeds: torch.Tensor,
    eos_positions: torch.Tensor,
    truncate: bool = True,
    length: int | None = None,
) -> torch.Tensor:
    """Run CLIP's text tower on token EMBEDDINGS instead of token ids.

    Adds the position embeddings, runs the causal transformer and the final layer norm, takes the feature at each
    prompt's EOS position and applies the text projection (no normalisation), like `CLIPModel.get_text_features`.

    With `truncate=True` the prompts are cut to `length` tokens first (default `max(eos_positions) + 1`, read from the
    device; pass it as a Python int to avoid that, as `HSPNetModel` does, and under `torch.compile`). The text
    transformer is causal, so the feature at a position never depends on later tokens: the output is identical to
    running all `L` tokens.

    Args:
        prompt_embeds (`torch.Tensor` of shape `(N, L, W)`): token embeddings of `N` prompts.
        eos_positions (`torch.LongTensor` of shape `(N,)`): index of each prompt's EOS token.
    Returns:
        `torch.Tensor` of shape `(N, D)`.
    """
    text_model = clip.text_model
    if truncate:
        prompt_embeds = prompt_embeds[:, : length or int(eos_positions.max()) + 1]
    hidden = text_model.embeddings(inputs_embeds=prompt_embeds)
    mask = create_causal_mask(config=text_model.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    hidden = text_model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    hidden = text_model.final_layer_norm(hidden)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eos_positions.to(hidden.device)]
    return clip.text_projection(pooled)


# ---------------------------------------------------------------------------------------------------------------------
# Shared prefixes
# ---------------------------------------------------------------------------------------------------------------------


def _layer_kv(layer, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values `(N, heads, T, head_dim)` of a CLIP encoder layer for `hidden` `(N, T, W)`."""
    attention = layer.self_attn
    normed = layer.layer_norm1(hidden)
    shape = (*hidden.shape[:2], -1, attention.head_dim)
    return tuple(proj(normed).view(shape).transpose(1, 2) for proj in (attention.q_proj, attention.k_proj,
                                                                          attention.v_proj))


def _layer_finish(layer, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a CLIP encoder layer after attention: output projection, residual, MLP, residual."""
    hidden = hidden + layer.self_attn.out_proj(attended.transpose(1, 2).reshape(*hidden.shape[:2], -1))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def _encode_suffixes(
    text_model, text_projection, prefix_keys: list, prefix_values: list, suffix_hidden: torch.Tensor,
    label_group: torch.Tensor, eos_in_suffix: torch.Tensor,
) -> torch.Tensor:
    """Label suffixes `(c, S, W)` (position embeddings added) through every layer, attending to their group's cached
    prefix keys/values `(G, heads, P, head_dim)` and causally to themselves -> projected EOS features `(c, D)`.

    Only each label's EOS row is read after the last layer, so that layer computes the keys and values of every
    position but the query, attention, output projection and MLP of the EOS row alone (the other rows' results
    would be discarded; the EOS row is computed exactly as in the full layer)."""
    prefix_length, suffix_length = prefix_keys[0].shape[2], suffix_hidden.shape[1]
    causal = torch.ones(suffix_length, suffix_length, dtype=torch.bool, device=suffix_hidden.device).tril()
    mask = torch.cat([causal.new_ones(suffix_length, prefix_length), causal], dim=1)  # (S, P + S)
    rows = torch.arange(suffix_hidden.shape[0], device=suffix_hidden.device)
    layers = text_model.encoder.layers
    hidden = suffix_hidden
    for index, (layer, keys, values) in enumerate(zip(layers, prefix_keys, prefix_values)):
        if index < len(layers) - 1:
            query, key, value = _layer_kv(layer, hidden)
            attention_mask = mask
        else:
            attention = layer.self_attn
            normed = layer.layer_norm1(hidden)
            shape = (hidden.shape[0], -1, attention.num_heads, attention.head_dim)
            key, value = (proj(normed).view(shape).transpose(1, 2) for proj in (attention.k_proj, attention.v_proj))
            hidden = hidden[rows, eos_in_suffix].unsqueeze(1)  # (c, 1, W)
            query = attention.q_proj(normed[rows, eos_in_suffix].unsqueeze(1)).view(shape).transpose(1, 2)
            attention_mask = mask[eos_in_suffix][:, None, None, :]  # (c, 1, 1, P + S)
        key = torch.cat([keys[label_group], key], dim=2)
        value = torch.cat([values[label_group], value], dim=2)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                  scale=layer.self_attn.scale)
        hidden = _layer_finish(layer, hidden, attended)
    return text_projection(text_model.final_layer_norm(hidden[:, 0]))


@dataclass(frozen=True)
class LabelChunk:
    """Labels `order[start:stop]` (positions in the length-sorted order), run to suffix length `length`, under
    activation checkpointing when `checkpoint` (and gradients are needed)."""

    start: int
    stop: int
    length: int
    checkpoint: bool


@dataclass(frozen=True)
class LabelPlan:
    """How `encode_shared_prefix_prompts` runs the labels: `order` sorts them by suffix length (None: already
    sorted), `chunks` cover the sorted order. `inverse` puts the outputs back in label order."""

    chunks: tuple[LabelChunk, ...]
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None


def label_activation_bytes(text_config, prefix_length: int, suffix_length: int, bytes_per_value: int = 4) -> int:
    """What one label prompt keeps for the backward pass through the frozen text tower, per layer: for each suffix
    token 2 vectors of the MLP width (fc1's output and the quick-GELU sigmoid) and 4 of the width (queries, the
    attention output, the layer norms' inputs), plus the keys and values over prefix + suffix (a slight overestimate:
    the last layer keeps less). Measured with `torch.autograd.graph.saved_tensors_hooks` on CLIP ViT-B with a 4-token
    suffix: 1.55 MB per label; this gives 1.62 MB."""
    per_layer = suffix_length * (2 * text_config.intermediate_size + 4 * text_config.hidden_size)
    per_layer += 2 * text_config.hidden_size * (prefix_length + suffix_length)
    return bytes_per_value * text_config.num_hidden_layers * per_layer


def plan_label_chunks(
    suffix_lengths: list[int],
    bytes_per_label: Callable[[int], int],
    budget_bytes: int | None,
    max_labels: int | None = None,
    needs_grad: bool = True,
    device: torch.device | str | None = None,
) -> LabelPlan:
    """Split labels into chunks (pure Python on the lengths; no device work but the two index tensors).

    Labels are sorted by suffix length (stable) and a chunk never spans two lengths, so each chunk runs only as many
    positions as its own labels need (a short name does not pay for the longest one). Then:

    - no gradients: chunks of at most `budget_bytes` of activations (nothing is kept between chunks);
    - gradients, everything within `budget_bytes`: no checkpointing (the fastest: no recomputation);
    - gradients, more than the budget: chunks of at most half the budget; the first ones, up to half the budget, keep
      their activations, the rest run under activation checkpointing (recomputed one chunk at a time in the backward
      pass), so the activations alive at once stay within the budget whatever the number of labels.

    `max_labels` (the `label_chunk_size` option) caps every chunk instead and checkpoints all of them when there is
    more than one. `bytes_per_label(length)` is the estimate for one label of that suffix length.

    Args:
        suffix_lengths (`list[int]`): each label's suffix length (EOS position within the suffix + 1).
    Returns:
        `LabelPlan`.
    """
    count = len(suffix_lengths)
    order = sorted(range(count), key=suffix_lengths.__getitem__)
    lengths = [suffix_lengths[i] for i in order]
    runs, start = [], 0  # (start, stop) of equal lengths
    for position in range(1, count + 1):
        if position == count or lengths[position] != lengths[start]:
            runs.append((start, position))
            start = position
    total = sum(bytes_per_label(length) for length in lengths)
    if max_labels:
        capacity = None
        checkpoint_all = needs_grad and count > max_labels
    else:
        fits = budget_bytes is None or total <= budget_bytes
        capacity = None if (budget_bytes is None or (needs_grad and fits)) else (
            budget_bytes if not needs_grad else budget_bytes // 2)
        checkpoint_all = False
    chunks, kept = [], 0
    for run_start, run_stop in runs:
        length = lengths[run_start]
        if max_labels:
            per_chunk = max_labels
        elif capacity is None:
            per_chunk = run_stop - run_start
        else:
            per_chunk = max(1, capacity // bytes_per_label(length))
        for chunk_start in range(run_start, run_stop, per_chunk):
            chunk_stop = min(run_stop, chunk_start + per_chunk)
            size = (chunk_stop - chunk_start) * bytes_per_label(length)
            if max_labels:
                checkpoint = checkpoint_all
            elif capacity is None or not needs_grad:
                checkpoint = False
            else:
                checkpoint = kept + size > capacity
                kept += 0 if checkpoint else size
            chunks.append(LabelChunk(chunk_start, chunk_stop, length, checkpoint))
    if order == list(range(count)):
        return LabelPlan(tuple(chunks))
    order_tensor = torch.tensor(order, dtype=torch.long, device=device)
    inverse = torch.empty_like(order_tensor)
    inverse[order_tensor] = torch.arange(count, device=device)
    return LabelPlan(tuple(chunks), order_tensor, inverse)


class _CallThenEncode:
    """`_encode_suffixes` of a recomputed chunk, after `before()` (e.g. a memory release): it runs once in the forward
    pass and once more when the backward pass recomputes the chunk."""

    def __init__(self, before: Callable[[], None]):
        self.before = before

    def __call__(self, *args) -> torch.Tensor:
        self.before()
        return _encode_suffixes(*args)


def encode_shared_prefix_prompts(
    clip: CLIPModel,
    prefix_embeds: torch.Tensor,
    suffix_embeds: torch.Tensor,
    label_group: torch.Tensor,
    eos_in_suffix: torch.Tensor,
    chunk_size: int | None = None,
    plan: LabelPlan | None = None,
    before_recomputed_chunk: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The text tower on label prompts `[prefix of the label's group] + [the label's suffix]`, running each group's
    prefix only once. Equal (up to float rounding) to `encode_prompt_embeddings` on the concatenated prompts.

    The text transformer is causal, so the hidden states of the prefix positions (`[SOS] ctx_1..ctx_n`, the same for
    every label of a group) do not depend on the label: they are computed for the `G` groups, and each label's suffix
    (name, ".", EOS) attends to its group's cached keys and values. Labels run in the chunks of `plan` (see
    `plan_label_chunks`; default: sorted by suffix length, at most `chunk_size` per chunk, all under activation
    checkpointing when gradients are needed and there is more than one chunk), so training memory holds the `(C, D)`
    outputs, the prefix states and the activations the plan keeps, whatever `C`. `before_recomputed_chunk` (e.g. the
    training path's release of freed heap memory) is called before each chunk that runs under activation
    checkpointing, in the forward pass and again when the backward pass recomputes it (not under `torch.compile`).

    Args:
        prefix_embeds (`torch.Tensor` of shape `(G, P, W)`): token embeddings of each group's prefix.
        suffix_embeds (`torch.Tensor` of shape `(C, S, W)`): token embeddings of each label's suffix (positions
            `P .. P + S - 1` of its prompt).
        label_group (`torch.LongTensor` of shape `(C,)`): each label's group.
        eos_in_suffix (`torch.LongTensor` of shape `(C,)`): each label's EOS position minus `P`.
        plan (`LabelPlan`, *optional*): the chunks, computed by the caller (cached by `HSPNetModel`).
    Returns:
        `torch.Tensor` of shape `(C, D)`: projected EOS features (not normalised).
    """
    text_model = clip.text_model
    positions = text_model.embeddings.position_embedding.weight
    prefix_length, suffix_length = prefix_embeds.shape[1], suffix_embeds.shape[1]
    hidden = prefix_embeds + positions[:prefix_length].to(prefix_embeds.dtype)
    prefix_keys, prefix_values = [], []
    for layer in text_model.encoder.layers:
        query, key, value = _layer_kv(layer, hidden)
        prefix_keys.append(key)
        prefix_values.append(value)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=layer.self_attn.scale)
        hidden = _layer_finish(layer, hidden, attended)
    suffix_hidden = suffix_embeds + positions[prefix_length : prefix_length + suffix_length].to(suffix_embeds.dtype)
    if plan is None:
        lengths = (eos_in_suffix + 1).tolist()
        plan = plan_label_chunks(lengths, lambda length: 1, None, max_labels=chunk_size,
                                 needs_grad=torch.is_grad_enabled(), device=suffix_embeds.device)
    if plan.order is not None:
        suffix_hidden, label_group, eos_in_suffix = (
            suffix_hidden[plan.order], label_group[plan.order], eos_in_suffix[plan.order])
    call_before = (before_recomputed_chunk is not None and torch.is_grad_enabled()
                   and not torch.compiler.is_compiling())
    outputs = []
    for chunk in plan.chunks:
        part = slice(chunk.start, chunk.stop)
        # contiguous: the same memory layout (so the same float rounding) whatever length the prompts are stored at
        args = (text_model, clip.text_projection, prefix_keys, prefix_values,
                suffix_hidden[part, : chunk.length].contiguous(), label_group[part], eos_in_suffix[part])
        if chunk.checkpoint and torch.is_grad_enabled():
            function = _CallThenEncode(before_recomputed_chunk) if call_before else _encode_suffixes
            outputs.append(torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False))
        else:
            outputs.append(_encode_suffixes(*args))
    features = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return features if plan.inverse is None else features[plan.inverse]


# ---------------------------------------------------------------------------------------------------------------------
# Plain text
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_text_embeddings(clip_model: CLIPModel, tokenizer, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """CLIP text features of `texts` (projected, NOT normalised), shape `(len(texts), D)`, computed without grad."""
    device = clip_model.text_projection.weight.device
    features = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        output = clip_model.get_text_features(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        )
        features.append(output.pooler_output if hasattr(output, "pooler_output") else output)
    return torch.cat(features).float()
