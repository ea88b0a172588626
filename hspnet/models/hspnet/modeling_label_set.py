# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""Labels at inference (remote code beside `modeling_hspnet.py`: imports only torch, transformers and its siblings).

A trained HSPNet model scores label names it was not trained on. `LabelSetMixin` gives every HSPNet model class
`set_labels` (replace the label set), `add_labels` (extend it) and `embed_labels` (the label embeddings of another
label set, the model unchanged), all acting on the base model:

1. each label gets a group: kept (a label already in the model keeps its group), given (the caller's
   `label_to_group`: group indices or names), or nearest (the group whose name's CLIP text embedding is most similar
   to the label's: the cosine of the frozen text tower's embeddings of the bare names, as `text_relation` embeds
   them, i.e. the label-group block of the recomputed relation);
2. the prompts are tokenized and embedded and the raw relation is recomputed from the text tower for the new labels
   followed by the model's groups, exactly as `build_from_clip` does for a new model (`relation_template="{}"`);
3. the config (`id2label`, `label2id`, `label_to_group`, the prompt fields, `label_thresholds` when it has them,
   `trained_label_names`), the buffers and what is derived from them change together.

Every learned weight is kept and the groups are not changed. A label set equal to the current one (names, order,
groups) changes nothing. Nothing changes unless every check passes. The tokenizer is the one given, else the model's
own (`model.tokenizer`: kept by `from_clip`, saved by `save_pretrained`, loaded by `from_pretrained` from a folder
that has one: `save_tokenizer`, `load_saved_tokenizer`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers.utils import logging

from .modeling_from_clip import prompt_embeddings, read_relation, text_relation
from .modeling_text_state import TextCache

logger = logging.get_logger(__name__)

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
"""A model folder holding one of these carries its tokenizer (`save_pretrained` writes them)."""


@dataclass(frozen=True)
class LabelAssignment:
    """One label of the new label set: its `group` (index) and `group_name`, `how` it was chosen (`"kept"`: a label of
    the model keeps its group; `"given"`: from the caller's `label_to_group`; `"nearest"`: the group whose name is
    most similar by CLIP text embedding, `similarity` that cosine), and whether it is `new` (not a label of the model
    before the call)."""

    label: str
    group: int
    group_name: str
    how: str
    new: bool
    similarity: float | None = None

    def describe(self) -> str:
        """`label 'zebra' -> group 'animal' (nearest by CLIP text similarity, 0.71)`."""
        reason = f"nearest by CLIP text similarity, {self.similarity:.2f}" if self.how == "nearest" else self.how
        return f"label {self.label!r} -> group {self.group_name!r} ({reason})"


@dataclass(frozen=True)
class LabelSetResult:
    """What `set_labels` / `add_labels` / `embed_labels` did: `assignments`, one per label of the new label set in
    index order, and `changed` (False: the label set was the current one and nothing changed)."""

    assignments: tuple[LabelAssignment, ...]
    changed: bool

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.assignments]

    @property
    def label_to_group(self) -> list[int]:
        return [a.group for a in self.assignments]

    @property
    def new_labels(self) -> list[str]:
        return [a.label for a in self.assignments if a.new]

    def describe(self) -> list[str]:
        """One line per label whose group was not simply kept (`LabelAssignment.describe`)."""
        return [a.describe() for a in self.assignments if a.how != "kept"]


# ---------------------------------------------------------------------------------------------------------------------
# Checking the request
# ---------------------------------------------------------------------------------------------------------------------


def _check_names(labels: Any, what: str) -> list[str]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(f"{what}: labels must be a list of label names, got {type(labels).__name__} {labels!r:.60}")
    seen: dict[str, int] = {}
    for index, name in enumerate(labels):
        if not isinstance(name, str):
            raise ValueError(f"{what}: label {index} ({name!r}) is not a string")
        if not name.strip():
            raise ValueError(f"{what}: label {index} has an empty name ({name!r})")
        if name in seen:
            raise ValueError(f"{what}: duplicate label {name!r} (labels {seen[name]} and {index})")
        seen[name] = index
    if not seen:
        raise ValueError(f"{what}: no label given")
    return list(labels)


def _group_index(spec: Any, groups: list[str], label: str, what: str) -> int:
    """A group given as its index or its name -> its index; else a `ValueError` naming the label."""
    shown = ", ".join(repr(g) for g in groups[:10]) + (f" and {len(groups) - 10} more" if len(groups) > 10 else "")
    if isinstance(spec, str):
        if spec in groups:
            return groups.index(spec)
        raise ValueError(f"{what}: label {label!r}: group {spec!r} is not a group of this model ({shown})")
    if not isinstance(spec, bool) and hasattr(spec, "__index__"):
        index = spec.__index__()
        if 0 <= index < len(groups):
            return index
    raise ValueError(f"{what}: label {label!r}: group {spec!r} is not a group name or index of this model "
                     f"(0..{len(groups) - 1}: {shown})")


