"""Tiny, randomly initialised CLIP checkpoints that need no download.

The tests, the built-in demo and the examples use them wherever a real CLIP
checkpoint (e.g. ``openai/clip-vit-base-patch16``) would be used. A folder
written by :func:`save_tiny_clip` has exactly the layout of a Hub CLIP
checkpoint (``config.json``, ``model.safetensors``, tokenizer files,
``preprocessor_config.json``), so every loading path is exercised for real.

The tokenizer is CLIP's byte-level BPE with no merges: the vocabulary is the
256 byte symbols, the same 256 with ``</w>`` appended, then
``<|startoftext|>`` (id 512) and ``<|endoftext|>`` (id 513). It spells words
character by character, which is all a random tiny model needs.
"""

from __future__ import annotations

import os

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

try:  # transformers 5: the PIL backend needs no torchvision; same saved config
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # pragma: no cover
    from transformers import CLIPImageProcessor

# the name that stands for the tiny random CLIP wherever a CLIP checkpoint is asked for (--clip_model,
# --zero_shot_clip): rebuilt from a seed, nothing is read from disk
TINY_RANDOM = "tiny-random"
BOS_TOKEN_ID = 512
EOS_TOKEN_ID = 513
VOCAB_SIZE = 514


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode symbol table (also CLIP's)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def byte_level_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A working CLIP tokenizer with a 514-entry byte vocabulary and no merges."""
    symbols = list(_bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": 256 + index for index, symbol in enumerate(symbols)})
    vocab["<|startoftext|>"] = BOS_TOKEN_ID
    vocab["<|endoftext|>"] = EOS_TOKEN_ID
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_clip_config(
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    projection_dim: int = 24,
    image_size: int = 32,
    patch_size: int = 8,
) -> CLIPConfig:
    """A small random-weight CLIP config (ViT image tower, standard text tower)."""
    text_config = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )
    vision_config = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def tiny_clip_image_processor(image_size: int = 32) -> CLIPImageProcessor:
    """CLIP preprocessing (resize shorter side, centre crop, CLIP mean/std) at ``image_size``."""
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def tiny_clip_model(seed: int = 0, **config_kwargs) -> CLIPModel:
    """A randomly initialised tiny ``CLIPModel``, deterministic for a given ``seed``."""
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(**config_kwargs)).eval()


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> str:
    """Write a tiny CLIP checkpoint folder laid out like a Hub CLIP repository."""
    path = os.fspath(path)
    model = tiny_clip_model(seed=seed, **config_kwargs)
    model.save_pretrained(path)
    byte_level_clip_tokenizer().save_pretrained(path)
    tiny_clip_image_processor(model.config.vision_config.image_size).save_pretrained(path)
    return path


def load_tiny_random(seed: int = 0) -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessor]:
    """What the name :data:`TINY_RANDOM` loads: ``(clip_model, tokenizer, image_processor)`` of the tiny random CLIP
    built with ``seed``, as ``from_pretrained`` would give them for a CLIP checkpoint folder."""
    clip = tiny_clip_model(seed=seed)
    return clip, byte_level_clip_tokenizer(), tiny_clip_image_processor(clip.config.vision_config.image_size)
