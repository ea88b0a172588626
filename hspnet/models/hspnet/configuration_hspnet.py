# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""HSPNet model configuration.

This file is copied next to saved weights as remote code: it imports transformers / huggingface_hub symbols, the
standard library and its sibling ``losses.py`` (relative import; it checks ``loss`` / ``loss_kwargs``), and nothing
from the ``hspnet`` package.

Validation: every field is checked for its type and range, when the config is built (also by ``from_dict`` /
``from_pretrained``, i.e. when a saved ``config.json`` is loaded) AND when a field is assigned later
(``config.logit_scale = float("nan")`` raises). A bad value raises a ``ValueError`` whose message starts with
``HSPNetConfig:`` and names the field and the value; when loading from a file, the message ends with the file.
(huggingface_hub's ``@strict`` type checks do not run here: the annotations are strings, ``from __future__ import
annotations``; its ``StrictDataclass*Error`` are not ``ValueError`` anyway.)
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig, PreTrainedConfig

from .losses import LOSSES, check_loss_spec
from .losses_base import check_bool, check_int, check_real


VISION_BACKBONES = ("clip_vit", "clip_resnet")
CONFIG_FILE_NAME = "config.json"


def _ints(name: str, value: Any, count: int | None, message: str) -> list[int]:
    """A list of `count` positive ints (numpy / torch sequences accepted), else `ValueError(message)`."""
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
        raise ValueError(f"HSPNetConfig: {name} must be {message}, got {value!r}")
    try:
        return [check_int(name, v, 1) for v in value]
    except ValueError:
        raise ValueError(f"HSPNetConfig: {name} must be {message}, got {value!r}") from None


def _field_rules() -> dict:
    """Field -> check(value) returning the (normalised) value or raising `ValueError` naming the field. Each rule
    looks at its own field only (cross-field checks are in `__post_init__`), so a field can be checked on
    assignment. `None` is accepted where `__post_init__` fills a default."""

    def optional(rule):
        return lambda value: None if value is None else rule(value)

    def real(name, *args, **kwargs):
        return lambda value: check_real(name, value, *args, **kwargs)

    def integer(name, low):
        return lambda value: check_int(name, value, low)

    def text(name):
        def rule(value):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
            return value

        return rule

    def string_list(name):
        def rule(value):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings, got {value!r}")
            return list(value)

        return rule

    def index_list(value):
        # the entries are checked (with the label names in the message) by check_hierarchy
        if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"label_to_group must be a list of group indices, got {value!r}")
        out = []
        for v in value:
            try:
                out.append(v if isinstance(v, bool) else int(check_int("label_to_group", v)))
            except ValueError:
                out.append(v)
        return out

    def template(value):
        text("group_prompt_template")(value)
        if "{}" not in value:
            raise ValueError(f"group_prompt_template {value!r} has no '{{}}' for the group name.")
        try:
            value.format("group")
        except (IndexError, KeyError, ValueError):
            raise ValueError(
                f"group_prompt_template {value!r} must contain exactly one '{{}}' (for the group name) and no other "
                "braces; write a literal brace as '{{' or '}}'."
            ) from None
        return value

    def backbone(value):
        if value not in VISION_BACKBONES:
            raise ValueError(f"vision_backbone must be one of {list(VISION_BACKBONES)}, got {value!r}.")
        return value

    def loss_name(value):
        text("loss")(value)
        try:
            check_loss_spec(value, {})
        except ValueError as error:
            raise ValueError(f"loss: {error}") from None
        return value

    def loss_kwargs(value):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"loss_kwargs must be a dict with string keys, got {value!r}")
        return value

    def thresholds(value):
        # one per label (the count is checked against the labels in `__post_init__`); None: no calibrated threshold
        if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"label_thresholds must be a list (one threshold or null per label), got {value!r}")
        return [None if v is None else check_real(f"label_thresholds[{i}]", v, 0.0, 1.0) for i, v in enumerate(value)]

    def id_list(value):
        # one per label (the count is checked against the labels in `__post_init__`); None: a label without an id
        if not isinstance(value, (list, tuple)) or not all(v is None or isinstance(v, str) for v in value):
            raise ValueError(f"label_ids must be a list (one id string or null per label), got {value!r}")
        return list(value)

    def wrap(name, rule):
        def checked(value):
            try:
                return rule(value)
            except ValueError as error:
                message = str(error)
                named = ValueError(message if message.startswith("HSPNetConfig:") else f"HSPNetConfig: {message}")
                named.hspnet_field = name
                raise named from None

        return checked

    rules = {
        "vision_backbone": backbone,
        "resnet_layers": optional(lambda v: _ints("resnet_layers", v, 4, "four positive block counts")),
        "resnet_width": integer("resnet_width", 1),
        "resnet_heads": optional(integer("resnet_heads", 1)),
        "resnet_image_size": integer("resnet_image_size", 1),
        "group_names": optional(string_list("group_names")),
        "label_to_group": optional(index_list),
        "group_prompt_template": template,
        "n_ctx": integer("n_ctx", 1),
        "ctx_init": text("ctx_init"),
        "gcn_hidden_dims": optional(lambda v: _ints("gcn_hidden_dims", v, 2, "two positive sizes")),
        "gcn_negative_slope": real("gcn_negative_slope", 0.0),
        "gcn_gamma_init": real("gcn_gamma_init"),
        "relation_keep_ratio": real("relation_keep_ratio", 0.0, 1.0, low_open=True),
        "relation_reweight_p": real("relation_reweight_p", 0.0, 1.0),
        "logit_scale": real("logit_scale", 0.0, low_open=True),
        "freeze_text_encoder": lambda v: check_bool("freeze_text_encoder", v),
        "loss": loss_name,
        "loss_kwargs": optional(loss_kwargs),
        "label_sample_size": optional(integer("label_sample_size", 1)),
        "trained_label_names": optional(string_list("trained_label_names")),
        "prompt_length": optional(integer("prompt_length", 1)),
        "prompt_label_names": optional(string_list("prompt_label_names")),
        "prompt_group_names": optional(string_list("prompt_group_names")),
        "label_thresholds": optional(thresholds),
        "label_ids": optional(id_list),
    }
    return {name: wrap(name, rule) for name, rule in rules.items()}