def _given_groups(labels: list[str], label_to_group: Any, groups: list[str], what: str) -> list[int | None]:
    """The caller's `label_to_group` (None; a mapping label -> group; or one group or None per label) as one group
    index or None per label of `labels`."""
    if label_to_group is None:
        return [None] * len(labels)
    if isinstance(label_to_group, Mapping):
        unknown = [name for name in label_to_group if name not in set(labels)]
        if unknown:
            raise ValueError(f"{what}: label_to_group names {unknown[0]!r}, which is not among the labels given")
        specs = [label_to_group.get(name) for name in labels]
    elif isinstance(label_to_group, (str, bytes)) or not isinstance(label_to_group, Sequence):
        raise ValueError(f"{what}: label_to_group must be a mapping label -> group or a list with one group (or None) "
                         f"per label, got {type(label_to_group).__name__}")
    else:
        specs = list(label_to_group)
        if len(specs) != len(labels):
            raise ValueError(f"{what}: label_to_group has {len(specs)} entries for {len(labels)} labels")
    return [None if spec is None else _group_index(spec, groups, name, what) for name, spec in zip(labels, specs)]


def _tokenizer(model, tokenizer: Any, what: str):
    for candidate in (tokenizer, getattr(model, "tokenizer", None), getattr(model.base_model, "tokenizer", None)):
        if candidate is not None:
            return candidate
    raise ValueError(
        f"{what}: this model has no tokenizer (model.tokenizer is None: its folder was saved without one); pass "
        "tokenizer=, the tokenizer of the CLIP it was built on, e.g. "
        "CLIPTokenizer.from_pretrained('openai/clip-vit-base-patch32') for OpenAI CLIPs")


# ---------------------------------------------------------------------------------------------------------------------
# The new label set, computed without changing the model
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelSetPlan:
    """Everything a new label set needs, computed and checked before the model changes."""

    names: list[str]
    groups: list[int]
    result: LabelSetResult
    embeddings: Any = None  # `PromptEmbeddings`
    relation: torch.Tensor | None = None
    config: Any = None  # the model's config as it will be, checked


def plan_label_set(model, labels: Any, label_to_group: Any = None, tokenizer: Any = None, extend: bool = False,
                   what: str = "set_labels") -> LabelSetPlan:
    """The checked plan of `set_labels` (`extend=False`) / `add_labels` (`extend=True`); the model is not changed.
    Raises a one-line `ValueError` naming the label for duplicate or empty names, bad groups, a label already in
    the model (`add_labels`), a prompt too long for the text tower, or a label set the config refuses."""
    base = model.base_model
    config = base.config
    current, group_names = list(config.label_names), list(config.group_names)
    labels = _check_names(labels, what)
    given = _given_groups(labels, label_to_group, group_names, what)
    if extend:
        present = [name for name in labels if name in set(current)]
        if present:
            raise ValueError(f"{what}: {present[0]!r} is already a label of the model (set_labels changes the groups "
                             "of the model's labels)")
        names, given = current + labels, [None] * len(current) + given
    else:
        names = labels
    index = {name: i for i, name in enumerate(current)}
    groups: list[int | None] = []
    for name, group in zip(names, given):
        groups.append(group if group is not None else
                      config.label_to_group[index[name]] if name in index else None)

    def assignments(similarities: torch.Tensor | None = None) -> tuple[LabelAssignment, ...]:
        out = []
        for i, (name, group) in enumerate(zip(names, groups)):
            how = "given" if given[i] is not None else "kept" if name in index else "nearest"
            similarity = float(similarities[i, group]) if how == "nearest" else None
            out.append(LabelAssignment(name, group, group_names[group], how, name not in index, similarity))
        return tuple(out)

    if names == current and groups == list(config.label_to_group):
        return LabelSetPlan(names, list(groups), LabelSetResult(assignments(), changed=False))
    token_embedding = base.clip.text_model.embeddings.token_embedding
    if token_embedding.num_embeddings == 0:  # a converted model: the clear error of prompt_embeddings
        prompt_embeddings(config, tokenizer, token_embedding, base.label_prompt_embeds.dtype)
    tokenizer = _tokenizer(model, tokenizer, what)
    prompt_config = SimpleNamespace(clip_config=config.clip_config, group_prompt_template=config.group_prompt_template,
                                    group_names=group_names, ctx_init=config.ctx_init, n_ctx=config.n_ctx,
                                    label_names=names)
    try:
        embeddings = prompt_embeddings(prompt_config, tokenizer, token_embedding, base.label_prompt_embeds.dtype)
    except ValueError as error:
        raise ValueError(f"{what}: {' '.join(str(error).split())}") from None
    with torch.no_grad():  # as build_from_clip: the bare names of the labels, then of the groups
        relation = text_relation(base.clip, tokenizer, names + group_names, "{}")
    relation = read_relation(relation, len(names), len(group_names))
    similarities = relation[: len(names), len(names):]  # label-group cosines
    groups = [int(similarities[i].argmax()) if group is None else group for i, group in enumerate(groups)]
    planned = copy.deepcopy(config)
    try:
        _write_config(planned, names, groups)
        planned.check_hierarchy()
        planned.check_loss()
    except ValueError as error:
        raise ValueError(f"{what}: {str(error).removeprefix('HSPNetConfig: ')}") from None
    return LabelSetPlan(names, groups, LabelSetResult(assignments(similarities), changed=True), embeddings, relation,
                        planned)


