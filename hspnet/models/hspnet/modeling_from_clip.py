# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""What an HSPNet model is built from (remote code beside `modeling_hspnet.py`: imports only torch, transformers and
its siblings).

`HSPNetPreTrainedModel.from_clip` and `HSPNetModel.set_prompts` / `set_relation` are thin steps over these:

1. `load_clip_parts`: the CLIP configuration, weights, tokenizer and image normalisation from a Hub id, a local
   folder, a `CLIPModel`, or `ClipParts` (which the package makes from OpenAI-format weights).
2. `tokenize_hierarchy_prompts`: the group prompts (`group_prompt_template`) and label prompts
   (`ctx_init + " " + label + "."`) as token ids and EOS positions, with errors that name the prompt.
3. `text_relation` (the default raw relation: cosine similarities of the names' CLIP text embeddings) and
   `read_relation` (a given one, from an array, a tensor or a `.npy` file, checked).
4. `default_image_processor`: the authors' preprocessing at the image tower's resolution.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPModel

from .configuration_hspnet import HSPNetConfig
from .image_processing_hspnet import HSPNetImageProcessor
from .modeling_prompts import clip_text_embeddings


def prompt_name(name: str) -> str:
    """The released code replaces underscores by spaces in label and group names before tokenizing."""
    return name.replace("_", " ")


def default_image_processor(config: HSPNetConfig, **kwargs) -> HSPNetImageProcessor:
    """The authors' preprocessing at the image tower's resolution (resize the short side, bicubic; centre crop with
    torchvision's rounding; CLIP mean/std unless given in `kwargs`): see `image_processing_hspnet.py`."""
    size = config.image_size
    return HSPNetImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ClipParts:
    """What `from_clip` takes from a CLIP checkpoint: `clip_config` (a dict), `clip_weights` (a state dict), the
    `tokenizer`, `config_kwargs` the checkpoint implies (an OpenAI ResNet: `vision_backbone="clip_resnet"` and its
    layout), and `normalisation` (the checkpoint's own image mean / std, when it has an image processor). The package
    makes one from OpenAI-format weights (`hspnet.models.openai_clip.load_openai_clip_parts`)."""

    clip_config: dict
    clip_weights: Mapping[str, torch.Tensor]
    tokenizer: Any
    config_kwargs: dict = field(default_factory=dict)
    normalisation: dict = field(default_factory=dict)


def load_clip_parts(
    clip: str | os.PathLike | CLIPModel | ClipParts,
    tokenizer: Any = None,
    image_processor: Any = None,
    clip_kwargs: dict | None = None,
) -> ClipParts:
    """Read `clip` (see `HSPNetPreTrainedModel.from_clip`); the tokenizer and the image normalisation come from its
    source when it has one and they are not given."""
    from transformers import AutoImageProcessor, AutoTokenizer

    if isinstance(clip, ClipParts):
        parts, source = clip, None
    elif isinstance(clip, CLIPModel):
        parts = ClipParts(clip.config.to_dict(), clip.state_dict(), None)
        source = clip.config._name_or_path or None
    elif isinstance(clip, (str, os.PathLike)) and not os.path.isfile(clip):
        source = os.fspath(clip)
        clip_model = CLIPModel.from_pretrained(source, **(clip_kwargs or {}))
        parts = ClipParts(clip_model.config.to_dict(), clip_model.state_dict(), None)
    else:
        raise TypeError(
            f"from_clip: expected a Hub id, a CLIP folder, a CLIPModel or ClipParts, got {clip!r}; OpenAI-format "
            "weights (RN50.pt & co.) are read by hspnet.models.openai_clip.load_openai_clip_parts(path)")
    tokenizer = tokenizer if tokenizer is not None else parts.tokenizer
    if tokenizer is None:
        if source is None:
            raise ValueError(
                "from_clip: pass tokenizer= when `clip` is a CLIPModel object with no source path or OpenAI-format "
                "weights (every OpenAI CLIP uses the tokenizer of e.g. 'openai/clip-vit-base-patch32')."
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
    normalisation = dict(parts.normalisation)
    if image_processor is None and source is not None:  # keep the checkpoint's mean / std, if it has its own
        try:
            clip_processor = AutoImageProcessor.from_pretrained(source)
            normalisation = dict(image_mean=list(clip_processor.image_mean), image_std=list(clip_processor.image_std))
        except (OSError, ValueError, AttributeError, TypeError):
            pass
    return ClipParts(parts.clip_config, parts.clip_weights, tokenizer, dict(parts.config_kwargs), normalisation)


def build_from_clip(
    cls,
    clip: str | os.PathLike | CLIPModel | ClipParts,
    labels: list[str],
    groups: list[str],
    label_to_group: list[int],
    relation: Any = None,
    tokenizer: Any = None,
    image_processor: Any = None,
    relation_template: str = "{}",
    clip_kwargs: dict | None = None,
    **config_kwargs,
):
    """`cls.from_clip(...)`: build an HSPNet model (`cls`) on a CLIP checkpoint.

    Args:
        clip: a Hub id (e.g. `"openai/clip-vit-base-patch16"`), a local CLIP folder, a `CLIPModel`, or `ClipParts`:
            what the package reads from OpenAI-format CLIP weights (RN50 & co. or ViT) with
            `hspnet.models.openai_clip.load_openai_clip_parts("RN50.pt")`, without running any of the file's code.
            A ResNet checkpoint gives `vision_backbone="clip_resnet"`. OpenAI files hold no tokenizer: pass
            `tokenizer=` (all OpenAI CLIP models share one, e.g. that of `openai/clip-vit-base-patch32`).
        labels: the `C` label names, in index order.
        groups: the `G` group names.
        label_to_group: for each label, the index of its group.
        relation: the raw `(C + G, C + G)` similarity matrix (labels first, then groups): an array, a tensor or the
            path of a `.npy` file such as the authors' `relation+voc+super.npy`. By default it is computed from the
            frozen text tower: cosine similarity of the CLIP text embeddings of `relation_template.format(name)` for
            the label names followed by the group names.
        tokenizer: the CLIP tokenizer; loaded from `clip` when it is a Hub id or folder.
        image_processor: saved beside the model; loaded from `clip` when possible, else CLIP preprocessing at the
            tower's resolution.
        clip_kwargs: passed to `CLIPModel.from_pretrained` (e.g. `revision`); the HSPNet model is built in float32,
            cast it afterwards (`model.to(torch.bfloat16)`) or save and reload it with `dtype=`.
        **config_kwargs: any other `HSPNetConfig` field (e.g. `n_ctx`, `loss`, `relation_keep_ratio`).

    The prompts are tokenized once and stored as persistent buffers (token embeddings and EOS positions) together
    with the raw relation, so `from_pretrained` restores the model without a tokenizer. The tokenizer is kept as
    `model.tokenizer` (and saved with the model) for labels at inference (`set_labels`, `add_labels`).
    """
    parts = load_clip_parts(clip, tokenizer, image_processor, clip_kwargs)
    labels = list(labels)
    # the prompt buffers are sized by `set_prompts` below (up to the longest prompt): no (C, 77, W) placeholder
    config_kwargs.setdefault("prompt_length", 1)
    config = HSPNetConfig(
        clip_config=parts.clip_config,
        id2label=dict(enumerate(labels)),
        label2id={name: index for index, name in enumerate(labels)},
        group_names=list(groups),
        label_to_group=[int(g) for g in label_to_group],
        **{**parts.config_kwargs, **config_kwargs},
    )
    model = cls(config)
    base = model.base_model
    base.clip.load_state_dict(parts.clip_weights)
    base.set_prompts(parts.tokenizer)
    if relation is None:
        relation = text_relation(base.clip, parts.tokenizer, labels + list(groups), relation_template)
    base.set_relation(relation)
    model.image_processor = image_processor or default_image_processor(config, **parts.normalisation)
    model.tokenizer = parts.tokenizer  # saved with the model: `set_labels` tokenizes new label names with it
    base.apply_freezing()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------


def _tokenize_prompts(tokenizer, texts: list[str], what: list[str], length: int, eos_token_id: int) -> tuple:
    """Token ids `(N, length)` padded like CLIP, and each prompt's EOS position `(N,)`; errors name the prompt."""
    for text, name in zip(texts, what):
        n_tokens = len(tokenizer(text, truncation=False)["input_ids"])
        if n_tokens > length:
            raise ValueError(f"The prompt {text!r} for {name} has {n_tokens} tokens; CLIP's text tower takes {length}.")
    ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")["input_ids"]
    if eos_token_id == 2:  # legacy CLIP configs: the EOS token is the largest id
        eos_positions = ids.argmax(dim=-1)
    else:
        is_eos = ids == eos_token_id
        if not bool(is_eos.any(dim=-1).all()):
            raise ValueError(f"The tokenizer did not end every prompt with the EOS token id {eos_token_id}.")
        eos_positions = is_eos.int().argmax(dim=-1)
    return ids, eos_positions


def tokenize_hierarchy_prompts(config: HSPNetConfig, tokenizer) -> tuple[torch.Tensor, ...]:
    """The group prompts (`config.group_prompt_template.format(group)`) and the label prompts
    (`config.ctx_init + " " + label + "."`, whose first `n_ctx` tokens after SOS are the placeholders the meta-net's
    context vectors replace), tokenized to CLIP's full length.

    Returns:
        `(group_ids (G, L), group_eos (G,), label_ids (C, L), label_eos (C,))`.
    """
    text_config = config.clip_config.text_config
    length, eos = text_config.max_position_embeddings, text_config.eos_token_id
    group_texts = [config.group_prompt_template.format(prompt_name(g)) for g in config.group_names]
    group_ids, group_eos = _tokenize_prompts(
        tokenizer, group_texts, [f"group {g!r}" for g in config.group_names], length, eos
    )
    label_texts = [f"{config.ctx_init} {prompt_name(name)}." for name in config.label_names]
    label_ids, label_eos = _tokenize_prompts(
        tokenizer, label_texts, [f"label {n!r}" for n in config.label_names], length, eos
    )
    placeholder = tokenizer(config.ctx_init)["input_ids"][1:-1]
    if len(placeholder) != config.n_ctx:
        raise ValueError(
            f"ctx_init {config.ctx_init!r} tokenizes to {len(placeholder)} tokens, not n_ctx={config.n_ctx}; choose "
            "a placeholder word that is a single token (the released code uses 'X')."
        )
    slots = label_ids[:, 1 : 1 + config.n_ctx]
    if not bool((slots == torch.tensor(placeholder)).all()):
        bad = config.label_names[int((slots != torch.tensor(placeholder)).any(dim=1).nonzero()[0])]
        raise ValueError(f"The label prompt for {bad!r} does not start with the {config.n_ctx} placeholder tokens.")
    return group_ids, group_eos, label_ids, label_eos


@dataclass
class PromptEmbeddings:
    """The prompt buffers of a model: token embeddings cut after the last EOS (the tower is causal: nothing after it
    can change a prompt's feature; a few tokens instead of 77, and the `(C, L, W)` label prompts are the largest
    buffer at large C) and each prompt's EOS position."""

    group_embeds: torch.Tensor
    group_eos: torch.Tensor
    label_embeds: torch.Tensor
    label_eos: torch.Tensor
    label_names: list[str] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)

    def record(self, config: HSPNetConfig) -> None:
        """Note in `config` what these prompts are: their length and the names they were made from (so that loading
        a folder whose names were edited since can say so: `prompt_name_changes`)."""
        config.prompt_length = self.label_embeds.shape[1]
        config.prompt_label_names, config.prompt_group_names = list(self.label_names), list(self.group_names)


def prompt_embeddings(config: HSPNetConfig, tokenizer, token_embedding: torch.nn.Embedding,
                      dtype: torch.dtype) -> PromptEmbeddings:
    """`tokenize_hierarchy_prompts`, embedded with the tower's `token_embedding`."""
    if token_embedding.num_embeddings == 0:
        raise ValueError(
            "This model has no token embedding table (it was converted from a checkpoint that stores its prompts "
            "as embeddings), so new prompts cannot be embedded. Re-convert it with the original CLIP weights "
            "(scripts/convert_official_checkpoint.py --clip-weights RN50.pt) to change label or group names."
        )
    group_ids, group_eos, label_ids, label_eos = tokenize_hierarchy_prompts(config, tokenizer)
    kept = max([int(t.max()) for t in (group_eos, label_eos) if t.numel()] + [0]) + 1
    device = token_embedding.weight.device
    with torch.no_grad():
        return PromptEmbeddings(token_embedding(group_ids[:, :kept].to(device)).to(dtype), group_eos,
                                token_embedding(label_ids[:, :kept].to(device)).to(dtype), label_eos,
                                list(config.label_names), list(config.group_names))


def prompt_name_changes(config: HSPNetConfig) -> str | None:
    """None, or a message saying that the label (group) names of `config` are not those its stored prompts were made
    from (`config.prompt_label_names` / `prompt_group_names`): names edited in `config.json` after the model was
    built (renamed, or the same names in another order). Names whose prompts are the same text (`traffic_light` /
    `traffic light`) are not a change; a config that does not say what its prompts were made from has none."""
    found = []
    for kind, names, made_from in (("label", config.label_names, config.prompt_label_names),
                                   ("group", list(config.group_names), config.prompt_group_names)):
        if not made_from or len(made_from) != len(names):
            continue
        changed = [(i, new, old) for i, (new, old) in enumerate(zip(names, made_from))
                   if prompt_name(new) != prompt_name(old)]
        if not changed:
            continue
        field_name = "id2label" if kind == "label" else "group_names"
        how = "lists the same names in another order than" if sorted(names) == sorted(made_from) else "renames"
        shown = ", ".join(f"{kind} {i} {new!r} is scored by the prompt made for {old!r}" if kind == "label" else
                          f"{kind} {i} {new!r} has the prompt made for {old!r}" for i, new, old in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        found.append(f"{field_name} {how} the {kind} names the stored prompts were made from ({shown}{more})")
    if not found:
        return None
    where = f"{config.name_or_path}: " if getattr(config, "name_or_path", "") else ""
    return (f"{where}{'; '.join(found)}. The stored prompts (and the relation) follow the original names, so each "
            "score is that of the original name at its index, not of the name config.json gives it now. Restore the "
            "names, or give the prompts the new names with model.hspnet.set_prompts(tokenizer) (and train).")


# ---------------------------------------------------------------------------------------------------------------------
# Relation
# ---------------------------------------------------------------------------------------------------------------------


def text_relation(clip: Any, tokenizer, names: list[str], template: str = "{}") -> torch.Tensor:
    """The default raw relation `(N, N)`: cosine similarities of the CLIP text embeddings of
    `template.format(name)` (underscores read as spaces), for the label names followed by the group names."""
    texts = [template.format(prompt_name(name)) for name in names]
    embeddings = F.normalize(clip_text_embeddings(clip, tokenizer, texts), dim=-1)
    return embeddings @ embeddings.T


def read_relation(relation: Any, num_labels: int, num_groups: int) -> torch.Tensor:
    """A given raw relation (array, tensor or `.npy` path; labels first, then groups) as a float32
    `(C + G, C + G)` tensor; errors name the file and say what is wrong (not numeric, shape, NaN or infinite)."""
    what = "relation"
    if isinstance(relation, (str, os.PathLike)):
        import numpy as np

        what = os.fspath(relation)
        try:
            relation = np.load(what, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"{what}: not a numeric .npy array ({' '.join(str(error).split())})") from None
        if not np.issubdtype(relation.dtype, np.number) or np.iscomplexobj(relation):
            raise ValueError(f"{what}: holds {relation.dtype} values, not a numeric similarity matrix")
    try:
        relation = torch.as_tensor(relation, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{what}: not a numeric matrix ({' '.join(str(error).split())})") from None
    size = num_labels + num_groups
    if tuple(relation.shape) != (size, size):
        raise ValueError(
            f"{what} has shape {tuple(relation.shape)}, expected {(size, size)}: "
            f"{num_labels} labels followed by {num_groups} groups."
        )
    if not bool(torch.isfinite(relation).all()):
        raise ValueError(f"{what} contains NaN or infinite values.")
    return relation


__all__ = [
    "ClipParts",
    "build_from_clip",
    "default_image_processor",
    "prompt_embeddings",
    "load_clip_parts",
    "prompt_name",
    "prompt_name_changes",
    "read_relation",
    "text_relation",
    "tokenize_hierarchy_prompts",
]