_FIELD_RULES = _field_rules()


def _where(pretrained_model_name_or_path: Any, subfolder: str = "") -> str:
    """The config file that `from_pretrained(pretrained_model_name_or_path)` reads, for error messages."""
    path = os.fspath(pretrained_model_name_or_path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        return os.path.join(path, subfolder or "", CONFIG_FILE_NAME)
    return f"{CONFIG_FILE_NAME} of {path!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")


def _located(error: ValueError, where: str, final: bool = False) -> ValueError:
    """The same validation error with `(in <where>)` appended (replacing a less precise location, unless the
    location already given is `final`)."""
    if getattr(error, "hspnet_final", False):
        return error
    bare = getattr(error, "hspnet_message", None) or str(error)
    located = ValueError(f"{bare} (in {where})")
    located.hspnet_message = bare
    located.hspnet_final = final
    return located


def check_loss_choice(loss: str, loss_kwargs: dict, label_sample_size: int | None = None,
                      num_labels: int | None = None) -> str:
    """The one check of a loss choice (the model's config and a training run's options both call it): the loss name
    and its keyword arguments (names, types, ranges: the loss constructor's checks, with `expected_num_pos <=
    num_labels`), and label sampling only with a loss that is a sum of per-label terms. Returns the loss's registry
    key; raises a `ValueError` naming the field."""
    try:
        name = check_loss_spec(loss, loss_kwargs or {}, num_labels)
    except ValueError as error:
        raise ValueError(f"loss {loss!r} with loss_kwargs {loss_kwargs!r}: {error}") from None
    if label_sample_size is not None and not LOSSES[name].supports_label_sampling:
        raise ValueError(
            f"label_sample_size is set but the loss {loss!r} couples the labels and cannot be computed on a sample of "
            "them; use a per-label loss (splc, an, an_ls, wan, em, hill, focal, asl) or no label sampling."
        )
    return name