def _write_config(config, names: list[str], groups: list[int]) -> None:
    """The label fields of `config` for the new label set: thresholds and label ids carried by name (None for a new
    label), the trained labels recorded once (the model's labels before its first change)."""
    old = list(config.label_names)
    thresholds = getattr(config, "label_thresholds", None)
    carried = None
    if thresholds is not None:
        by_name = dict(zip(old, thresholds))
        carried = [by_name.get(name) for name in names]
        config.label_thresholds = None  # the count is checked against the labels: set again below
    ids = getattr(config, "label_ids", None)
    carried_ids = None
    if ids is not None:
        by_name = dict(zip(old, ids))
        carried_ids = [by_name.get(name) for name in names]
        config.label_ids = None
    if getattr(config, "trained_label_names", None) is None:
        config.trained_label_names = old
    config.label_to_group = list(groups)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    if carried is not None and any(value is not None for value in carried):
        config.label_thresholds = carried
    if carried_ids is not None and any(value is not None for value in carried_ids):
        config.label_ids = carried_ids


def apply_label_set(model, plan: LabelSetPlan) -> LabelSetResult:
    """Make the model score `plan`'s labels: config, prompt buffers, relation, and what is derived from them."""
    if not plan.result.changed:
        return plan.result
    base = model.base_model
    for config in {id(c): c for c in (model.config, base.config)}.values():
        _write_config(config, plan.names, plan.groups)
    device = base.label_eos_positions.device
    embeddings = plan.embeddings
    base.register_buffer("group_prompt_embeds", embeddings.group_embeds)
    base.register_buffer("label_prompt_embeds", embeddings.label_embeds)
    base.register_buffer("group_eos_positions", embeddings.group_eos.to(device))
    base.register_buffer("label_eos_positions", embeddings.label_eos.to(device))
    base.register_buffer("relation", plan.relation.to(base.relation.device, torch.float32))
    embeddings.record(base.config)  # prompt_length, and the names the prompts are made from
    if model.config is not base.config:
        embeddings.record(model.config)
    base.prepare_text_state()  # the cache, the layout and the graph of the new buffers
    model.__dict__.pop("_loss_cache", None)  # a loss built for the old number of labels
    return plan.result


def change_labels(model, labels: Any, label_to_group: Any = None, tokenizer: Any = None,
                  extend: bool = False) -> LabelSetResult:
    what = "add_labels" if extend else "set_labels"
    return apply_label_set(model, plan_label_set(model, labels, label_to_group, tokenizer, extend, what))


def _scratch_copy(base):
    """A copy of the base model that shares its modules and parameters but has its own buffers dict, config and
    derived state: changing its label set leaves the model as it is."""
    clone = copy.copy(base)
    clone.__dict__["_buffers"] = dict(base._buffers)
    clone.__dict__["_non_persistent_buffers_set"] = set(base._non_persistent_buffers_set)
    clone.__dict__["config"] = copy.deepcopy(base.config)
    clone.__dict__["_text_cache"] = TextCache()
    return clone


