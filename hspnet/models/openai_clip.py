# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""OpenAI CLIP weight files -> this package's CLIP layout (a `CLIPModel` state dict, or the ModifiedResNet tower).

- :func:`load_clip_checkpoint_file`: read a `.pt` file: OpenAI's TorchScript archives (`RN50.pt`, `ViT-B-32.pt`) with
  a restricted unpickler that compiles and runs none of their code, or a plain state dict with
  `torch.load(weights_only=True)`;
- :func:`map_openai_clip_weights` / :func:`convert_openai_clip_state_dict`: rename (and split / transpose) the
  OpenAI keys and infer the architecture (the table below);
- :func:`load_openai_clip_parts`: both, as the `ClipParts` that `HSPNetForImageClassification.from_clip` builds a
  model on (`hspnet train --clip_model RN50.pt`).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from hspnet.models.hspnet.modeling_clip_resnet import HSPNetModifiedResNet
from hspnet.models.hspnet.modeling_from_clip import ClipParts


class ConversionError(ValueError):
    """A checkpoint does not have the expected layout (missing, unexpected or wrongly shaped keys), is not a plain
    state dict, or does not fit the given hierarchy / relation / CLIP weights."""


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



# TorchScript archives, read without torch.jit

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


@dataclass
class _StorageType:
    dtype: torch.dtype


class _ScriptObject:
    """Inert stand-in for every `__torch__.*` class of a TorchScript archive: it only keeps its pickled state."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript archive's `data.pkl` allowing only tensors, storages, `OrderedDict` and inert module
    stand-ins; any other global is refused, and no TorchScript code is compiled or run."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        key = str(pid[2])
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.root}data/{key}"))
            dtype = pid[1].dtype
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


def _collect_tensors(obj: Any, prefix: str, out: dict, seen: set) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, _ScriptObject) and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj.state, dict):
            for key, value in obj.state.items():
                _collect_tensors(value, f"{prefix}{key}.", out, seen)


def read_torchscript_archive(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The tensors of a TorchScript archive (OpenAI's `RN50.pt`, `ViT-B-32.pt`, ...) by attribute path, read with a
    restricted unpickler (no `torch.jit.load`, so none of the archive's code is compiled or run). Returns None when
    `path` is not a TorchScript archive."""
    path = os.fspath(path)
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if not data or not any(name.endswith("/constants.pkl") for name in names):
            return None  # a zip written by torch.save: torch.load(weights_only=True) reads it
        root = data[0][: -len("data.pkl")]
        try:
            obj = _TorchScriptUnpickler(io.BytesIO(archive.read(data[0])), archive, root).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, RuntimeError) as error:
            raise ConversionError(f"{path}: unsupported TorchScript archive ({error}).") from error
    state: dict[str, torch.Tensor] = {}
    _collect_tensors(obj, "", state, set())
    return state


def load_clip_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read an OpenAI-format CLIP weight file: an OpenAI TorchScript archive (the `RN50.pt`, `ViT-B-32.pt`, ...
    files), read without running any of its code, or a plain state dict saved by `torch.save` (read with
    `torch.load(weights_only=True)`, optionally wrapped as `{"state_dict": ...}`)."""
    path = os.fspath(path)
    state = read_torchscript_archive(path)
    if state is not None:
        return state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        reason = " ".join(str(error).split())[:300]
        raise ConversionError(f"{path}: not a readable CLIP weight file ({type(error).__name__}: {reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConversionError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    return state


def load_openai_clip_parts(source: str | os.PathLike | Mapping) -> ClipParts:
    """What `HSPNetForImageClassification.from_clip` builds a model on, from an OpenAI CLIP `.pt` file (`RN50.pt`,
    `ViT-B-16.pt`, ...; read without running any of its code) or such a state dict. OpenAI files hold no tokenizer:
    pass `tokenizer=` to `from_clip` (all OpenAI CLIP models share one, e.g. that of `openai/clip-vit-base-patch32`)."""
    state = source if isinstance(source, Mapping) else load_clip_checkpoint_file(source)
    clip_config, config_kwargs, weights = convert_openai_clip_state_dict(state)
    return ClipParts(clip_config=clip_config, clip_weights=weights, tokenizer=None, config_kwargs=dict(config_kwargs))


__all__ = [
    "ConversionError",
    "convert_openai_clip_state_dict",
    "count_indexed_keys",
    "load_clip_checkpoint_file",
    "load_openai_clip_parts",
    "map_openai_clip_weights",
    "read_torchscript_archive",
]
