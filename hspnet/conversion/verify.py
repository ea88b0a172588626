# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""The official HSPNet forward re-implemented directly on the checkpoint's own tensors, for ``hspnet convert --verify``.

This is the only re-implementation of the authors' forward in the package: torch functional ops over the official
state dict (nothing of :mod:`hspnet.models.hspnet.modeling_hspnet` is reused), so that agreeing logits check the key mapping of
:mod:`hspnet.conversion.official`. The tests keep their own, independent reference (``tests/official_reference.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from hspnet.conversion.official import (
    CHILD_PREFIX,
    PARENT_PREFIX,
    ConversionReport,
    infer_official_architecture,
    load_relation,
)
from hspnet.models.hspnet.modeling_hspnet import HSPNetForImageClassification

__all__ = ["official_logits", "verify_conversion"]


def _official_adjacency(block: torch.Tensor, keep_ratio: float = 0.75, p: float = 0.2) -> torch.Tensor:
    """The authors' `split`: keep the top `int(keep_ratio * n)` per row, zero the diagonal, rescale rows to `p`,
    put `1 - p` on the diagonal."""
    block = block.clone()
    n = block.shape[0]
    _, top = torch.topk(block, int(keep_ratio * n), dim=1)
    keep = torch.zeros_like(block, dtype=torch.bool).scatter_(1, top, True)
    block[~keep] = 0
    eye = torch.eye(n, dtype=torch.bool)
    block[eye] = 0
    block = block / block.sum(dim=1, keepdim=True) * p
    block[eye] = 1 - p
    return block


def _official_image_features(get, pixel_values: torch.Tensor, layers: list[int], heads: int) -> torch.Tensor:
    def norm(x, name):
        return F.batch_norm(x, get(name + ".running_mean"), get(name + ".running_var"), get(name + ".weight"),
                            get(name + ".bias"), training=False, eps=1e-5)

    x = pixel_values
    for index, stride in ((1, 2), (2, 1), (3, 1)):
        x = F.relu(norm(F.conv2d(x, get(f"image_encoder.conv{index}.weight"), stride=stride, padding=1),
                        f"image_encoder.bn{index}"))
    x = F.avg_pool2d(x, 2)
    for stage, blocks in enumerate(layers, start=1):
        for block in range(blocks):
            p = f"image_encoder.layer{stage}.{block}."
            stride = 2 if (stage > 1 and block == 0) else 1
            y = F.relu(norm(F.conv2d(x, get(p + "conv1.weight")), p + "bn1"))
            y = F.relu(norm(F.conv2d(y, get(p + "conv2.weight"), padding=1), p + "bn2"))
            if stride > 1:
                y = F.avg_pool2d(y, stride)
            y = norm(F.conv2d(y, get(p + "conv3.weight")), p + "bn3")
            if get(p + "downsample.0.weight", optional=True) is not None:
                shortcut = F.avg_pool2d(x, stride) if stride > 1 else x
                shortcut = norm(F.conv2d(shortcut, get(p + "downsample.0.weight")), p + "downsample.1")
            else:
                shortcut = x
            x = F.relu(y + shortcut)
    # attention pool, with torch's reference multi-head attention over all positions, keeping position 0
    tokens = x.flatten(2).permute(2, 0, 1)  # (hw, B, E)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens]) + get("image_encoder.attnpool.positional_embedding")[:, None]
    a = "image_encoder.attnpool."
    out, _ = F.multi_head_attention_forward(
        tokens, tokens, tokens, tokens.shape[-1], heads,
        in_proj_weight=None,
        in_proj_bias=torch.cat([get(a + "q_proj.bias"), get(a + "k_proj.bias"), get(a + "v_proj.bias")]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=get(a + "c_proj.weight"), out_proj_bias=get(a + "c_proj.bias"),
        training=False, need_weights=False, use_separate_proj_weight=True,
        q_proj_weight=get(a + "q_proj.weight"), k_proj_weight=get(a + "k_proj.weight"),
        v_proj_weight=get(a + "v_proj.weight"),
    )
    return out[0]


def _official_text_features(get, prompts: torch.Tensor, eos: torch.Tensor, layers: int, heads: int) -> torch.Tensor:
    length, width = prompts.shape[1], prompts.shape[2]
    x = (prompts + get("text_encoder.positional_embedding")).permute(1, 0, 2)  # (L, N, W)
    mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu_(1)
    for i in range(layers):
        p = f"text_encoder.transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), get(p + "ln_1.weight"), get(p + "ln_1.bias"), eps=1e-5)
        attended, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, get(p + "attn.in_proj_weight"), get(p + "attn.in_proj_bias"), None, None, False,
            0.0, get(p + "attn.out_proj.weight"), get(p + "attn.out_proj.bias"), training=False, need_weights=False,
            attn_mask=mask,
        )
        x = x + attended
        h = F.layer_norm(x, (width,), get(p + "ln_2.weight"), get(p + "ln_2.bias"), eps=1e-5)
        h = F.linear(h, get(p + "mlp.c_fc.weight"), get(p + "mlp.c_fc.bias"))
        x = x + F.linear(h * torch.sigmoid(1.702 * h), get(p + "mlp.c_proj.weight"), get(p + "mlp.c_proj.bias"))
    x = F.layer_norm(x.permute(1, 0, 2), (width,), get("text_encoder.ln_final.weight"),
                     get("text_encoder.ln_final.bias"), eps=1e-5)
    return x[torch.arange(x.shape[0]), eos] @ get("text_encoder.text_projection")


@torch.no_grad()
def official_logits(
    state: dict[str, torch.Tensor],
    relation: Any,
    label_to_group: list[int],
    pixel_values: torch.Tensor,
    group_eos_positions: torch.Tensor,
    label_eos_positions: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    keep_ratio: float = 0.75,
    reweight_p: float = 0.2,
) -> torch.Tensor:
    """The official HSPNet forward (eval mode) computed directly from the official state dict with torch functional
    ops: image encoder -> normalise; parent prompts -> text encoder -> GCN (group adjacency) -> meta-net -> child
    prompts -> text encoder -> the same GCN (label adjacency) -> normalise; `10 * image @ text.T`."""

    def get(key, optional=False):
        if optional and key not in state:
            return None
        return state[key].to(dtype)

    arch = infer_official_architecture(state)
    C, n_ctx, W = arch["num_labels"], arch["n_ctx"], arch["text_width"]
    text_heads = text_heads or max(1, W // 64)
    vision_heads = vision_heads or 32 * arch["resnet_width"] // 64
    relation = load_relation(relation).to(dtype)
    label_adjacency = _official_adjacency(relation[:C, :C], keep_ratio, reweight_p)
    group_adjacency = _official_adjacency(relation[C:, C:], keep_ratio, reweight_p)

    def gcn(x, adjacency):
        h = F.leaky_relu(adjacency @ (x @ get("gcn.gc1.weight")), 0.2)
        h = F.leaky_relu(adjacency @ (h @ get("gcn.gc2.weight")), 0.2)
        h = adjacency @ (h @ get("gcn.gc3.weight"))
        gamma = get("gcn.gamma")
        return gamma * h + (1 - gamma) * x

    image = _official_image_features(get, pixel_values.to(dtype), arch["resnet_layers"], vision_heads)
    image = image / image.norm(dim=-1, keepdim=True)
    parent = _official_text_features(get, get(PARENT_PREFIX + "embedding"), group_eos_positions, arch["text_layers"],
                                     text_heads)
    parent = gcn(parent, group_adjacency)
    context = F.linear(F.relu(F.linear(parent, get(CHILD_PREFIX + "meta_net.linear1.weight"),
                                       get(CHILD_PREFIX + "meta_net.linear1.bias"))),
                       get(CHILD_PREFIX + "meta_net.linear2.weight"), get(CHILD_PREFIX + "meta_net.linear2.bias"))
    context = context[torch.as_tensor(label_to_group, dtype=torch.long)].reshape(C, n_ctx, W)
    child = torch.cat([get(CHILD_PREFIX + "token_prefix"), context, get(CHILD_PREFIX + "token_suffix")], dim=1)
    text = _official_text_features(get, child, label_eos_positions, arch["text_layers"], text_heads)
    text = gcn(text, label_adjacency)
    text = text / text.norm(dim=-1, keepdim=True)
    return 10 * image @ text.T


@torch.no_grad()
def verify_conversion(
    model: HSPNetForImageClassification,
    state: dict[str, torch.Tensor],
    relation: Any,
    report: ConversionReport,
    num_images: int = 2,
    seed: int = 0,
    float64: bool = True,
) -> dict[str, float]:
    """Run the converted model and `official_logits` (float64) on `num_images` random images and return the largest
    absolute logit differences: `float32` (the converted model as saved) and, if `float64`, `float64` (a float64 copy
    of the converted model, which isolates mapping errors from float32 rounding)."""
    size = model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(num_images, 3, size, size, generator=generator)
    reference = official_logits(
        state, relation, model.config.label_to_group, pixel_values, report.group_eos_positions,
        report.label_eos_positions, text_heads=model.config.clip_config.text_config.num_attention_heads,
        vision_heads=model.config.resnet_heads,
    )
    model = model.eval()
    result = {"float32": float((model(pixel_values=pixel_values).logits.double() - reference).abs().max())}
    if float64:
        model64 = copy.deepcopy(model).double()
        logits = model64(pixel_values=pixel_values.double()).logits
        result["float64"] = float((logits - reference).abs().max())
        del model64
    result["max_abs_logit"] = float(reference.abs().max())
    return result