class LabelSetMixin:
    """`set_labels`, `add_labels` and `embed_labels` of the HSPNet model classes (this module's docstring)."""

    def set_labels(self, labels: Sequence[str], label_to_group: Any = None, tokenizer: Any = None) -> LabelSetResult:
        """Replace the label set by `labels` (in this order). Args:
            labels: the label names; those already in the model keep their group unless `label_to_group` says.
            label_to_group: groups chosen by the caller: a mapping label -> group, or one entry per label; a group is
                its index or its name; a label without one (None, or not in the mapping) that is new to the model
                goes to the group nearest by CLIP text similarity.
            tokenizer: the CLIP tokenizer; default `self.tokenizer`.
        Returns a `LabelSetResult` (each label's group and how it was chosen). The relation is recomputed from the
        text tower (also when the model's came from a file); every learned weight is kept."""
        return change_labels(self, labels, label_to_group, tokenizer, extend=False)

    def add_labels(self, labels: Sequence[str], label_to_group: Any = None, tokenizer: Any = None) -> LabelSetResult:
        """Extend the label set: the model's labels (their groups kept), then `labels` (new names only); see
        `set_labels`."""
        return change_labels(self, labels, label_to_group, tokenizer, extend=True)

    @torch.no_grad()
    def embed_labels(self, labels: Sequence[str], label_to_group: Any = None, tokenizer: Any = None,
                     extend: bool = False) -> tuple[torch.Tensor, LabelSetResult]:
        """`(label_embeds (C', D), result)`: the normalised label embeddings that `set_labels(labels, ...)` (or
        `add_labels` with `extend=True`) would give, without changing the model; score images against them with
        `model(pixel_values, label_embeds=...)` (the base model's forward) or `image_embeds @ label_embeds.T`."""
        what = "add_labels" if extend else "set_labels"
        base = self.base_model
        plan = plan_label_set(self, labels, label_to_group, tokenizer, extend, what)
        if not plan.result.changed:
            return base.get_label_embeddings(), plan.result
        clone = _scratch_copy(base)
        apply_label_set(clone, plan)
        return clone.compute_label_embeddings(), plan.result


# ---------------------------------------------------------------------------------------------------------------------
# The model's tokenizer, saved and loaded with it
# ---------------------------------------------------------------------------------------------------------------------


def save_tokenizer(model, save_directory: str | os.PathLike) -> None:
    """Save `model.tokenizer` (when it has one) into the model folder."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)


def _tokenizer_class(config_file: str):
    """The transformers tokenizer class named by a saved `tokenizer_config.json` (`tokenizer_class`), or None. Only
    classes of the transformers package itself: a tokenizer never brings code of its own (no `auto_map`, no
    `AutoTokenizer`, which would also read the model's `config.json` and ask to trust its remote code)."""
    import json

    import transformers
    from transformers import PreTrainedTokenizerBase

    with open(config_file, encoding="utf-8") as handle:
        name = json.load(handle).get("tokenizer_class")
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase)):
        raise ValueError(f"tokenizer_class {name!r} is not a tokenizer class of transformers")
    return cls


def load_saved_tokenizer(args: tuple, kwargs: dict):
    """The tokenizer saved with the model `from_pretrained(*args, **kwargs)` loads, or None: from a local folder (its
    `subfolder`) that holds tokenizer files, or from the model's Hub repository (the local cache when offline or
    `local_files_only`); never remote code (the class named in `tokenizer_config.json` must be one of
    transformers'). A folder whose tokenizer files cannot be read logs a warning and gives None."""
    name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    if not isinstance(name, (str, os.PathLike)):
        return None
    subfolder = kwargs.get("subfolder") or ""
    folder = os.path.join(os.fspath(name), subfolder)
    try:
        if os.path.isdir(folder):
            config_file = os.path.join(folder, TOKENIZER_FILES[0])
            if not os.path.isfile(config_file):
                return None
            return _tokenizer_class(config_file).from_pretrained(folder, local_files_only=True)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        hub = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if kwargs.get(key)}
        try:  # the model's own repository, as from_pretrained just read it (offline: only the local cache)
            config_file = hf_hub_download(os.fspath(name), TOKENIZER_FILES[0], subfolder=subfolder or None, **hub)
        except EntryNotFoundError:
            return None  # saved without a tokenizer
        return _tokenizer_class(config_file).from_pretrained(os.fspath(name), subfolder=subfolder, **hub)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        logger.warning("%s: the tokenizer saved with the model cannot be loaded (%s); model.tokenizer is None",
                       name, " ".join(str(error).split())[:200])
        return None


__all__ = ["LabelAssignment", "LabelSetMixin", "LabelSetPlan", "LabelSetResult", "TOKENIZER_FILES",
           "apply_label_set", "change_labels", "load_saved_tokenizer", "plan_label_set", "save_tokenizer"]
