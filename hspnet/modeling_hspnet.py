# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""PyTorch HSPNet: hierarchical prompt learning on CLIP for single positive multi-label classification.

Wang et al., "Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single Positive Labels",
ACM MM 2023. This file computes exactly what the authors' released code computes (see the project's specification)
and is also the remote code saved next to the weights, so it imports only its siblings, torch and transformers.

Reading order, top to bottom:

1. `process_relation`: raw label/group similarity block -> fixed GCN adjacency.
2. `HSPNetGraphConvolution`, `HSPNetGCN`: the 3-layer GCN with a residual mix, shared by both levels.
3. `encode_prompt_embeddings`: the frozen CLIP text tower run on prompt *embeddings* (EOS pooling + projection).
4. `HSPNetPreTrainedModel`: init, freezing, saving (remote code, image processor), `from_clip`.
5. `HSPNetModel`: image embeddings, label embeddings (with exact caches), logits.
6. `HSPNetForImageClassification`: adds the loss and returns `ImageClassifierOutput`.

Shapes: `B` images, `C` labels, `G` groups, `D` joint embedding size (`projection_dim`), `W` text width,
`L` prompt length (77), `n_ctx` context vectors per label prompt.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import CLIPModel, CLIPTextModel, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .configuration_hspnet import HSPNetConfig
from .losses import build_loss, check_loss_spec

logger = logging.get_logger(__name__)

# Counts parameter, buffer and sub-module registrations in ANY module of the process (assigning a new nn.Parameter,
# replacing a layer, injecting an adapter...). HSPNetModel's caches keep flat lists of the tensors they depend on and
# rebuild them whenever this changes, which is far cheaper than walking the module tree at every forward pass.
_STRUCTURE_VERSION = [0]


def _count_registration(*args):
    _STRUCTURE_VERSION[0] += 1


for _register in (
    torch.nn.modules.module.register_module_parameter_registration_hook,
    torch.nn.modules.module.register_module_buffer_registration_hook,
    torch.nn.modules.module.register_module_module_registration_hook,
):
    _register(_count_registration)

# Fused optimizers (`Adam(fused=True)`, ...) update parameters in place WITHOUT bumping their version counters, so
# their steps are counted here and are part of the label-embedding cache key.
_FUSED_OPTIMIZER_STEPS = [0]


def _count_fused_step(optimizer, args, kwargs):
    if any(group.get("fused") for group in optimizer.param_groups):
        _FUSED_OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_fused_step)


def _clear_cache_after_load(module, incompatible_keys):
    module.clear_text_cache()


def _versions(tensors) -> tuple:
    """In-place version counters; a model built under `torch.inference_mode()` holds inference tensors, which have
    none (and cannot be modified outside inference mode), so they count as version -1."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return tuple(-1 if t.is_inference() else t._version for t in tensors)


def _cached_value(entry: tuple | None, key: tuple) -> torch.Tensor | None:
    """The cached tensor of `entry = (key, tensor)` if the key matches."""
    return entry[1] if entry is not None and entry[0] == key else None

try:  # transformers 5: the PIL backend of the CLIP image processor needs no torchvision
    from transformers import CLIPImageProcessorPil as _CLIPImageProcessor
except ImportError:  # pragma: no cover - older transformers
    from transformers import CLIPImageProcessor as _CLIPImageProcessor


# ---------------------------------------------------------------------------------------------------------------------
# Relation processing
# ---------------------------------------------------------------------------------------------------------------------


def process_relation(relation: torch.Tensor, keep_ratio: float = 0.75, reweight_p: float = 0.2) -> torch.Tensor:
    """Turn an `n x n` block of raw similarities into the fixed adjacency used by the GCN.

    As released: (1) in each row keep the top `int(keep_ratio * n)` entries (`torch.topk`, so the diagonal, the
    largest similarity, is normally among them) and zero the rest; (2) zero the diagonal; (3) divide each row by its
    sum and multiply by `reweight_p`; (4) set the diagonal to `1 - reweight_p`.

    A row with nothing left off the diagonal (e.g. a single group, where `int(0.75 * 1) == 0`) would be 0/0 in the
    released code; here it keeps only itself (diagonal 1), which is what a graph with no neighbours means.

    Args:
        relation (`torch.Tensor` of shape `(n, n)`): raw similarities.
    Returns:
        `torch.Tensor` of shape `(n, n)`, rows summing to 1 (the self-only rows too).
    """
    n = relation.shape[0]
    relation = relation.float()
    k = int(keep_ratio * n)
    eye = torch.eye(n, dtype=torch.bool, device=relation.device)
    kept = torch.zeros_like(relation)
    if k > 0:
        values, indices = torch.topk(relation, k, dim=1)
        kept.scatter_(1, indices, values)
    kept = kept.masked_fill(eye, 0.0)
    row_sum = kept.sum(dim=1, keepdim=True)
    isolated = row_sum == 0
    adjacency = torch.where(isolated, torch.zeros_like(kept), kept / torch.where(isolated, 1.0, row_sum) * reweight_p)
    diagonal = torch.where(isolated.squeeze(1), 1.0, 1.0 - reweight_p)
    return adjacency + torch.diag(diagonal)


# ---------------------------------------------------------------------------------------------------------------------
# GCN
# ---------------------------------------------------------------------------------------------------------------------


class HSPNetGraphConvolution(nn.Module):
    """`x -> adjacency @ (x @ weight)`, no bias. `weight` has shape `(in_features, out_features)`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """`features` `(n, in_features)`, `adjacency` `(n, n)` -> `(n, out_features)`."""
        return adjacency.to(features.dtype) @ (features @ self.weight.to(features.dtype))

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}"


