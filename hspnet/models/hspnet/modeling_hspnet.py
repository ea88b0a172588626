# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""PyTorch HSPNet: hierarchical prompt learning on CLIP for single positive multi-label classification.

Wang et al., "Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single Positive Labels",
ACM MM 2023. This file computes exactly what the authors' released code computes (see the project's specification)
and is also the remote code saved next to the weights, so it imports only its siblings, torch and transformers.

Reading order, top to bottom:

1. Outputs (`HSPNetClassifierOutput`, `HSPNetModelOutput`).
2. `HSPNetPreTrainedModel`: weight init, freezing, loading and saving (remote code, image processor, tokenizer),
   `from_clip`; labels at inference (`set_labels`, `add_labels`, `embed_labels`: `modeling_label_set.py`).
3. `HSPNetModel`: setup (prompts, relation); what the buffers imply (`prompt_layout`, `label_graph`); the text side
   (group features -> GCN -> meta-net -> label prompts -> GCN, computed once and reused: `_text_from_cache`); image
   embeddings; logits.
4. `HSPNetForImageClassification`: adds the loss (and label sampling in training) and returns the outputs.

Beside it: the label graph (`modeling_label_graph.py`: `process_relation`, `HSPNetGCN`), the text tower on prompt
embeddings (`modeling_prompts.py`), what a model is built from (`modeling_from_clip.py`), the derived state and its
one reuse rule (`modeling_text_state.py`), the ResNet image tower (`modeling_clip_resnet.py`), the losses, and
`pipeline("zero-shot-image-classification")` for HSPNet (`pipeline_hspnet.py`).

Shapes: `B` images, `C` labels, `G` groups, `D` joint embedding size (`projection_dim`), `W` text width,
`L` prompt length (77), `n_ctx` context vectors per label prompt.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

from .configuration_hspnet import HSPNetConfig
from .losses import build_loss
from .modeling_clip_resnet import HSPNetAttentionPool2d, HSPNetCLIPResNet
from .modeling_from_clip import (build_from_clip, default_image_processor, prompt_embeddings, prompt_name_changes,
                                 read_relation)
from .modeling_label_graph import HSPNetGCN, HSPNetGraphConvolution, induced_adjacency, sample_labels
from .modeling_label_set import LabelSetMixin, load_saved_tokenizer, save_tokenizer
from .modeling_prompts import (
    LabelPlan,
    encode_prompt_embeddings,
    encode_shared_prefix_prompts,
    label_activation_bytes,
    plan_label_chunks,
)
from .modeling_text_state import (
    HSPNetTextOptions,
    LabelGraph,
    PromptLayout,
    Sources,
    TextCache,
    build_label_graph,
    build_prompt_layout,
)

logger = logging.get_logger(__name__)


@dataclass
class HSPNetClassifierOutput(ImageClassifierOutput):
    """
    `ImageClassifierOutput` (`loss`, `logits` `(B, C)`, `hidden_states`, `attentions`) plus:

    Args:
        label_indices (`torch.LongTensor` of shape `(C',)`, *optional*):
            With label sampling in training (`config.label_sample_size`): the labels the `C'` columns of `logits`
            are; None otherwise (all labels, in order).
    """

    label_indices: torch.LongTensor | None = None


@dataclass
class HSPNetModelOutput(ModelOutput):
    """
    Args:
        logits (`torch.FloatTensor` of shape `(B, C)`):
            `logit_scale * image_embeds @ label_embeds.T`, at least float32 (computed outside autocast);
            `sigmoid(logits)` are the per-label probabilities.
        image_embeds (`torch.FloatTensor` of shape `(B, D)`):
            L2-normalised projected CLIP image embeddings.
        label_embeds (`torch.FloatTensor` of shape `(C, D)`):
            L2-normalised label embeddings (label-level GCN output over the hierarchical prompts).
        hidden_states, attentions: of the vision tower, when requested.
    """

    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    label_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# The Auto classes a saved folder names (`config.auto_map`): it loads with `trust_remote_code=True` without hspnet.
