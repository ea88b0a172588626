# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""HSPNet model configuration.

This file is copied next to saved weights as remote code: it imports only torch-free transformers / huggingface_hub
symbols and nothing from the ``hspnet`` package.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig, PreTrainedConfig


VISION_BACKBONES = ("clip_vit", "clip_resnet")


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
            Number of context vectors that the meta-net produces for each label prompt.
        ctx_init (`str`, *optional*, defaults to `"X X X X"`):
            The placeholder text whose `n_ctx` tokens open each label prompt (`ctx_init + " " + label + "."`); their
            embeddings are replaced by the meta-net output, so only the token positions matter. Must tokenize to
            exactly `n_ctx` tokens.
        gcn_hidden_dims (`list[int]`, *optional*):
            Output sizes of the first two graph convolutions; the third maps back to `D`. Defaults to `[2D, 2D]` where
            `D = clip_config.projection_dim`.
        gcn_negative_slope (`float`, *optional*, defaults to 0.2):
            LeakyReLU slope after the first two graph convolutions.
        gcn_gamma_init (`float`, *optional*, defaults to 0.9):
            Initial value of the trainable residual mix `out = gamma * gcn(x) + (1 - gamma) * x`.
        relation_keep_ratio (`float`, *optional*, defaults to 0.75):
            Each row of a relation block keeps its top `floor(keep_ratio * n)` entries.
        relation_reweight_p (`float`, *optional*, defaults to 0.2):
            Off-diagonal mass `p` of each adjacency row; the diagonal is `1 - p`.
        logit_scale (`float`, *optional*, defaults to 10.0):
            Constant multiplier of the cosine similarities (CLIP's learned `logit_scale` is not used).
        freeze_text_encoder (`bool`, *optional*, defaults to `True`):
            Keep the CLIP text tower (embeddings, transformer, final norm, text projection) frozen.
        loss (`str`, *optional*, defaults to `"splc"`):
            Name of the loss computed when `labels` are passed to `HSPNetForImageClassification.forward` (see
            `hspnet.losses.LOSSES`: splc, an, an_ls, wan, epr, role, em, ll_r, hill, focal, asl).
        loss_kwargs (`dict`, *optional*):
            Keyword arguments of that loss, overriding its defaults (`hspnet.losses.LOSS_DEFAULTS`), e.g.
            `{"change_epoch": 2}` for VOC.

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

    def __post_init__(self, **kwargs):
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
            self.resnet_heads = 32 * self.resnet_width // 64
        self.check_backbone()
        self.check_hierarchy()

    @property
    def projection_dim(self) -> int:
        """`D`: size of the joint image-text embedding space."""
        return self.clip_config.projection_dim

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
        if empty:
            raise ValueError(f"HSPNetConfig: group(s) {empty} have no label; remove them or assign labels to them.")
        if len(self.ctx_init.split()) != self.n_ctx:
            raise ValueError(
                f"HSPNetConfig: ctx_init {self.ctx_init!r} has {len(self.ctx_init.split())} words but n_ctx is "
                f"{self.n_ctx}; give one placeholder word per context vector."
            )
        if "{}" not in self.group_prompt_template:
            raise ValueError(
                f"HSPNetConfig: group_prompt_template {self.group_prompt_template!r} has no '{{}}' for the group name."
            )
        if not 0.0 < self.relation_keep_ratio <= 1.0:
            raise ValueError(f"HSPNetConfig: relation_keep_ratio must be in (0, 1], got {self.relation_keep_ratio}.")
        if not 0.0 <= self.relation_reweight_p <= 1.0:
            raise ValueError(f"HSPNetConfig: relation_reweight_p must be in [0, 1], got {self.relation_reweight_p}.")
        if len(self.gcn_hidden_dims) != 2 or any(int(d) <= 0 for d in self.gcn_hidden_dims):
            raise ValueError(f"HSPNetConfig: gcn_hidden_dims must be two positive sizes, got {self.gcn_hidden_dims}.")

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