class HSPNetGCN(nn.Module):
    """Three graph convolutions `D -> H1 -> H2 -> D` with LeakyReLU after the first two, and a trainable residual mix
    `out = gamma * gcn(x) + (1 - gamma) * x`. The same module serves the group level and the label level."""

    def __init__(self, config: HSPNetConfig):
        super().__init__()
        dim = config.projection_dim
        hidden1, hidden2 = config.gcn_hidden_dims
        self.gc1 = HSPNetGraphConvolution(dim, hidden1)
        self.gc2 = HSPNetGraphConvolution(hidden1, hidden2)
        self.gc3 = HSPNetGraphConvolution(hidden2, dim)
        self.act = nn.LeakyReLU(config.gcn_negative_slope)
        self.gamma = nn.Parameter(torch.full((1,), float(config.gcn_gamma_init)))

    def forward(self, features: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """`features` `(n, D)`, `adjacency` `(n, n)` -> `(n, D)`."""
        hidden = self.act(self.gc1(features, adjacency))
        hidden = self.act(self.gc2(hidden, adjacency))
        hidden = self.gc3(hidden, adjacency)
        gamma = self.gamma.to(hidden.dtype)
        return gamma * hidden + (1 - gamma) * features


# ---------------------------------------------------------------------------------------------------------------------
# Text tower on prompt embeddings
# ---------------------------------------------------------------------------------------------------------------------


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

    With `truncate=True` the prompts are cut to `max(eos_positions) + 1` tokens first (pass that number as `length` to
    avoid reading it from the device). The text transformer is causal, so the feature at a position never depends on
    later tokens: the output is identical to running all `L` tokens.

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


def _prompt_name(name: str) -> str:
    """The released code replaces underscores by spaces in label and group names before tokenizing."""
    return name.replace("_", " ")


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


def default_image_processor(config: HSPNetConfig):
    """CLIP preprocessing at the vision tower's resolution: resize the shorter side (bicubic), centre crop, CLIP
    mean/std, the reference preprocessing for 224-pixel towers. One known difference: when the cropped margin is odd,
    HF's centre crop rounds its offset down where torchvision's `CenterCrop` (used by the authors) rounds to nearest,
    so some image sizes (e.g. 640x427) are cropped one pixel apart."""
    size = config.image_size
    return _CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


# ---------------------------------------------------------------------------------------------------------------------
# CLIP ModifiedResNet image tower (RN50 & co.)
# ---------------------------------------------------------------------------------------------------------------------
#
# CLIP's ResNet differs from torchvision's: a stem of three 3x3 convolutions followed by a 2x2 average pool, strided
# stages that average-pool (anti-aliasing) instead of using strided convolutions, and an attention-pool head: one query
# (the mean of the final feature map) attends over all positions and the result is projected to the joint embedding
# space. Sub-module names follow OpenAI's `visual.*` layout, so OpenAI weights and the HSPNet authors' `image_encoder.*`
# weights load by a prefix rename only.


class HSPNetResNetBottleneck(nn.Module):
    """A CLIP ResNet bottleneck: 1x1 -> 3x3 -> (avg-pool when strided) -> 1x1 (x4 channels), plus a shortcut that is
    `avg-pool -> 1x1 conv -> batch norm` whenever the shape changes (keys `downsample.0` / `downsample.1`)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)),
                        ("1", nn.BatchNorm2d(out_channels)),
                    ]
                )
            )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shortcut = hidden if self.downsample is None else self.downsample(hidden)
        out = F.relu(self.bn1(self.conv1(hidden)))
        out = self.avgpool(F.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + shortcut)


class HSPNetAttentionPool2d(nn.Module):
    """CLIP's attention pooling: tokens = [mean position] + all positions, plus a learned position table; the mean
    token queries all tokens (multi-head, scaled dot product) and `c_proj` maps the result to `output_dim`.

    Only the first query is computed: the output is the attention result at that position, so this equals running the
    full self-attention and keeping token 0.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.grid_size = grid_size
        self.num_heads = num_heads
        self.positional_embedding = nn.Parameter(torch.empty(grid_size * grid_size + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features` `(B, E, h, w)` with `h * w == grid_size ** 2` -> `(B, output_dim)`."""
        batch, channels, height, width = features.shape
        if height * width + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"The ResNet image tower expects {32 * self.grid_size}x{32 * self.grid_size} images (a "
                f"{self.grid_size}x{self.grid_size} final feature map), got a {height}x{width} feature map."
            )
        tokens = features.flatten(2).transpose(1, 2)  # (B, hw, E)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        heads, head_dim = self.num_heads, channels // self.num_heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], heads, head_dim).transpose(1, 2)

        query = split(self.q_proj(tokens[:, :1]))
        pooled = F.scaled_dot_product_attention(query, split(self.k_proj(tokens)), split(self.v_proj(tokens)))
        return self.c_proj(pooled.transpose(1, 2).reshape(batch, channels))


class HSPNetModifiedResNet(nn.Module):
    """CLIP's ModifiedResNet image tower, returning `BaseModelOutputWithPooling` with `pooler_output` = the projected
    image embedding `(B, D)` (the attention pool already projects: there is no separate `visual_projection`),
    `last_hidden_state` = the final feature map `(B, 32 * width, h, w)` and, on request, `hidden_states` = the feature
    maps after the stem and after each of the four stages."""

    def __init__(self, layers: list[int], width: int, heads: int, image_size: int, output_dim: int):
        super().__init__()
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, width, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        channels = width
        for index, blocks in enumerate(layers):
            planes, stride = width * 2**index, 1 if index == 0 else 2
            stage = []
            for block in range(blocks):
                stage.append(HSPNetResNetBottleneck(channels, planes, stride if block == 0 else 1))
                channels = planes * HSPNetResNetBottleneck.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.attnpool = HSPNetAttentionPool2d(image_size // 32, channels, heads, output_dim)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool = True, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        hidden = pixel_values.to(self.conv1.weight.dtype)
        for conv, norm in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            hidden = F.relu(norm(conv(hidden)))
        hidden = self.avgpool(hidden)
        states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            hidden = stage(hidden)
            states.append(hidden)
        pooled = self.attnpool(hidden)
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=tuple(states) if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()


class HSPNetCLIPResNet(nn.Module):
    """A CLIP with a ModifiedResNet image tower, laid out like `CLIPModel` where the two agree: `text_model` (the HF
    `CLIPTextModel`), `text_projection`, `logit_scale` (unused by HSPNet), and `vision_model` (the ModifiedResNet,
    whose attention pool already projects to `projection_dim`)."""

    def __init__(self, config: HSPNetConfig):
        super().__init__()
        clip_config = config.clip_config
        text_config = clip_config.text_config
        self.text_model = CLIPTextModel._from_config(text_config)
        self.text_projection = nn.Linear(text_config.hidden_size, clip_config.projection_dim, bias=False)
        self.vision_model = HSPNetModifiedResNet(
            layers=list(config.resnet_layers),
            width=config.resnet_width,
            heads=config.resnet_heads,
            image_size=config.resnet_image_size,
            output_dim=clip_config.projection_dim,
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(clip_config.logit_scale_init_value)))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """Projected (not normalised) text features, as `CLIPModel.get_text_features` (`pooler_output`)."""
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        """Projected (not normalised) image features in `pooler_output`, as `CLIPModel.get_image_features`."""
        return self.vision_model(pixel_values=pixel_values, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI-format CLIP weights
# ---------------------------------------------------------------------------------------------------------------------
#
# OpenAI's layout (the `.pt` files of openai/CLIP, and the `image_encoder.*` / `text_encoder.*` parts of the HSPNet
# authors' checkpoints) -> this package's layout:
#
#   <text>token_embedding.weight                  -> text_model.embeddings.token_embedding.weight
#   <text>positional_embedding                    -> text_model.embeddings.position_embedding.weight
#   <text>transformer.resblocks.{i}.attn.in_proj_{weight,bias} (split in 3)
#                                                 -> text_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.{weight,bias}
#   <text>transformer.resblocks.{i}.attn.out_proj -> text_model.encoder.layers.{i}.self_attn.out_proj
#   <text>transformer.resblocks.{i}.ln_{1,2}      -> text_model.encoder.layers.{i}.layer_norm{1,2}
#   <text>transformer.resblocks.{i}.mlp.c_fc      -> text_model.encoder.layers.{i}.mlp.fc1
#   <text>transformer.resblocks.{i}.mlp.c_proj    -> text_model.encoder.layers.{i}.mlp.fc2
#   <text>ln_final                                -> text_model.final_layer_norm
#   <text>text_projection (W, D)                  -> text_projection.weight (D, W), transposed
#   logit_scale                                   -> logit_scale
#   ResNet: <visual>X                             -> vision_model.X (same sub-keys)
#   ViT:    <visual>conv1.weight                  -> vision_model.embeddings.patch_embedding.weight
#           <visual>class_embedding               -> vision_model.embeddings.class_embedding
#           <visual>positional_embedding          -> vision_model.embeddings.position_embedding.weight
#           <visual>ln_pre / ln_post              -> vision_model.pre_layrnorm / vision_model.post_layernorm
#           <visual>transformer.resblocks.{i}.*   -> vision_model.encoder.layers.{i}.* (as for the text tower)
#           <visual>proj (width, D)               -> visual_projection.weight (D, width), transposed
#
# with <text> = "" and <visual> = "visual." for OpenAI files, "text_encoder." and "image_encoder." for HSPNet's.

OPENAI_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")


def count_indexed_keys(state_dict, prefix: str) -> int:
    """Number of consecutive integer sub-keys `prefix0.`, `prefix1.`, ... present (e.g. transformer blocks)."""
    indices = {key[len(prefix) :].split(".", 1)[0] for key in state_dict if key.startswith(prefix)}
    count = 0
    while str(count) in indices:
        count += 1
    return count


class _KeyReader:
    """Reads tensors from an OpenAI-format state dict by name, remembering what was read and what was missing."""

    def __init__(self, state_dict):
        self.state_dict = state_dict
        self.used: set[str] = set()
        self.missing: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.state_dict

    def __call__(self, key: str) -> torch.Tensor | None:
        if key not in self.state_dict:
            self.missing.append(key)
            return None
        self.used.add(key)
        value = self.state_dict[key]
        return value.float() if value.is_floating_point() else value

    def count(self, prefix: str) -> int:
        return count_indexed_keys(self.state_dict, prefix)


def _map_openai_blocks(read: _KeyReader, source: str, target: str, layers: int, out: dict) -> None:
    """OpenAI `ResidualAttentionBlock`s `source{i}.*` -> HF `CLIPEncoderLayer`s `target{i}.*`."""
    renames = {
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "ln_1.weight": "layer_norm1.weight",
        "ln_1.bias": "layer_norm1.bias",
        "ln_2.weight": "layer_norm2.weight",
        "ln_2.bias": "layer_norm2.bias",
        "mlp.c_fc.weight": "mlp.fc1.weight",
        "mlp.c_fc.bias": "mlp.fc1.bias",
        "mlp.c_proj.weight": "mlp.fc2.weight",
        "mlp.c_proj.bias": "mlp.fc2.bias",
    }
    for layer in range(layers):
        src, dst = f"{source}{layer}.", f"{target}{layer}."
        for kind in ("weight", "bias"):
            packed = read(f"{src}attn.in_proj_{kind}")
            if packed is not None:
                for name, part in zip(("q", "k", "v"), packed.chunk(3, dim=0)):
                    out[f"{dst}self_attn.{name}_proj.{kind}"] = part.clone()
        for old, new in renames.items():
            value = read(src + old)
            if value is not None:
                out[dst + new] = value


def map_openai_clip_weights(
    state_dict,
    text_prefix: str = "",
    visual_prefix: str = "visual.",
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> tuple[dict, dict, dict, set]:
    """Map OpenAI-format CLIP weights (RN or ViT image tower) to this package's layout and infer the architecture.

    Args:
        state_dict: tensors by OpenAI key (see the table above); prefixes select where the text and image towers sit.
            Without `<text>token_embedding.weight` (the HSPNet checkpoints have none), the token table is left empty
            (`vocab_size` 0).
        text_heads, vision_heads: attention heads, if not CLIP's rules (`width // 64`; `32 * width // 64` for the
            ResNet attention pool).
    Returns:
        `(clip_config, backbone, weights, used_keys)`: a `CLIPConfig` dict, the `HSPNetConfig` image-tower fields
        (`vision_backbone`, `resnet_*`), the weights of `HSPNetModel.clip` (float32) and the source keys consumed.
    Raises:
        `KeyError` naming the missing keys.
    """
    read = _KeyReader(state_dict)
    out: dict[str, torch.Tensor] = {}

    # text tower
    width = state_dict[f"{text_prefix}ln_final.weight"].shape[0]
    text_layers = read.count(f"{text_prefix}transformer.resblocks.")
    context_length, _ = state_dict[f"{text_prefix}positional_embedding"].shape
    projection_dim = state_dict[f"{text_prefix}text_projection"].shape[1]
    token_key = f"{text_prefix}token_embedding.weight"
    if read.has(token_key):
        out["text_model.embeddings.token_embedding.weight"] = read(token_key)
        vocab_size = out["text_model.embeddings.token_embedding.weight"].shape[0]
    else:
        out["text_model.embeddings.token_embedding.weight"] = torch.zeros(0, width)
        vocab_size = 0
    out["text_model.embeddings.position_embedding.weight"] = read(f"{text_prefix}positional_embedding")
    _map_openai_blocks(read, f"{text_prefix}transformer.resblocks.", "text_model.encoder.layers.", text_layers, out)
    for kind in ("weight", "bias"):
        out[f"text_model.final_layer_norm.{kind}"] = read(f"{text_prefix}ln_final.{kind}")
    out["text_projection.weight"] = read(f"{text_prefix}text_projection").T.contiguous()
    if read.has("logit_scale"):
        out["logit_scale"] = read("logit_scale").reshape(())
    token_ids = {}
    if vocab_size:  # OpenAI's vocabulary ends with <|startoftext|>, <|endoftext|>; padding is by <|endoftext|> in HF
        token_ids = dict(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    else:
        token_ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads or max(1, width // 64),
        max_position_embeddings=context_length,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        **token_ids,
    )

    # image tower
    if read.has(f"{visual_prefix}attnpool.positional_embedding"):
        layers = [read.count(f"{visual_prefix}layer{stage}.") for stage in (1, 2, 3, 4)]
        resnet_width = state_dict[f"{visual_prefix}layer1.0.conv1.weight"].shape[0]
        grid = round((state_dict[f"{visual_prefix}attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        backbone = dict(
            vision_backbone="clip_resnet",
            resnet_layers=layers,
            resnet_width=resnet_width,
            resnet_heads=vision_heads or 32 * resnet_width // 64,
            resnet_image_size=32 * grid,
        )
        with torch.device("meta"):
            expected = HSPNetModifiedResNet(layers, resnet_width, backbone["resnet_heads"], 32 * grid, projection_dim)
        for name in expected.state_dict():
            value = read(visual_prefix + name)
            if value is not None:
                out[f"vision_model.{name}"] = value
        vision_config = dict(image_size=32 * grid, projection_dim=projection_dim)
    else:
        vision_width, _, patch, _ = state_dict[f"{visual_prefix}conv1.weight"].shape
        vision_layers = read.count(f"{visual_prefix}transformer.resblocks.")
        grid = round((state_dict[f"{visual_prefix}positional_embedding"].shape[0] - 1) ** 0.5)
        backbone = dict(vision_backbone="clip_vit")
        out["vision_model.embeddings.patch_embedding.weight"] = read(f"{visual_prefix}conv1.weight")
        out["vision_model.embeddings.class_embedding"] = read(f"{visual_prefix}class_embedding")
        out["vision_model.embeddings.position_embedding.weight"] = read(f"{visual_prefix}positional_embedding")
        for kind in ("weight", "bias"):
            out[f"vision_model.pre_layrnorm.{kind}"] = read(f"{visual_prefix}ln_pre.{kind}")
            out[f"vision_model.post_layernorm.{kind}"] = read(f"{visual_prefix}ln_post.{kind}")
        _map_openai_blocks(
            read, f"{visual_prefix}transformer.resblocks.", "vision_model.encoder.layers.", vision_layers, out
        )
        proj = read(f"{visual_prefix}proj")
        out["visual_projection.weight"] = proj.T.contiguous() if proj is not None else None
        vision_config = dict(
            hidden_size=vision_width,
            intermediate_size=4 * vision_width,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads or max(1, vision_width // 64),
            image_size=patch * grid,
            patch_size=patch,
            projection_dim=projection_dim,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        )
    if read.missing:
        raise KeyError(f"OpenAI-format CLIP weights: missing key(s) {read.missing}.")
    clip_config = dict(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)
    return clip_config, backbone, out, read.used


def convert_openai_clip_state_dict(state_dict, text_heads: int | None = None, vision_heads: int | None = None):
    """OpenAI CLIP weights (`visual.*`, `transformer.*`, `token_embedding.weight`, ...; RN or ViT) -> `(clip_config,
    backbone, weights)` as `map_openai_clip_weights`. Keys other than the weights and OpenAI's bookkeeping entries
    (`input_resolution`, `context_length`, `vocab_size`, attention masks) raise a `KeyError`."""
    clip_config, backbone, weights, used = map_openai_clip_weights(
        state_dict, text_heads=text_heads, vision_heads=vision_heads
    )
    extra = [
        key
        for key in state_dict
        if key not in used and key not in OPENAI_IGNORED_KEYS and not key.endswith("attn_mask")
    ]
    if extra:
        raise KeyError(f"OpenAI-format CLIP weights: unexpected key(s) {sorted(extra)}.")
    return clip_config, backbone, weights


# Readers for checkpoint files that `torch.load(weights_only=True)` refuses, such as OpenAI's TorchScript archives.
# `hspnet.conversion` registers a restricted TorchScript reader here; this file itself stays free of pickle and zip
# handling (it is also the remote code saved next to the weights). A reader returns a state dict, or None when the
# file is not in its format.
CHECKPOINT_FILE_READERS: list = []


def load_clip_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read an OpenAI-format CLIP weight file: a plain state dict saved by `torch.save` (read with
    `torch.load(weights_only=True)`), or, when `hspnet.conversion` is imported, an OpenAI TorchScript archive (the
    `RN50.pt`, `ViT-B-32.pt`, ... files), read without running any of its code."""
    for reader in CHECKPOINT_FILE_READERS:
        state = reader(path)
        if state is not None:
            return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as error:
        if "TorchScript" in str(error):
            raise ValueError(
                f"{os.fspath(path)} is a TorchScript archive (OpenAI's release format); `import hspnet.conversion` "
                "first, which registers a reader for it, or pass its state dict."
            ) from error
        raise
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{os.fspath(path)} does not hold a state dict (got {type(state).__name__}).")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ---------------------------------------------------------------------------------------------------------------------


AUTO_MAP = {
    "AutoConfig": "configuration_hspnet.HSPNetConfig",
    "AutoModel": "modeling_hspnet.HSPNetModel",
    "AutoModelForImageClassification": "modeling_hspnet.HSPNetForImageClassification",
}


class HSPNetPreTrainedModel(PreTrainedModel):
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

    def _init_weights(self, module):
        super()._init_weights(module)
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
            init.constant_(module.logit_scale, self.config.clip_config.logit_scale_init_value)
        elif isinstance(module, HSPNetModel):
            init.copy_(module.label_to_group, torch.tensor(self.config.label_to_group, dtype=torch.long))
            for name in ("relation", "group_prompt_embeds", "label_prompt_embeds"):
                init.zeros_(getattr(module, name))
            for name in ("group_eos_positions", "label_eos_positions"):
                init.zeros_(getattr(module, name))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then re-applies `config.freeze_text_encoder` (loading re-creates
        parameters with `requires_grad=True`)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True gives (model, info)
        model.base_model.apply_freezing()
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus: the config's `auto_map` lists AutoConfig, AutoModel and
        AutoModelForImageClassification (so the folder loads with `trust_remote_code=True` where `hspnet` is not
        installed), and an image processor is saved beside the weights (the one attached as `image_processor`, or
        CLIP preprocessing at the tower's resolution), so `pipeline("image-classification", model=folder)` works."""
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "token", "revision",
                                                         "create_pr") if key in kwargs}
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            processor = getattr(self, "image_processor", None) or default_image_processor(self.config)
            processor.save_pretrained(save_directory)
        if push_to_hub:  # push_to_hub saves again into a temporary folder through this method, processor included
            repo_id = hub_options.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
            self.push_to_hub(repo_id, **hub_options)

    @classmethod
    def from_clip(
        cls,
        clip: str | os.PathLike | CLIPModel | Mapping,
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
        """Build an HSPNet model on a CLIP checkpoint.

        Args:
            clip: a Hub id (e.g. `"openai/clip-vit-base-patch16"`), a local CLIP folder, a `CLIPModel`, or OpenAI-format
                CLIP weights (RN50 & co. or ViT): the path of an OpenAI `.pt` file (`RN50.pt`; TorchScript archives
                need `hspnet.conversion` imported, which registers a reader that runs none of their code) or such a
                state dict. A ResNet checkpoint gives `vision_backbone="clip_resnet"`. OpenAI files hold no
                tokenizer: pass `tokenizer=` (all OpenAI CLIP models share one, e.g. that of
                `openai/clip-vit-base-patch32`).
            labels: the `C` label names, in index order.
            groups: the `G` group names.
            label_to_group: for each label, the index of its group.
            relation: the raw `(C + G, C + G)` similarity matrix (labels first, then groups): an array, a tensor or
                the path of a `.npy` file such as the authors' `relation+voc+super.npy`. By default it is computed from
                the frozen text tower: cosine similarity of the CLIP text embeddings of
                `relation_template.format(name)` for the label names followed by the group names.
            tokenizer: the CLIP tokenizer; loaded from `clip` when it is a Hub id or folder.
            image_processor: saved beside the model; loaded from `clip` when possible, else CLIP preprocessing at the
                tower's resolution.
            clip_kwargs: passed to `CLIPModel.from_pretrained` (e.g. `revision`); the HSPNet model is built in float32, cast
                it afterwards (`model.to(torch.bfloat16)`) or save and reload it with `dtype=`.
            **config_kwargs: any other `HSPNetConfig` field (e.g. `n_ctx`, `loss`, `relation_keep_ratio`).

        The prompts are tokenized once and stored as persistent buffers (token embeddings and EOS positions) together
        with the raw relation, so `from_pretrained` restores the model without a tokenizer.
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        source = None
        clip_model = openai_weights = None
        if isinstance(clip, CLIPModel):
            clip_model = clip
            source = clip.config._name_or_path or None
        elif isinstance(clip, Mapping):
            openai_weights = clip
        elif os.path.isfile(clip):
            openai_weights = load_clip_checkpoint_file(clip)
        else:
            source = os.fspath(clip)
            clip_model = CLIPModel.from_pretrained(source, **(clip_kwargs or {}))
        if openai_weights is not None:
            clip_config, backbone, clip_weights = convert_openai_clip_state_dict(openai_weights)
            config_kwargs = {**backbone, **config_kwargs}
        else:
            clip_config, clip_weights = clip_model.config.to_dict(), clip_model.state_dict()
        if tokenizer is None:
            if source is None:
                raise ValueError(
                    "from_clip: pass tokenizer= when `clip` is a CLIPModel object with no source path or OpenAI-format "
                    "weights (every OpenAI CLIP uses the tokenizer of e.g. 'openai/clip-vit-base-patch32')."
                )
            tokenizer = AutoTokenizer.from_pretrained(source)
        if image_processor is None and source is not None:
            try:
                image_processor = AutoImageProcessor.from_pretrained(source)
            except (OSError, ValueError):
                image_processor = None

        labels = list(labels)
        config = HSPNetConfig(
            clip_config=clip_config,
            id2label=dict(enumerate(labels)),
            label2id={name: index for index, name in enumerate(labels)},
            group_names=list(groups),
            label_to_group=[int(g) for g in label_to_group],
            **config_kwargs,
        )
        model = cls(config)
        base = model.base_model
        base.clip.load_state_dict(clip_weights)
        base.set_prompts(tokenizer)
        if relation is None:
            names = [relation_template.format(_prompt_name(n)) for n in labels + list(groups)]
            embeddings = F.normalize(clip_text_embeddings(base.clip, tokenizer, names), dim=-1)
            relation = embeddings @ embeddings.T
        base.set_relation(relation)
        model.image_processor = image_processor or default_image_processor(config)
        base.apply_freezing()
        return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# HSPNet
# ---------------------------------------------------------------------------------------------------------------------


class HSPNetModel(HSPNetPreTrainedModel):
    """HSPNet without a loss: CLIP image tower + hierarchical prompts + shared GCN -> `(B, C)` logits.

    Persistent buffers (saved with the weights): `relation` `(C + G, C + G)` raw similarities, `group_prompt_embeds`
    `(G, L, W)`, `label_prompt_embeds` `(C, L, W)` (its `n_ctx` placeholder slots after SOS are replaced by the
    meta-net output), `group_eos_positions` `(G,)`, `label_eos_positions` `(C,)`. `label_to_group` `(C,)` is rebuilt
    from the config.

    Exact speed-ups, each switchable through the attributes of the same name (all on by default):

    - `cache_label_embeddings`: in eval mode the `(C, D)` label embeddings are computed once and reused;
    - `cache_group_features`: the group text features before the GCN (fixed prompts, frozen tower) are computed once,
      also during training;
    - `truncate_prompts`: prompts are cut to the longest EOS position + 1 tokens (the text tower is causal).

    A cache entry is reused only if every tensor it was computed from has the same storage and the same in-place
    version counter (optimizer steps, `load_state_dict`, `copy_`, EMA updates all bump it), no parameter, buffer or
    module was registered anywhere since (a replaced layer or parameter), and the autocast state and relation settings
    are the same. Caches are also dropped on `train()`/`eval()`, `load_state_dict` and `.to()`. Writes that bypass
    the `nn.Module` and autograd bookkeeping (`param.data.copy_(...)`, `module._parameters[name] = ...`) are not seen:
    call `clear_text_cache()` after them.
    """

    def __init__(self, config: HSPNetConfig):
        super().__init__(config)
        clip_config = config.clip_config
        num_labels, num_groups = config.num_labels, config.num_groups
        length = clip_config.text_config.max_position_embeddings
        width, dim, n_ctx = config.text_width, config.projection_dim, config.n_ctx

        # the towers follow the dtype the model is built in (e.g. `from_pretrained(..., dtype=torch.bfloat16)`), not
        # the "float32" that the nested CLIP sub-configs were saved with
        clip_config.text_config.dtype = clip_config.vision_config.dtype = None
        if config.vision_backbone == "clip_resnet":  # no ViT tower is built (unused parameters would break DDP)
            self.clip = HSPNetCLIPResNet(config)
        else:
            self.clip = CLIPModel(clip_config)
        self.gcn = HSPNetGCN(config)
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(dim, n_ctx * width)),
                    ("relu", nn.ReLU()),
                    ("linear2", nn.Linear(n_ctx * width, n_ctx * width)),
                ]
            )
        )
        self.meta_net.linear1._hspnet_torch_default_init = True
        self.meta_net.linear2._hspnet_torch_default_init = True

        size = num_labels + num_groups
        # raw similarities stay float32 whatever the model is cast to: top-k on rounded values would change the graph
        self.register_buffer("relation", torch.zeros(size, size, dtype=torch.float32))
        self.register_buffer("group_prompt_embeds", torch.zeros(num_groups, length, width))
        self.register_buffer("label_prompt_embeds", torch.zeros(num_labels, length, width))
        self.register_buffer("group_eos_positions", torch.zeros(num_groups, dtype=torch.long))
        self.register_buffer("label_eos_positions", torch.zeros(num_labels, dtype=torch.long))
        self.register_buffer("label_to_group", torch.zeros(num_labels, dtype=torch.long), persistent=False)

        self.cache_label_embeddings = True
        self.cache_group_features = True
        self.truncate_prompts = True
        self._group_features_cache: tuple | None = None
        self._label_embeds_cache: tuple | None = None
        self._tracked_lists: dict[str, tuple] = {}
        self._prompt_lengths: dict[tuple, int] = {}
        self.register_load_state_dict_post_hook(_clear_cache_after_load)

        self.post_init()
        self.apply_freezing()

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
        config = self.config
        text_config = config.clip_config.text_config
        length, eos = text_config.max_position_embeddings, text_config.eos_token_id
        embed = self.clip.text_model.embeddings.token_embedding
        if embed.num_embeddings == 0:
            raise ValueError(
                "This model has no token embedding table (it was converted from a checkpoint that stores its prompts "
                "as embeddings), so new prompts cannot be embedded. Re-convert it with the original CLIP weights "
                "(scripts/convert_official_checkpoint.py --clip-weights RN50.pt) to change label or group names."
            )

        group_texts = [config.group_prompt_template.format(_prompt_name(g)) for g in config.group_names]
        group_ids, group_eos = _tokenize_prompts(
            tokenizer, group_texts, [f"group {g!r}" for g in config.group_names], length, eos
        )
        label_texts = [f"{config.ctx_init} {_prompt_name(name)}." for name in config.label_names]
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

        device = embed.weight.device
        self.group_prompt_embeds.copy_(embed(group_ids.to(device)))
        self.label_prompt_embeds.copy_(embed(label_ids.to(device)))
        self.group_eos_positions.copy_(group_eos)
        self.label_eos_positions.copy_(label_eos)

    @torch.no_grad()
    def set_relation(self, relation: Any) -> None:
        """Store the raw `(C + G, C + G)` similarity matrix (array, tensor or `.npy` path; labels first)."""
        if isinstance(relation, (str, os.PathLike)):
            import numpy as np

            relation = np.load(relation)
        relation = torch.as_tensor(relation, dtype=torch.float32)
        expected = tuple(self.relation.shape)
        if tuple(relation.shape) != expected:
            raise ValueError(
                f"relation has shape {tuple(relation.shape)}, expected {expected}: "
                f"{self.config.num_labels} labels followed by {self.config.num_groups} groups."
            )
        if not bool(torch.isfinite(relation).all()):
            raise ValueError("relation contains NaN or infinite values.")
        self.relation.copy_(relation)

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed `(C, C)` label adjacency and `(G, G)` group adjacency, from the raw `relation`."""
        num_labels = self.config.num_labels
        keep, p = self.config.relation_keep_ratio, self.config.relation_reweight_p
        label_adjacency = process_relation(self.relation[:num_labels, :num_labels], keep, p)
        group_adjacency = process_relation(self.relation[num_labels:, num_labels:], keep, p)
        return label_adjacency, group_adjacency

    # ----- caches ------------------------------------------------------------------------------------------------

    def clear_text_cache(self) -> None:
        """Forget the cached group features and label embeddings."""
        self._group_features_cache = None
        self._label_embeds_cache = None
        self._tracked_lists = {}
        self._prompt_lengths = {}

    def train(self, mode: bool = True):
        self.clear_text_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_text_cache()
        relation = self.relation
        result = super()._apply(fn, *args, **kwargs)
        if self.relation.dtype != torch.float32:  # moved to a device: yes; cast to half precision: no
            self._buffers["relation"] = relation.to(device=self.relation.device, dtype=torch.float32)
        return result

    def _tracked_parameters(self, kind: str) -> list[torch.Tensor]:
        """The parameters the cached value of `kind` ("group" or "label") depends on, as a flat list.

        Walking the module tree costs ~0.2 ms for a ViT-B text tower, too much for every forward pass, so the list is
        kept and only rebuilt when any module anywhere registers a parameter, buffer or sub-module (a replaced
        parameter or module, e.g. an adapter injected into the text tower), as counted by `_STRUCTURE_VERSION`."""
        stored = self._tracked_lists.get(kind)
        if stored is not None and stored[0] == _STRUCTURE_VERSION[0]:
            return stored[1]
        modules = [self.clip.text_model, self.clip.text_projection]
        if kind == "label":
            modules += [self.meta_net, self.gcn]
        params = [p for module in modules for p in module.parameters()]
        self._tracked_lists[kind] = (_STRUCTURE_VERSION[0], params)
        return params

    def _cache_key(self, params: list[torch.Tensor], buffers: tuple[torch.Tensor, ...], *extra) -> tuple:
        """What a cached value must match to be reused: the in-place version counter and storage of every tensor it
        was computed from, the autocast and inference-mode state (a tensor made under `inference_mode` cannot enter
        a graph later) and the relation settings."""
        device_type = self.relation.device.type
        autocast = torch.is_autocast_enabled(device_type)
        return (
            *extra,
            _STRUCTURE_VERSION[0],
            torch.is_inference_mode_enabled(),
            autocast,
            torch.get_autocast_dtype(device_type) if autocast else None,
            self.truncate_prompts,
            self.config.relation_keep_ratio,
            self.config.relation_reweight_p,
            _versions(params),
            tuple(t.data_ptr() for t in params),
            _versions(buffers),
            tuple((id(t), t.data_ptr(), t.dtype) for t in buffers),
        )

    def _prompt_length(self, eos_positions: torch.Tensor) -> int:
        """`max(eos_positions) + 1` as a Python int, read from the device once per buffer content (no sync per step)."""
        key = (id(eos_positions), eos_positions.data_ptr(), _versions((eos_positions,)))
        if key not in self._prompt_lengths:
            self._prompt_lengths[key] = int(eos_positions.max()) + 1 if eos_positions.numel() else 1
        return self._prompt_lengths[key]

    # ----- text side -----------------------------------------------------------------------------------------------

    def get_group_features(self) -> torch.Tensor:
        """`t_parent`: text features of the fixed group prompts before the GCN, `(G, D)` (not normalised).

        Constant while the text tower is frozen, so computed once (without a graph) and reused, in training too."""
        params = self._tracked_parameters("group")
        cacheable = self.cache_group_features and not any(t.requires_grad for t in params)
        if cacheable:
            key = self._cache_key(params, (self.group_prompt_embeds, self.group_eos_positions))
            cached = _cached_value(self._group_features_cache, key)
            if cached is not None:
                return cached
        features = encode_prompt_embeddings(
            self.clip, self.group_prompt_embeds, self.group_eos_positions, truncate=self.truncate_prompts,
            length=self._prompt_length(self.group_eos_positions),
        )
        if cacheable:
            features = features.detach()
            self._group_features_cache = (key, features)
        return features

    def compute_label_embeddings(self) -> torch.Tensor:
        """The full text side, `(C, D)` L2-normalised label embeddings:

        group features -> GCN (group adjacency) -> meta-net -> `n_ctx` context vectors per group -> each label takes
        its group's context -> label prompts through the text tower -> the SAME GCN (label adjacency) -> normalise.
        """
        config = self.config
        label_adjacency, group_adjacency = self.adjacency()
        group_features = self.gcn(self.get_group_features(), group_adjacency)  # (G, D)
        context = self.meta_net(group_features)  # (G, n_ctx * W)
        context = context[self.label_to_group].reshape(config.num_labels, config.n_ctx, config.text_width)
        prompts = self.label_prompt_embeds
        prompts = torch.cat([prompts[:, :1], context.to(prompts.dtype), prompts[:, 1 + config.n_ctx :]], dim=1)
        label_features = encode_prompt_embeddings(
            self.clip, prompts, self.label_eos_positions, truncate=self.truncate_prompts,
            length=self._prompt_length(self.label_eos_positions),
        )
        label_features = self.gcn(label_features, label_adjacency)  # (C, D)
        return F.normalize(label_features, dim=-1)

    def get_label_embeddings(self) -> torch.Tensor:
        """`(C, D)` normalised label embeddings; cached in eval mode (see the class docstring)."""
        if not self.cache_label_embeddings or self.training:
            return self.compute_label_embeddings()
        params = self._tracked_parameters("label")
        if torch.is_grad_enabled() and any(t.requires_grad for t in params):
            return self.compute_label_embeddings()  # gradients must reach the text side: no cache
        buffers = (self.relation, self.group_prompt_embeds, self.group_eos_positions, self.label_prompt_embeds,
                   self.label_eos_positions, self.label_to_group)
        key = self._cache_key(params, buffers, _FUSED_OPTIMIZER_STEPS[0])
        cached = _cached_value(self._label_embeds_cache, key)
        if cached is not None:
            return cached
        with torch.no_grad():
            label_embeds = self.compute_label_embeddings()
        self._label_embeds_cache = (key, label_embeds)
        return label_embeds

    # ----- image side and forward ------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple[torch.Tensor, Any]:
        """L2-normalised projected image embeddings `(B, D)` and the vision tower's output.

        For the ViT tower the output's `pooler_output` is the pooled feature before `visual_projection`; for the
        ResNet tower it is already the projected embedding (CLIP's attention pool projects) and `attentions` is None.
        """
        if self.config.vision_backbone == "clip_resnet":
            kwargs.pop("output_attentions", None)
            vision_outputs = self.clip.vision_model(pixel_values=pixel_values, **kwargs)
            image_embeds = vision_outputs.pooler_output
        else:
            vision_outputs = self.clip.vision_model(pixel_values=pixel_values, **kwargs)
            image_embeds = self.clip.visual_projection(vision_outputs.pooler_output)
        return F.normalize(image_embeds, dim=-1), vision_outputs

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HSPNetModelOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): preprocessed images.
            **kwargs: passed to the vision tower (e.g. `interpolate_pos_encoding=True` for the ViT tower).
        Returns:
            `HSPNetModelOutput` with `logits` `(B, C)`, `image_embeds` `(B, D)`, `label_embeds` `(C, D)`.
        """
        if pixel_values is None:
            raise ValueError("HSPNetModel.forward needs pixel_values.")
        vision_kwargs = dict(kwargs)
        if output_hidden_states:
            vision_kwargs["output_hidden_states"] = True
        if output_attentions:
            vision_kwargs["output_attentions"] = True
        image_embeds, vision_outputs = self.get_image_features(pixel_values, **vision_kwargs)
        label_embeds = self.get_label_embeddings()
        # at least float32 and outside autocast: bf16 logits keep ~3 significant digits, ties that change mAP
        dtype = torch.promote_types(image_embeds.dtype, torch.float32)
        with torch.autocast(device_type=image_embeds.device.type, enabled=False):
            logits = self.config.logit_scale * image_embeds.to(dtype) @ label_embeds.to(dtype).T
        if self._label_embeds_cache is not None and label_embeds is self._label_embeds_cache[1]:
            label_embeds = label_embeds.clone()  # the caller may edit the output in place; the cache must not change
        output = HSPNetModelOutput(
            logits=logits,
            image_embeds=image_embeds,
            label_embeds=label_embeds,
            hidden_states=getattr(vision_outputs, "hidden_states", None),
            attentions=getattr(vision_outputs, "attentions", None),
        )
        return output if return_dict is not False else output.to_tuple()


class HSPNetForImageClassification(HSPNetPreTrainedModel):
    """HSPNet with its training loss, for `AutoModelForImageClassification` and `pipeline("image-classification")`.

    `labels` are the observed targets, `(B, C)` with 1 for the observed positive(s) and 0 for unobserved labels. The
    loss is `config.loss` with `config.loss_kwargs` (default: SPLC with the reference values, summed over the batch).
    """

    def __init__(self, config: HSPNetConfig):
        super().__init__(config)
        self.hspnet = HSPNetModel(config)
        self.post_init()
        check_loss_spec(config.loss, config.loss_kwargs or {})  # fail early on an unknown loss name or parameter

    @property
    def loss_module(self) -> nn.Module:
        """The loss named by `config.loss` with `config.loss_kwargs` (built on first use, rebuilt if the config changes).

        It is deliberately kept OUT of the model's module tree: its state (the epoch of SPLC / LL-R, ROLE's label
        estimates) belongs to a training run, not to the saved weights. A training script that needs that state in its
        checkpoints registers `model.loss_module` with `accelerator.register_for_checkpointing`.
        """
        spec = (self.config.loss, tuple(sorted((self.config.loss_kwargs or {}).items())))
        cached = self.__dict__.get("_loss_cache")
        if cached is None or cached[0] != spec:
            cached = (spec, build_loss(self.config.loss, self.config.num_labels, **(self.config.loss_kwargs or {})))
            self.__dict__["_loss_cache"] = cached
        return cached[1]

    def set_epoch(self, epoch: int) -> None:
        """Tell an epoch-dependent loss (SPLC, LL-R) the current 0-based epoch, for calls that omit `epoch=`."""
        if hasattr(self.loss_module, "set_epoch"):
            self.loss_module.set_epoch(epoch)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        epoch: int | None = None,
        indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`): preprocessed images.
            labels (`torch.FloatTensor` of shape `(B, C)`, *optional*): observed targets (1 = observed positive).
            epoch (`int`, *optional*): the current 0-based epoch, for losses that change with it (SPLC, LL-R);
                otherwise the one given to `set_epoch`.
            indices (`torch.LongTensor` of shape `(B,)`, *optional*): training-set indices, for ROLE.
            **kwargs: passed to the vision tower.
        Returns:
            `ImageClassifierOutput` with `logits` `(B, C)` and `loss` when `labels` are given.
        """
        outputs = self.hspnet(
            pixel_values=pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            loss = self.loss_module(logits, labels.to(logits.device), epoch=epoch, indices=indices)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict is not False else output.to_tuple()


HSPNetModel.register_for_auto_class("AutoModel")
HSPNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "HSPNetModel",
    "HSPNetForImageClassification",
    "HSPNetPreTrainedModel",
    "HSPNetModelOutput",
    "process_relation",
    "encode_prompt_embeddings",
    "clip_text_embeddings",
]
