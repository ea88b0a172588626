# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""CLIP's ModifiedResNet image tower (RN50 & co.), the backbone of the HSPNet paper and of the authors' checkpoints.

Saved next to the weights as remote code with `modeling_hspnet.py` (which builds it when
`config.vision_backbone == "clip_resnet"`), so it imports only its siblings, torch and transformers.

CLIP's ResNet differs from torchvision's: a stem of three 3x3 convolutions followed by a 2x2 average pool, strided
stages that average-pool (anti-aliasing) instead of using strided convolutions, and an attention-pool head: one query
(the mean of the final feature map) attends over all positions and the result is projected to the joint embedding
space. Sub-module names follow OpenAI's `visual.*` layout, so OpenAI weights and the HSPNet authors' `image_encoder.*`
weights load by a prefix rename only.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_hspnet import HSPNetConfig


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
        tokens = features.permute(0, 2, 3, 1).reshape(batch, height * width, channels)  # (B, hw, E): a view if NHWC
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
    maps after the stem and after each of the four stages.

    The convolutions run channels-last (`channels_last`, default True): the input is converted to
    `torch.channels_last`, so every feature map is NHWC in memory (shapes and values unchanged, up to float rounding
    of the convolution kernels). On CPU (oneDNN) this made the RN50 tower's training step ~8% and its inference ~18%
    faster (docs/benchmarks.md); it is what cuDNN's tensor-core kernels prefer too. Set `channels_last = False` on the
    tower for NCHW; `model.to(memory_format=torch.channels_last)` also converts the weights."""

    def __init__(self, layers: list[int], width: int, heads: int, image_size: int, output_dim: int):
        super().__init__()
        self.channels_last = True
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
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        hidden = pixel_values.to(dtype=self.conv1.weight.dtype, memory_format=memory_format)
        for conv, norm in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            hidden = F.relu(norm(conv(hidden)))
        hidden = self.avgpool(hidden)
        states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            hidden = stage(hidden)
            states.append(hidden)
        pooled = self.attnpool(hidden)
        output = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled,
                                            hidden_states=tuple(states) if output_hidden_states else None)
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


__all__ = ["HSPNetAttentionPool2d", "HSPNetCLIPResNet", "HSPNetModifiedResNet", "HSPNetResNetBottleneck"]