@strict
class HSPNetConfig(PreTrainedConfig):
    r"""
    Configuration of an HSPNet model (Wang et al., "Hierarchical Prompt Learning Using CLIP for Multi-label
    Classification with Single Positive Labels", ACM MM 2023).

    HSPNet classifies an image into `C` labels organised in `G` groups (every label belongs to exactly one group). The
    label names are the usual `id2label` / `label2id`; the groups are `group_names` and `label_to_group`.

    Args:
        clip_config (`CLIPConfig` or `dict`, *optional*):
            The CLIP backbone (image tower, text tower, projections). Defaults to `CLIPConfig()` (ViT-B/32 shapes).
            With `vision_backbone="clip_resnet"` only its `text_config` and `projection_dim` are used (the image tower
            is then described by the `resnet_*` fields and its `vision_config` is ignored).
        vision_backbone (`str`, *optional*, defaults to `"clip_vit"`):
            The image tower: `"clip_vit"` (the HF `CLIPVisionModel` + `visual_projection` of `clip_config`) or
            `"clip_resnet"` (CLIP's ModifiedResNet with its attention-pool head, e.g. RN50, the backbone of the
            paper and of the authors' released checkpoints).
        resnet_layers (`list[int]`, *optional*):
            Bottleneck blocks in the four stages of the ModifiedResNet. Defaults to `[3, 4, 6, 3]` (RN50).
        resnet_width (`int`, *optional*, defaults to 64):
            Channels after the stem; stage `i` has `resnet_width * 2**i` planes and outputs 4 times that, so the
            final feature map has `32 * resnet_width` channels (2048 for RN50).
        resnet_heads (`int`, *optional*):
            Heads of the attention-pool head. Defaults to CLIP's rule `32 * resnet_width // 64` (32 for RN50).
        resnet_image_size (`int`, *optional*, defaults to 224):
            Input resolution of the ModifiedResNet (a multiple of 32; it fixes the attention-pool position table).
            The attention pool projects to `clip_config.projection_dim` (1024 for RN50).
        group_names (`list[str]`):
            The `G` group names, in index order.
        label_to_group (`list[int]`):
            For each of the `C` labels, the index of its group in `group_names`.
        group_prompt_template (`str`, *optional*, defaults to `"a photo of a {}."`):
            The fixed group prompt; `{}` is replaced by the group name (underscores become spaces).
        n_ctx (`int`, *optional*, defaults to 4):
            Number of context vectors that the meta-net produces for each label prompt (an int >= 1).
        ctx_init (`str`, *optional*, defaults to `"X X X X"`):
            The placeholder text whose `n_ctx` tokens open each label prompt (`ctx_init + " " + label + "."`); their
            embeddings are replaced by the meta-net output, so only the token positions matter. Must tokenize to
            exactly `n_ctx` tokens.
        gcn_hidden_dims (`list[int]`, *optional*):
            Output sizes of the first two graph convolutions; the third maps back to `D`. Defaults to `[2D, 2D]` where
            `D = clip_config.projection_dim`. Two positive ints.
        gcn_negative_slope (`float`, *optional*, defaults to 0.2):
            LeakyReLU slope after the first two graph convolutions (a finite number >= 0).
        gcn_gamma_init (`float`, *optional*, defaults to 0.9):
            Initial value of the trainable residual mix `out = gamma * gcn(x) + (1 - gamma) * x` (finite).
        relation_keep_ratio (`float`, *optional*, defaults to 0.75):
            Each row of a relation block keeps its top `floor(keep_ratio * n)` entries; in (0, 1].
        relation_reweight_p (`float`, *optional*, defaults to 0.2):
            Off-diagonal mass `p` of each adjacency row; the diagonal is `1 - p`; in [0, 1].
        logit_scale (`float`, *optional*, defaults to 10.0):
            Constant multiplier of the cosine similarities (CLIP's learned `logit_scale` is not used); a finite
            number > 0 (0 or NaN would make every score equal or NaN, a negative scale would invert the ranking).
        freeze_text_encoder (`bool`, *optional*, defaults to `True`):
            Keep the CLIP text tower (embeddings, transformer, final norm, text projection) frozen.
        loss (`str`, *optional*, defaults to `"splc"`):
            Name of the loss computed when `labels` are passed to `HSPNetForImageClassification.forward` (see
            `hspnet.models.hspnet.losses.LOSSES`: splc, an, an_ls, wan, epr, role, em, ll_r, hill, focal, asl).
        loss_kwargs (`dict`, *optional*):
            Keyword arguments of that loss, overriding its defaults (`hspnet.models.hspnet.losses.LOSS_DEFAULTS`), e.g.
            `{"change_epoch": 2}` for VOC. Names, types and ranges are checked as the loss constructor checks them
            (e.g. `expected_num_pos` in (0, num_labels]).
        prompt_length (`int`, *optional*):
            Tokens kept of each stored prompt embedding (`group_prompt_embeds`, `label_prompt_embeds`): set by
            `set_prompts` to the longest prompt (the text tower is causal, so later positions never matter); `None`
            (older folders, converted checkpoints) keeps the text tower's full context length.
        prompt_label_names / prompt_group_names (`list[str]`, *optional*):
            The label and group names the stored prompts (`label_prompt_embeds`, `group_prompt_embeds`) were made
            from, set with them (`set_prompts`, conversion); `None` in older folders. Loading a folder whose
            `id2label` or `group_names` was edited since (renamed or reordered: the scores still follow the stored
            prompts) logs a warning naming the labels that differ.
        trained_label_names (`list[str]`, *optional*):
            Set when the label set was changed after training (`set_labels` / `add_labels`): the labels the
            model was trained with (other labels are scored without training; a group may then have no label).
            `None`: every label is a trained one.
        label_sample_size (`int`, *optional*):
            Training only, off by default (`None`): each training step runs the text side for the batch's observed
            positives plus `label_sample_size` labels drawn uniformly from the others, with the loss reweighted to
            an unbiased estimate of the full loss (and the label GCN on the sampled labels). An approximation of
            the paper's method for very large label sets; inference always uses all labels. Needs a loss whose
            terms are per label (not EPR, ROLE or LL-R).
        label_thresholds (`list[float | None]`, *optional*):
            Calibrated decision thresholds (`hspnet calibrate`), one per label in `id2label` order, each a finite number
            in [0, 1] or `None` (no calibrated threshold: the default 0.5 applies); `None`: no calibration.
        label_ids (`list[str | None]`, *optional*):
            The dataset's own id of each label, in `id2label` order (e.g. the Open Images MID `/m/0dzct` of the label
            "Tortoise"), so that predictions can be mapped back to the dataset; `None` for a label without one (a
            label added after training); `None`: the labels have no ids. `from_clip(clip, **hierarchy.model_kwargs())`
            sets it from a dataset whose hierarchy has ids; `set_labels` / `add_labels` carry it by name.

    Every field is checked when the config is built, loaded or assigned: a wrong type (a string for a number, a bool
    for an int, a float for an int), a non-finite number or a value out of range raises a `ValueError` naming the
    field and the value (and the config file, when loading one). `problem_type` is always
    `"multi_label_classification"`; another value is refused.

    Example:

    ```python
    >>> from hspnet import HSPNetConfig
    >>> config = HSPNetConfig(
    ...     id2label={0: "cat", 1: "dog", 2: "car"}, group_names=["animal", "vehicle"], label_to_group=[0, 0, 1]
    ... )
    ```
    """

    model_type = "hspnet"
    sub_configs_defaults = {"clip_config": CLIPConfig}

    clip_config: dict | CLIPConfig | None = None
    vision_backbone: str = "clip_vit"
    resnet_layers: list[int] | None = None
    resnet_width: int = 64
    resnet_heads: int | None = None
    resnet_image_size: int = 224
    group_names: list[str] | None = None
    label_to_group: list[int] | None = None
    group_prompt_template: str = "a photo of a {}."
    n_ctx: int = 4
    ctx_init: str = "X X X X"
    gcn_hidden_dims: list[int] | None = None
    gcn_negative_slope: float = 0.2
    gcn_gamma_init: float = 0.9
    relation_keep_ratio: float = 0.75
    relation_reweight_p: float = 0.2
    logit_scale: float = 10.0
    freeze_text_encoder: bool = True
    loss: str = "splc"
    loss_kwargs: dict[str, Any] | None = None
    label_sample_size: int | None = None
    trained_label_names: list[str] | None = None
    prompt_length: int | None = None
    prompt_label_names: list[str] | None = None
    prompt_group_names: list[str] | None = None
    label_thresholds: list[float | None] | None = None
    label_ids: list[str | None] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        rule = _FIELD_RULES.get(name)
        if rule is not None:
            value = rule(value)
        elif name == "problem_type" and value not in (None, "multi_label_classification"):
            raise ValueError(
                "HSPNetConfig: problem_type must be 'multi_label_classification' (HSPNet scores every label with its "
                f"own sigmoid, and the pipeline applies a sigmoid only then), got {value!r}."
            )
        elif name == "num_labels" and self.__dict__.get("label_to_group") and value != len(self.label_to_group):
            raise ValueError(
                f"HSPNetConfig: num_labels {value!r} does not match the hierarchy's {len(self.label_to_group)} labels; "
                "the labels come from id2label, group_names and label_to_group (set them together, or build a model "
                "for other labels with from_clip)"
            )
        super().__setattr__(name, value)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        try:
            return super().from_dict(config_dict, **kwargs)
        except ValueError as error:
            if not str(error).startswith("HSPNetConfig:"):
                raise
            field = getattr(error, "hspnet_field", None)
            if field is not None and field in kwargs:  # the bad value is a keyword override, not from the file
                raise _located(error, f"the keyword argument {field}=, not the config file", final=True) from None
            source = kwargs.get("name_or_path")  # AutoConfig / AutoModel pass it
            where = _where(source) if source else "the config dict given to HSPNetConfig.from_dict"
            raise _located(error, where) from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ValueError as error:
            if not str(error).startswith("HSPNetConfig:"):
                raise
            raise _located(error, _where(pretrained_model_name_or_path, kwargs.get("subfolder", ""))) from None

    @classmethod
    def from_json_file(cls, json_file):
        try:
            return super().from_json_file(json_file)
        except ValueError as error:
            if not str(error).startswith("HSPNetConfig:"):
                raise
            raise _located(error, os.fspath(json_file)) from None

    def __post_init__(self, **kwargs):
        for given in (kwargs.get("problem_type"), self.__dict__.get("problem_type")):
            if given not in (None, "multi_label_classification"):
                raise ValueError(
                    "HSPNetConfig: problem_type must be 'multi_label_classification' (HSPNet scores every label with "
                    f"its own sigmoid, and the pipeline applies a sigmoid only then), got {given!r}."
                )
        if kwargs.get("problem_type") is None:
            kwargs["problem_type"] = "multi_label_classification"
        super().__post_init__(**kwargs)
        if self.id2label and not self.label2id:
            self.label2id = {name: index for index, name in self.id2label.items()}
        if self.group_names is None:
            self.group_names = []
        if self.label_to_group is None:
            self.label_to_group = []
        if self.loss_kwargs is None:
            self.loss_kwargs = {}
        if self.gcn_hidden_dims is None:
            self.gcn_hidden_dims = [2 * self.projection_dim, 2 * self.projection_dim]
        if self.resnet_layers is None:
            self.resnet_layers = [3, 4, 6, 3]
        if self.resnet_heads is None:
            self.resnet_heads = max(1, 32 * self.resnet_width // 64)
        self.check_fields()
        if self.label_thresholds is not None and len(self.label_thresholds) != self.num_labels:
            raise ValueError(f"HSPNetConfig: label_thresholds has {len(self.label_thresholds)} entries but there are "
                             f"{self.num_labels} labels; give one threshold (or null) per label.")
        if self.label_ids is not None and len(self.label_ids) != self.num_labels:
            raise ValueError(f"HSPNetConfig: label_ids has {len(self.label_ids)} entries but there are "
                             f"{self.num_labels} labels; give one id (or null) per label.")
        self.check_backbone()
        self.check_hierarchy()
        self.check_loss()

    @property
    def projection_dim(self) -> int:
        """`D`: size of the joint image-text embedding space."""
        return self.clip_config.projection_dim

    @property
    def vision_config(self):
        """The image tower's config (`clip_config.vision_config`; for the ResNet tower, the CLIP config's ViT
        placeholder: the tower itself is described by the `resnet_*` fields)."""
        return self.clip_config.vision_config

    @property
    def text_width(self) -> int:
        """`W`: width of the text transformer (size of one prompt token embedding)."""
        return self.clip_config.text_config.hidden_size

    @property
    def image_size(self) -> int:
        """Input resolution of the image tower."""
        if self.vision_backbone == "clip_resnet":
            return self.resnet_image_size
        size = self.clip_config.vision_config.image_size
        return size if isinstance(size, int) else size[0]

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    @property
    def label_names(self) -> list[str]:
        return [self.id2label[i] for i in range(self.num_labels)]

    def check_fields(self) -> None:
        """Check (again) every field on its own: type, finiteness, range. Assignment checks each field already; this
        also covers values that bypassed `__setattr__`. Raises a `ValueError` naming the field and the value."""
        for name, rule in _FIELD_RULES.items():
            value = self.__dict__.get(name)
            if name in self.__dict__:
                object.__setattr__(self, name, rule(value))
        if self.problem_type not in (None, "multi_label_classification"):
            raise ValueError(
                f"HSPNetConfig: problem_type must be 'multi_label_classification', got {self.problem_type!r}."
            )

    def check_loss(self) -> None:
        """Check `loss`, `loss_kwargs` and `label_sample_size` together (see `check_loss_choice`) without building the
        loss."""
        num_labels = None if self._has_default_labels() else self.num_labels
        try:
            check_loss_choice(self.loss, self.loss_kwargs or {}, self.label_sample_size, num_labels)
        except ValueError as error:
            raise ValueError(f"HSPNetConfig: {error}") from None

    def check_hierarchy(self) -> None:
        """Raise a `ValueError` naming the problem if the labels and groups are not a valid hierarchy.

        A config with the transformers default labels (`LABEL_0`, `LABEL_1`) and no groups is an empty placeholder
        (as built by `PreTrainedConfig` internals) and is accepted.
        """
        if not self.group_names and not self.label_to_group and self._has_default_labels():
            return
        names = [self.id2label[i] for i in sorted(self.id2label)] if self.id2label else []
        if not names:
            raise ValueError("HSPNetConfig: the label set is empty; pass id2label (or labels via from_clip).")
        if sorted(self.id2label) != list(range(len(names))):
            raise ValueError(f"HSPNetConfig: id2label keys must be 0..{len(names) - 1}, got {sorted(self.id2label)}.")
        seen: dict[str, int] = {}
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"HSPNetConfig: label {index} has an empty name ({name!r}).")
            if name in seen:
                raise ValueError(f"HSPNetConfig: duplicate label name {name!r} (labels {seen[name]} and {index}).")
            seen[name] = index
        groups: dict[str, int] = {}
        if not self.group_names:
            raise ValueError("HSPNetConfig: group_names is empty; every label needs a group.")
        for index, name in enumerate(self.group_names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"HSPNetConfig: group {index} has an empty name ({name!r}).")
            if name in groups:
                raise ValueError(f"HSPNetConfig: duplicate group name {name!r} (groups {groups[name]} and {index}).")
            groups[name] = index
        if len(self.label_to_group) != len(names):
            raise ValueError(
                f"HSPNetConfig: label_to_group has {len(self.label_to_group)} entries but there are {len(names)} "
                "labels; give one group index per label."
            )
        for index, group in enumerate(self.label_to_group):
            if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < len(self.group_names):
                raise ValueError(
                    f"HSPNetConfig: label_to_group[{index}] (label {names[index]!r}) is {group!r}, not a group index "
                    f"in 0..{len(self.group_names) - 1}."
                )
        empty = [name for index, name in enumerate(self.group_names) if index not in set(self.label_to_group)]
        if empty and self.trained_label_names is None:  # a label set changed after training may leave one empty
            raise ValueError(f"HSPNetConfig: group(s) {empty} have no label; remove them or assign labels to them.")
        if len(self.ctx_init.split()) != self.n_ctx:
            raise ValueError(
                f"HSPNetConfig: ctx_init {self.ctx_init!r} has {len(self.ctx_init.split())} words but n_ctx is "
                f"{self.n_ctx}; give one placeholder word per context vector."
            )
        # group_prompt_template, relation_keep_ratio, relation_reweight_p, gcn_hidden_dims: see check_fields

    def check_backbone(self) -> None:
        """Raise a `ValueError` if the image-tower fields are inconsistent."""
        if self.vision_backbone not in VISION_BACKBONES:
            raise ValueError(
                f"HSPNetConfig: vision_backbone must be one of {list(VISION_BACKBONES)}, got {self.vision_backbone!r}."
            )
        if self.vision_backbone != "clip_resnet":
            return
        if len(self.resnet_layers) != 4 or any(int(n) <= 0 for n in self.resnet_layers):
            raise ValueError(f"HSPNetConfig: resnet_layers must be four positive block counts, got {self.resnet_layers}.")
        if self.resnet_width <= 0 or self.resnet_width % 2:
            raise ValueError(f"HSPNetConfig: resnet_width must be a positive even number, got {self.resnet_width}.")
        if self.resnet_heads <= 0 or (32 * self.resnet_width) % self.resnet_heads:
            raise ValueError(
                f"HSPNetConfig: resnet_heads ({self.resnet_heads}) must divide the feature width "
                f"32 * resnet_width = {32 * self.resnet_width}."
            )
        if self.resnet_image_size <= 0 or self.resnet_image_size % 32:
            raise ValueError(
                f"HSPNetConfig: resnet_image_size must be a positive multiple of 32, got {self.resnet_image_size}."
            )

    def _has_default_labels(self) -> bool:
        return not self.id2label or all(name == f"LABEL_{i}" for i, name in self.id2label.items())


__all__ = ["HSPNetConfig"]

HSPNetConfig.register_for_auto_class()