AUTO_MAP = {
    "AutoConfig": "configuration_hspnet.HSPNetConfig",
    "AutoModel": "modeling_hspnet.HSPNetModel",
    "AutoModelForImageClassification": "modeling_hspnet.HSPNetForImageClassification",
}


class HSPNetPreTrainedModel(LabelSetMixin, PreTrainedModel):  # LabelSetMixin: set_labels, add_labels
    config_class = HSPNetConfig
    config: HSPNetConfig
    base_model_prefix = "hspnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPEncoderLayer", "CLIPVisionEmbeddings", "HSPNetResNetBottleneck"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # makes `save_pretrained` copy the remote code (this file and its sibling imports); the folder's `auto_map` is
    # AUTO_MAP, written by `save_pretrained` below
    _auto_class = "AutoModelForImageClassification"

    def _init_weights(self, module):
        super()._init_weights(module)
        clip_config = self.config.clip_config
        if isinstance(module, HSPNetGraphConvolution):
            bound = 1.0 / math.sqrt(module.out_features)
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, HSPNetGCN):
            init.constant_(module.gamma, self.config.gcn_gamma_init)
        elif isinstance(module, nn.Linear) and getattr(module, "_hspnet_torch_default_init", False):
            # the meta-net keeps PyTorch's default nn.Linear initialisation, as in the released code
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, HSPNetAttentionPool2d):
            init.normal_(module.positional_embedding, std=module.positional_embedding.shape[1] ** -0.5)
        elif isinstance(module, HSPNetCLIPResNet):
            init.constant_(module.logit_scale, clip_config.logit_scale_init_value)
            factor = clip_config.text_config.initializer_factor
            init.normal_(module.text_projection.weight, std=clip_config.text_config.hidden_size**-0.5 * factor)
        elif isinstance(module, HSPNetModel):  # filled by `from_clip` / loading; zeros until then
            for name in module.constant_buffers:
                init.zeros_(getattr(module, name))
            if isinstance(module.clip, CLIPModel):  # CLIPModel's own initialisation leaves it to its __init__
                init.constant_(module.clip.logit_scale, clip_config.logit_scale_init_value)

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: every initialisation of this model goes through `transformers.initialization`, which never overwrites
        a loaded tensor, so it needs none of the shortcuts transformers takes for custom code that writes parameters in
        place. With them, the CLIP modules of a model loaded with missing weights would skip CLIP's own initialisation
        (attention and MLP weights at CLIP's std) and get the generic one."""
        return False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then re-applies `config.freeze_text_encoder` (loading re-creates
        parameters with `requires_grad=True`)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
        model.base_model.apply_freezing()
        model.base_model.prepare_text_state()
        model.tokenizer = load_saved_tokenizer(args, kwargs)  # None unless the folder has one
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus: the config's `auto_map` lists AutoConfig, AutoModel and
        AutoModelForImageClassification (so the folder loads with `trust_remote_code=True` where `hspnet` is not
        installed), `custom_pipelines` names `pipeline_hspnet.py` for "zero-shot-image-classification", and an image
        processor is saved beside the weights (the one attached as `image_processor`, or CLIP preprocessing at the
        tower's resolution), so `pipeline("image-classification", model=folder)` works, and the tokenizer attached as
        `tokenizer` (kept by `from_clip`; `from_pretrained` loads it back)."""
        from .pipeline_hspnet import custom_pipelines  # also makes the pipeline file part of the remote code

        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token", "revision",
                                                         "create_pr") if key in kwargs}
        self.config.auto_map = dict(AUTO_MAP)
        self.config.custom_pipelines = custom_pipelines()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            processor = getattr(self, "image_processor", None) or default_image_processor(self.config)
            processor.save_pretrained(save_directory)
            save_tokenizer(self, save_directory)  # `self.tokenizer`, when it has one (set_labels needs it)
        if push_to_hub:  # push_to_hub saves again into a temporary folder through this method, processor included
            repo_id = hub_options.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
            self.push_to_hub(repo_id, **hub_options)

    @classmethod
    def from_clip(cls, clip, labels: list[str], groups: list[str], label_to_group: list[int], **kwargs):
        """Build an HSPNet model on a CLIP checkpoint (a Hub id, a local CLIP folder, a `CLIPModel` or `ClipParts`)
        for these labels and groups: see `modeling_from_clip.build_from_clip` for every argument."""
        return build_from_clip(cls, clip, labels, groups, label_to_group, **kwargs)


class HSPNetModel(HSPNetPreTrainedModel):
    """HSPNet without a loss: CLIP image tower + hierarchical prompts + shared GCN -> `(B, C)` logits.

    Persistent buffers (saved with the weights): `relation` `(C + G, C + G)` raw similarities, `group_prompt_embeds`
    `(G, L, W)`, `label_prompt_embeds` `(C, L, W)` (the `n_ctx` slots after SOS take the meta-net's context),
    `group_eos_positions` `(G,)`, `label_eos_positions` `(C,)`; the label -> group map is `config.label_to_group`.

    The text side is constant at inference: it is computed once and reused (group features always, label embeddings in
    eval mode without gradients, and what the buffers imply: `prompt_layout()`, `label_graph()`) by the one rule of
    `modeling_text_state.py`; `text_options` switches each speed-up off. Under `torch.compile` the cache lookup is the
    one graph break; under `torch.export` nothing is cached, the text side is traced.
    """

    # Buffers fixed when the model is built (prompts, relation): loaded, never trained or averaged (EMA).
    constant_buffers = ("relation", "group_prompt_embeds", "label_prompt_embeds", "group_eos_positions",
                        "label_eos_positions")
    # Attributes derived from those buffers only (layout, adjacencies): a copy of the model may share them.
    constant_derived = ("_prompt_layout", "_label_graph")

    def __init__(self, config: HSPNetConfig):
        super().__init__(config)
        renamed = prompt_name_changes(config)  # id2label / group_names edited since the prompts were made
        if renamed is not None:
            logger.warning(renamed)
        clip_config = config.clip_config
        num_labels, num_groups = config.num_labels, config.num_groups
        length = config.prompt_length or clip_config.text_config.max_position_embeddings
        width, dim, n_ctx = config.text_width, config.projection_dim, config.n_ctx

        # the towers follow the dtype the model is built in (e.g. `from_pretrained(..., dtype=torch.bfloat16)`), not
        # the "float32" that the nested CLIP sub-configs were saved with
        clip_config.text_config.dtype = clip_config.vision_config.dtype = None
        if config.vision_backbone == "clip_resnet":  # no ViT tower is built (unused parameters would break DDP)
            self.clip = HSPNetCLIPResNet(config)
        else:
            self.clip = CLIPModel(clip_config)
        self.gcn = HSPNetGCN(config)
        self.meta_net = nn.Sequential(OrderedDict([("linear1", nn.Linear(dim, n_ctx * width)), ("relu", nn.ReLU()),
                                                   ("linear2", nn.Linear(n_ctx * width, n_ctx * width))]))
        self.meta_net.linear1._hspnet_torch_default_init = True
        self.meta_net.linear2._hspnet_torch_default_init = True

        size = num_labels + num_groups
        # raw similarities stay float32 whatever the model is cast to: top-k on rounded values would change the graph
        self.register_buffer("relation", torch.zeros(size, size, dtype=torch.float32))
        self.register_buffer("group_prompt_embeds", torch.zeros(num_groups, length, width))
        self.register_buffer("label_prompt_embeds", torch.zeros(num_labels, length, width))
        self.register_buffer("group_eos_positions", torch.zeros(num_groups, dtype=torch.long))
        self.register_buffer("label_eos_positions", torch.zeros(num_labels, dtype=torch.long))

        self.text_options = HSPNetTextOptions()
        self.post_init()
        self.apply_freezing()
        self.prepare_text_state()

    # ----- setup -----------------------------------------------------------------------------------------------------

    def apply_freezing(self) -> None:
        """Freeze what must not train: the text tower when `config.freeze_text_encoder` (token embeddings, transformer,
        final norm, text projection), and always the token embedding table (prompts are stored as embeddings) and CLIP's
        unused `logit_scale` (an unused trainable parameter would also break DDP)."""
        trainable = not self.config.freeze_text_encoder
        for module in (self.clip.text_model, self.clip.text_projection):
            module.requires_grad_(trainable)
        self.clip.text_model.embeddings.token_embedding.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)

    @torch.no_grad()
    def set_prompts(self, tokenizer) -> None:
        """Tokenize the group prompts (`group_prompt_template`) and the label prompts (`ctx_init + " " + label + "."`)
        with `tokenizer` and store their token embeddings and EOS positions in the buffers."""
        embeddings = prompt_embeddings(self.config, tokenizer, self.clip.text_model.embeddings.token_embedding,
                                       self.label_prompt_embeds.dtype)
        self.register_buffer("group_prompt_embeds", embeddings.group_embeds)
        self.register_buffer("label_prompt_embeds", embeddings.label_embeds)
        embeddings.record(self.config)  # prompt_length, and the names the prompts are made from
        self.group_eos_positions.copy_(embeddings.group_eos)
        self.label_eos_positions.copy_(embeddings.label_eos)
        self.prompt_layout()  # derived now, not at the first forward pass: an exported model needs it

    @torch.no_grad()
    def set_relation(self, relation: Any) -> None:
        """Store the raw `(C + G, C + G)` similarity matrix (array, tensor or `.npy` path; labels first)."""
        self.relation.copy_(read_relation(relation, self.config.num_labels, self.config.num_groups))
        self.label_graph()

    # ----- what the buffers imply (one rule for reuse: `modeling_text_state.py`) -----------------------------------

    def prompt_layout(self) -> PromptLayout:
        """The prompt lengths, the label chunk plans and the label -> group index, from the prompt buffers (computed
        again only when they or the options that shape the plans change)."""
        tensors = [self.group_eos_positions, self.label_eos_positions, self.label_prompt_embeds]
        settings = (self.config.n_ctx, tuple(self.config.label_to_group), self.text_options.memory_budget_mb,
                    self.text_options.label_chunk_size)
        layout = self._prompt_layout
        # checked once per forward pass, outside compiled graphs (`_text_from_cache`); under torch.export the buffers
        # are traced, so the layout of the real ones is used
        if layout is None or not (torch.compiler.is_compiling() or layout.sources.hold(tensors, settings)):
            self._prompt_layout = build_prompt_layout(*tensors, self.config.n_ctx, self.config.label_to_group,
                                                      self._plan, Sources.of(tensors, settings))
        return self._prompt_layout

    def label_graph(self) -> LabelGraph:
        """The fixed label and group adjacencies, processed from `relation` (computed again only when it or the
        relation settings change, not at every training step)."""
        settings = (self.config.num_labels, self.config.relation_keep_ratio, self.config.relation_reweight_p)
        graph = self._label_graph
        if graph is None or not (torch.compiler.is_compiling() or graph.sources.hold([self.relation], settings)):
            self._label_graph = build_label_graph(self.relation, *settings, Sources.of([self.relation], settings))
        return self._label_graph

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The `(C, C)` label adjacency and the `(G, G)` group adjacency."""
        graph = self.label_graph()
        return graph.label_adjacency, graph.group_adjacency

    def clear_text_cache(self) -> None:
        """Forget the cached text side and what was derived from the buffers."""
        self._text_cache = TextCache()
        self._prompt_layout: PromptLayout | None = None
        self._label_graph: LabelGraph | None = None

    def prepare_text_state(self) -> None:
        """Derive the layout and the graph from the buffers now (the first forward pass would), so that an exported
        model finds them: under `torch.export` the buffers cannot be read."""
        self.clear_text_cache()
        if self.relation.device.type != "meta":  # from_pretrained builds on the meta device, then loads
            self.prompt_layout()
            self.label_graph()

    def train(self, mode: bool = True):
        # an optimizer may change the weights without bumping version counters (fused Adam): the embeddings cached
        # before training are not reused after it
        self._text_cache.drop()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # moved to a device: yes; cast to half precision: no (top-k on rounded similarities would change the graph)
        relation = self.relation
        result = super()._apply(fn, *args, **kwargs)
        if self.relation.dtype != torch.float32:
            self._buffers["relation"] = relation.to(device=self.relation.device, dtype=torch.float32)
        return result

    # ----- text side -------------------------------------------------------------------------------------------------

    def _plan(self, suffix_lengths: list[int], needs_grad: bool) -> LabelPlan:
        """How the label prompts run through the text tower: `label_chunk_size` labels per chunk, or chunks for
        `memory_budget_mb` (`plan_label_chunks`)."""
        bytes_per_label = partial(label_activation_bytes, self.config.clip_config.text_config, 1 + self.config.n_ctx)
        return plan_label_chunks(suffix_lengths, bytes_per_label, int(self.text_options.memory_budget_mb * 2**20),
                                 max_labels=self.text_options.label_chunk_size, needs_grad=needs_grad,
                                 device=self.label_eos_positions.device)

    def encode_groups(self) -> torch.Tensor:
        """`t_parent`: the text features of the fixed group prompts before the GCN, `(G, D)` (not normalised)."""
        truncate = self.text_options.truncate_prompts
        return encode_prompt_embeddings(self.clip, self.group_prompt_embeds, self.group_eos_positions,
                                        truncate=truncate, length=self.prompt_layout().group_length if truncate
                                        else None)

    def compute_label_embeddings(
        self, group_features: torch.Tensor | None = None, label_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The full text side, `(C, D)` L2-normalised label embeddings:

        group features -> GCN (group adjacency) -> meta-net -> `n_ctx` context vectors per group -> each label takes
        its group's context -> label prompts through the text tower -> the SAME GCN (label adjacency) -> normalise.

        Args:
            group_features (`torch.Tensor` of shape `(G, D)`, *optional*): `encode_groups()` if not given.
            label_indices (`torch.LongTensor` of shape `(C',)`, *optional*): compute only these labels (label
                sampling, `config.label_sample_size`): their prompts, and the label GCN on the graph they induce with
                each row's neighbour weights rescaled to the same total `relation_reweight_p` (a row left without
                neighbours keeps only itself). An approximation: the full graph mixes in every label.
        Returns:
            `torch.Tensor` of shape `(C, D)` (or `(C', D)`).
        """
        config, graph = self.config, self.label_graph()
        if group_features is None:
            group_features = self.encode_groups()
        group_features = self.gcn(group_features, graph.group_adjacency)
        context = self.meta_net(group_features).reshape(config.num_groups, config.n_ctx, config.text_width)
        label_features = self.encode_label_prompts(context, label_indices)  # (C, D)
        label_adjacency = graph.label_adjacency
        if label_indices is not None:
            label_adjacency = induced_adjacency(label_adjacency, label_indices, config.relation_reweight_p)
        label_features = self.gcn(label_features, label_adjacency)  # (C, D)
        return F.normalize(label_features, dim=-1)

    def encode_label_prompts(self, context: torch.Tensor, label_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Label prompts `[SOS] ctx(group) {label} . [EOS]` through the frozen text tower -> `(C, D)` features (or
        `(C', D)` for `label_indices`).

        `context` `(G, n_ctx, W)`: each group's context vectors (the meta-net output)."""
        layout, options, n_ctx = self.prompt_layout(), self.text_options, self.config.n_ctx
        prompts, label_group, eos = self.label_prompt_embeds, layout.label_group, self.label_eos_positions
        length = layout.label_length if options.truncate_prompts else prompts.shape[1]
        if label_indices is not None:
            prompts, label_group, eos = prompts[label_indices], label_group[label_indices], eos[label_indices]
        context = context.to(prompts.dtype)
        needs_grad = torch.is_grad_enabled()
        if options.share_prompt_prefix and layout.shared_prefix and layout.first_label_eos > n_ctx:
            prefix = torch.cat([prompts[:1, :1].expand(context.shape[0], -1, -1), context], dim=1)  # (G, 1 + n_ctx, W)
            suffix = prompts[:, 1 + n_ctx : length]
            if label_indices is None:
                plan = layout.plan(needs_grad)
            else:  # a new sample each step
                plan = self._plan([layout.suffix_lengths[i] for i in label_indices.tolist()], needs_grad)
            return encode_shared_prefix_prompts(self.clip, prefix, suffix, label_group, eos - (1 + n_ctx), plan=plan,
                                                before_recomputed_chunk=options.before_recomputed_chunk)
        prompts = torch.cat([prompts[:, :1], context[label_group], prompts[:, 1 + n_ctx : length]], dim=1)
        return encode_prompt_embeddings(self.clip, prompts, eos, truncate=False)

    @torch.compiler.disable
    def _text_from_cache(self, all_labels: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(label_embeds, group_features)` from the cache, each None where it must be computed in the graph (see
        `TextCache.lookup`); it also checks the derived layout and graph. One call, kept out of compiled graphs, so
        a compiled forward pass has a single graph break."""
        self.prompt_layout()
        self.label_graph()
        return self._text_cache.lookup(self, all_labels)

    def get_label_embeddings(self, label_indices: torch.Tensor | None = None) -> torch.Tensor:
        """`(C, D)` normalised label embeddings (`(C', D)` of `label_indices` only): from the cache in eval mode
        when no gradient is needed, the group features from it whenever the text tower is frozen."""
        label_embeds, group_features = (None, None) if torch.compiler.is_exporting() else \
            self._text_from_cache(all_labels=label_indices is None)
        return label_embeds if label_embeds is not None else self.compute_label_embeddings(group_features,
                                                                                          label_indices)

    # ----- image side and forward ------------------------------------------------------------------------------

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """The image tower's output with `pooler_output` the projected image embedding `(B, D)` (not normalised), as
        `CLIPModel.get_image_features` returns it: for the ViT tower `visual_projection` of the pooled feature; for the
        ResNet tower the attention pool's output (CLIP's attention pool projects), with `attentions` None.
        `**kwargs` go to the tower (`output_hidden_states`, `output_attentions`, `interpolate_pos_encoding`)."""
        if self.config.vision_backbone == "clip_resnet":
            kwargs.pop("output_attentions", None)
            return self.clip.vision_model(pixel_values=pixel_values, **kwargs)
        vision_outputs = self.clip.vision_model(pixel_values=pixel_values, **kwargs)
        vision_outputs.pooler_output = self.clip.visual_projection(vision_outputs.pooler_output)
        return vision_outputs

    def get_input_embeddings(self) -> nn.Module:
        """The image tower's input embedding: the patch embedding of the ViT (as CLIP's vision models), the first
        convolution of the ResNet stem. HSPNet has no token embeddings to resize: its prompts are stored embedded."""
        if self.config.vision_backbone == "clip_resnet":
            return self.clip.vision_model.conv1
        return self.clip.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        score_indices: torch.Tensor | None = None,
        label_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> HSPNetModelOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): preprocessed images.
            score_indices (`torch.LongTensor` of shape `(C',)`, *optional*): score only these labels, computing the
                text side for them alone (label sampling; see `compute_label_embeddings`). Not named `label*`:
                transformers' Trainer treats every forward argument with "label" in its name as a target.
            label_embeds (`torch.FloatTensor` of shape `(C', D)`, *optional*): score against these normalised label
                embeddings (e.g. `get_label_embeddings()` computed once, as the ONNX export does) instead of the
                model's own.
            **kwargs: passed to the vision tower (e.g. `interpolate_pos_encoding=True` for the ViT tower).
        Returns:
            `HSPNetModelOutput` with `logits` `(B, C)`, `image_embeds` `(B, D)`, `label_embeds` `(C, D)` (`C'`
            columns / rows with `score_indices` or `label_embeds`).
        """
        if pixel_values is None:
            raise ValueError("HSPNetModel.forward needs pixel_values.")
        if "input_ids" in kwargs:  # e.g. from transformers' stock zero-shot pipeline (it would apply a softmax)
            raise ValueError("HSPNet takes no input_ids: score other labels with label_embeds (embed_labels) or "
                             "HSPNetZeroShotImageClassificationPipeline (docs/zero-shot-pipeline.md)")
        vision_kwargs = dict(kwargs)
        if output_hidden_states is not None:  # True, False, or the layers to return (e.g. [0, 2, -1])
            vision_kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            vision_kwargs["output_attentions"] = output_attentions
        if label_embeds is None:  # first: the cache lookup is the one graph break under torch.compile
            label_embeds = self.get_label_embeddings(score_indices)
        vision_outputs = self.get_image_features(pixel_values, return_dict=True, **vision_kwargs)
        image_embeds = F.normalize(vision_outputs.pooler_output, dim=-1)
        # at least float32 and outside autocast: bf16 logits keep ~3 significant digits, ties that change mAP
        dtype = torch.promote_types(image_embeds.dtype, torch.float32)
        with torch.autocast(device_type=image_embeds.device.type, enabled=False):
            logits = self.config.logit_scale * image_embeds.to(dtype) @ label_embeds.to(dtype).T
        return HSPNetModelOutput(logits=logits, image_embeds=image_embeds, label_embeds=label_embeds,
                                 hidden_states=getattr(vision_outputs, "hidden_states", None),
                                 attentions=getattr(vision_outputs, "attentions", None))


class HSPNetForImageClassification(HSPNetPreTrainedModel):
    """HSPNet with its training loss, for `AutoModelForImageClassification` and `pipeline("image-classification")`.

    `labels` are the observed targets, `(B, C)` with 1 for the observed positive(s) and 0 for unobserved labels. The
    loss is `config.loss` with `config.loss_kwargs` (default: SPLC with the reference values, summed over the batch).
    """

    # the loss is per batch (not normalised by `num_items_in_batch`): transformers.Trainer must scale it itself
    accepts_loss_kwargs = False
    # A training run's state, not the model's (the loss and its ROLE estimates, the label-sampling generator): a copy
    # of the model leaves it out.
    run_state = ("_loss_cache", "label_generator")

    def __init__(self, config: HSPNetConfig):
        super().__init__(config)
        self.hspnet = HSPNetModel(config)
        # label sampling's own random numbers (a CPU generator; a training loop seeds it and checkpoints its state);
        # None: one seeded with `torch.initial_seed()` is made at the first sampled step
        self.label_generator: torch.Generator | None = None
        self.post_init()
        config.check_loss()  # a config edited after it was made: fail now, naming the loss, not at the first step

    @property
    def loss_module(self) -> nn.Module:
        """The loss of `config.loss` with `config.loss_kwargs`, built on first use and again when they change (or the
        one given to `use_loss`). It stays OUT of the module tree: its state (the epoch of SPLC / LL-R, ROLE's
        estimates) is a training run's, kept in the run's checkpoints (`hspnet train` does), not with the weights."""
        cached = self.__dict__.get("_loss_cache")
        if cached is None or cached[0] != self._loss_choice():
            self.use_loss(build_loss(self.config.loss, self.config.num_labels, **(self.config.loss_kwargs or {})))
        return self.__dict__["_loss_cache"][1]

    def use_loss(self, loss: nn.Module) -> None:
        """Make `loss` (built for `config.loss`, e.g. ROLE with its number of training images) the model's loss until
        the config's loss choice changes."""
        self.__dict__["_loss_cache"] = (self._loss_choice(), loss)

    def _loss_choice(self) -> tuple:
        return self.config.loss, tuple(sorted((self.config.loss_kwargs or {}).items()))

    def set_epoch(self, epoch: int) -> None:
        """Tell an epoch-dependent loss (SPLC, LL-R) the current 0-based epoch, for calls that omit `epoch=`."""
        if hasattr(self.loss_module, "set_epoch"):
            self.loss_module.set_epoch(epoch)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int | None = None,
        indices: torch.Tensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        score_indices: torch.Tensor | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): preprocessed images.
            labels (`torch.FloatTensor` of shape `(B, C)` or `torch.LongTensor` of shape `(B,)`, *optional*): the
                observed targets, multi-hot (1 = observed positive), or each image's one observed positive.
            epoch (`int`, *optional*): the current 0-based epoch, for losses that change with it (SPLC, LL-R);
                otherwise the one given to `set_epoch`, or 0 (the start of training) for a model never told one.
            indices (`torch.LongTensor` of shape `(B,)`, *optional*): training-set indices, for ROLE.
            score_indices (`torch.LongTensor` of shape `(C',)`, *optional*): score only these labels (e.g. from
                `sample_labels`, the caller computing the loss); not with `labels` (they sample by themselves).
            **kwargs: passed to the vision tower.
        Returns:
            `ImageClassifierOutput` with `logits` `(B, C)` and `loss` when `labels` are given.
        """
        if labels is not None and labels.dim() == 1:  # the index of each image's one observed positive
            labels = F.one_hot(labels.long(), self.config.num_labels).float()
        label_indices, label_weights = score_indices, None
        if label_indices is not None and labels is not None:
            raise ValueError("HSPNetForImageClassification.forward: pass labels (the model computes the loss and "
                             "samples labels itself) or score_indices (and compute the loss), not both")
        if labels is not None and self.training and self.config.label_sample_size is not None:
            label_indices, label_weights = self.sample_labels(labels)
        outputs = self.hspnet(
            pixel_values=pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            score_indices=label_indices,
            return_dict=True,
            **kwargs,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if label_indices is not None:
                labels = labels[:, label_indices]
            loss_module = self.loss_module
            if epoch is None and getattr(loss_module, "requires_epoch", False) and loss_module.get_epoch() < 0:
                epoch = 0  # a model never told its epoch: the loss as at the start of training
            loss = loss_module(logits, labels, epoch=epoch, indices=indices, label_weights=label_weights)
        return HSPNetClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                      attentions=outputs.attentions, label_indices=label_indices)

    def sample_labels(self, labels: torch.Tensor, size: int | None = None) -> tuple[torch.Tensor | None, ...]:
        """`(label_indices, label_weights)` of one training step (`modeling_label_graph.sample_labels`; `size`,
        default `config.label_sample_size`) from `self.label_generator`, a CPU generator of its own that a training
        loop seeds and checkpoints (nothing else that draws random numbers, e.g. a new DataLoader iterator, changes
        the sample)."""
        if self.label_generator is None:
            self.label_generator = torch.Generator().manual_seed(torch.initial_seed())
        size = self.config.label_sample_size if size is None else size
        return sample_labels(labels, size, self.label_generator)


__all__ = ["HSPNetModel", "HSPNetForImageClassification", "HSPNetPreTrainedModel", "HSPNetModelOutput",
           "HSPNetClassifierOutput"]
