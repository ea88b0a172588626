# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""Convert the HSPNet authors' released checkpoints to this package's format (OpenAI CLIP files: `openai_clip.py`).

The authors (Wang et al., ACM MM 2023; github.com/jameslahm/HSPNet) released ``hspnet+coco.ckpt``,
``hspnet+voc.ckpt`` and ``hspnet+nuswide.ckpt``: each is ``torch.save(model.state_dict())`` of their ``HSPNet`` module
on CLIP RN50 (a plain pickled state dict). :func:`convert_official_checkpoint` turns one, together with the dataset's
label hierarchy and the authors' relation file (not part of the checkpoint), into an :class:`HSPNetForImageClassification`
whose logits equal those of the official model. The other steps live beside this module: ``verify.py`` (the one
re-implementation of the official forward, for ``--verify``), ``folder.py`` (the Hugging Face folder, its model card
and the end-to-end :func:`run_conversion`), ``cli.py`` (``hspnet convert``).

Key mapping (official -> this package, all under ``hspnet.``)::

    image_encoder.*, text_encoder.*, logit_scale      -> clip.*: OpenAI's CLIP layout with the prefixes
                                                         "image_encoder." / "text_encoder." (the table in
                                                         `hspnet.models.openai_clip`, which does the mapping)
    (no token table in the checkpoint)                -> clip.text_model.embeddings.token_embedding.weight: empty, or
                                                         OpenAI RN50's table when CLIP weights are given
    gcn.gc{1,2,3}.weight, gcn.gamma                   -> gcn.gc{1,2,3}.weight, gcn.gamma
    child_prompt_learner.meta_net.linear{1,2}.*       -> meta_net.linear{1,2}.*
    parent_prompt_learner.embedding (G, L, W)         -> group_prompt_embeds
    child_prompt_learner.token_prefix (C, 1, W) + n_ctx zero slots + child_prompt_learner.token_suffix (C, L-1-n_ctx, W)
                                                      -> label_prompt_embeds (the slots are replaced by the meta-net)
    (derived from the prompt embeddings)              -> group_eos_positions, label_eos_positions
    relation file (C+G, C+G)                          -> relation
    parent_prompt_learner.{token_prefix,token_middle,token_suffix}: checked equal to `embedding`, then dropped
    parent_prompt_learner.ctx: unused by the official forward, dropped

EOS positions. The official prompts were tokenized by OpenAI's tokenizer (padding with token id 0) and the EOS is
found by ``argmax`` of the token ids, which the checkpoint does not contain. Every prompt ends with
``... <EOS> <pad> ... <pad>``, so the EOS position is the last row that differs from the padding row, which is the
same vector (token 0) at the end of every prompt. The derivation is checked: the rows found must be one common EOS
vector, the rows after them padding, and all prompts must start with one common SOS vector; with OpenAI's CLIP
weights given, those vectors must also equal token 49406 (SOS), 49407 (EOS) and 0 (pad) of the table. Deriving them from the stored embeddings needs no tokenizer download and checks the
checkpoint's own tensors rather than what a re-tokenization would produce.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from hspnet.models.hspnet.configuration_hspnet import HSPNetConfig
from hspnet.models.hspnet.modeling_clip_resnet import HSPNetModifiedResNet
from hspnet.models.hspnet.modeling_from_clip import default_image_processor
from hspnet.models.hspnet.modeling_hspnet import HSPNetForImageClassification
from hspnet.models.openai_clip import (
    ConversionError,
    count_indexed_keys,
    load_clip_checkpoint_file,
    map_openai_clip_weights,
)

__all__ = [
    "ConversionReport",
    "PUBLISHED_CHECKPOINTS",
    "check_official_layout",
    "convert_official_checkpoint",
    "convert_official_state_dict",
    "find_eos_positions",
    "infer_official_architecture",
    "load_official_checkpoint",
    "load_relation",
    "official_checkpoint_layout",
    "resolve_hierarchy",
]

AUTHORS_REPO = "https://github.com/jameslahm/HSPNet"
RELEASE_URL = AUTHORS_REPO + "/releases/download/v1.0/{checkpoint}"
PAPER_URL = "https://dl.acm.org/doi/10.1145/3581783.3611988"

#: The authors' published results and files, per dataset (README and configs/*.yaml of jameslahm/HSPNet).
PUBLISHED_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "coco": dict(checkpoint="hspnet+coco.ckpt", map=75.7, relation="relation+super+rn50.npy", change_epoch=1,
                 title="MS-COCO 2014", hub_dataset="coco", num_labels=80),
    "voc": dict(checkpoint="hspnet+voc.ckpt", map=90.4, relation="relation+voc+super.npy", change_epoch=2,
                title="PASCAL VOC 2012", hub_dataset="pascal_voc", num_labels=20),
    "nuswide": dict(checkpoint="hspnet+nuswide.ckpt", map=61.8, relation="relation+nuswide+super.npy", change_epoch=3,
                    title="NUS-WIDE", hub_dataset="nus-wide", num_labels=81),
    "cub": dict(checkpoint="hspnet+cub.ckpt", released=False, map=24.3, relation="relation+cub+super.npy", change_epoch=1,
                title="CUB-200-2011 (attributes)", hub_dataset="cub-200-2011", num_labels=312),
}

PARENT_PREFIX = "parent_prompt_learner."
CHILD_PREFIX = "child_prompt_learner."


# ---------------------------------------------------------------------------------------------------------------------
# Reading files safely
# ---------------------------------------------------------------------------------------------------------------------


def _unwrap_state_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """Accept a state dict, possibly inside a one-entry wrapper (`{"state_dict": ...}`, `{"model": ...}`,
    `{"ema": ...}`, ...) and possibly with DDP's `module.` prefix on every key; refuse anything else."""
    wrappers = ("state_dict", "model", "module", "ema", "model_ema", "state_dict_ema")
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [key for key in wrappers if isinstance(obj.get(key), dict)]
        if not inner:
            break
        obj = obj[inner[0]]
    if not isinstance(obj, dict):
        raise ConversionError(f"{what} does not hold a state dict (found a {type(obj).__name__}).")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{what} is not a plain state dict: entries {not_tensors[:10]} are not tensors.")
    if obj and all(key.startswith("module.") for key in obj):
        obj = {key[len("module.") :]: value for key, value in obj.items()}
    return dict(obj)


def load_official_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an HSPNet checkpoint with `torch.load(path, map_location="cpu", weights_only=True)`.

    Only tensors and plain containers can come out of `weights_only` loading: a pickle that would build any other
    object (or run code) is refused, and reported as a `ConversionError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"No checkpoint file at {path}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every refusal becomes one clear message
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's message opens with advice to retry with weights_only=False, which is exactly what must not be done
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
        raise ConversionError(
            f"{path} was refused by torch.load(weights_only=True): it is not a plain pickled state dict of tensors "
            f"(the official checkpoints are), and it is not loaded any other way. Reason: {type(error).__name__}: "
            f"{detail[:300]}"
        ) from error
    return _unwrap_state_dict(obj, path)


# ---------------------------------------------------------------------------------------------------------------------
# Architecture and layout of an official checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def infer_official_architecture(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Sizes of an official HSPNet model, read from a few anchor tensors of its state dict."""
    anchors = [
        "text_encoder.ln_final.weight",
        "text_encoder.positional_embedding",
        "text_encoder.text_projection",
        "image_encoder.layer1.0.conv1.weight",
        "image_encoder.attnpool.positional_embedding",
        PARENT_PREFIX + "embedding",
        CHILD_PREFIX + "token_prefix",
        CHILD_PREFIX + "token_suffix",
        "gcn.gc1.weight",
        "gcn.gc2.weight",
    ]
    missing = [key for key in anchors if key not in state]
    if missing:
        raise ConversionError(
            f"Not an official HSPNet (CLIP ResNet) checkpoint: missing key(s) {missing}. Expected the state dict of "
            "the authors' HSPNet module (image_encoder.*, text_encoder.*, parent_prompt_learner.*, "
            "child_prompt_learner.*, gcn.*)."
        )
    width = state["text_encoder.ln_final.weight"].shape[0]
    length = state["text_encoder.positional_embedding"].shape[0]
    pool_rows = state["image_encoder.attnpool.positional_embedding"].shape[0]
    grid = round(math.sqrt(pool_rows - 1))
    return dict(
        text_width=width,
        text_layers=count_indexed_keys(state, "text_encoder.transformer.resblocks."),
        context_length=length,
        projection_dim=state["text_encoder.text_projection"].shape[1],
        resnet_layers=[count_indexed_keys(state, f"image_encoder.layer{stage}.") for stage in (1, 2, 3, 4)],
        resnet_width=state["image_encoder.layer1.0.conv1.weight"].shape[0],
        resnet_image_size=32 * grid,
        num_groups=state[PARENT_PREFIX + "embedding"].shape[0],
        num_labels=state[CHILD_PREFIX + "token_prefix"].shape[0],
        n_ctx=length - 1 - state[CHILD_PREFIX + "token_suffix"].shape[1],
        gcn_hidden_dims=[state["gcn.gc1.weight"].shape[1], state["gcn.gc2.weight"].shape[1]],
    )


def official_checkpoint_layout(arch: dict[str, Any], vision_heads: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every key of an official HSPNet state dict with its shape, for the sizes `arch` (see
    `infer_official_architecture`): what `torch.save(HSPNet(...).state_dict())` writes."""
    W, L, D = arch["text_width"], arch["context_length"], arch["projection_dim"]
    C, G, n_ctx = arch["num_labels"], arch["num_groups"], arch["n_ctx"]
    H1, H2 = arch["gcn_hidden_dims"]
    layout: dict[str, tuple[int, ...]] = {}
    heads = vision_heads or 32 * arch["resnet_width"] // 64
    with torch.device("meta"):
        resnet = HSPNetModifiedResNet(arch["resnet_layers"], arch["resnet_width"], heads, arch["resnet_image_size"], D)
    for name, tensor in resnet.state_dict().items():
        layout["image_encoder." + name] = tuple(tensor.shape)
    layout["text_encoder.positional_embedding"] = (L, W)
    for i in range(arch["text_layers"]):
        block = f"text_encoder.transformer.resblocks.{i}."
        layout.update(
            {
                block + "attn.in_proj_weight": (3 * W, W),
                block + "attn.in_proj_bias": (3 * W,),
                block + "attn.out_proj.weight": (W, W),
                block + "attn.out_proj.bias": (W,),
                block + "ln_1.weight": (W,),
                block + "ln_1.bias": (W,),
                block + "mlp.c_fc.weight": (4 * W, W),
                block + "mlp.c_fc.bias": (4 * W,),
                block + "mlp.c_proj.weight": (W, 4 * W),
                block + "mlp.c_proj.bias": (W,),
                block + "ln_2.weight": (W,),
                block + "ln_2.bias": (W,),
            }
        )
    layout["text_encoder.ln_final.weight"] = (W,)
    layout["text_encoder.ln_final.bias"] = (W,)
    layout["text_encoder.text_projection"] = (W, D)
    layout["logit_scale"] = ()
    layout[PARENT_PREFIX + "ctx"] = (n_ctx, W)
    layout[PARENT_PREFIX + "token_prefix"] = (G, 1, W)
    layout[PARENT_PREFIX + "token_suffix"] = (G, L - 1 - n_ctx, W)
    layout[PARENT_PREFIX + "token_middle"] = (G, n_ctx, W)
    layout[PARENT_PREFIX + "embedding"] = (G, L, W)
    layout[CHILD_PREFIX + "token_prefix"] = (C, 1, W)
    layout[CHILD_PREFIX + "token_suffix"] = (C, L - 1 - n_ctx, W)
    layout[CHILD_PREFIX + "meta_net.linear1.weight"] = (n_ctx * W, D)
    layout[CHILD_PREFIX + "meta_net.linear1.bias"] = (n_ctx * W,)
    layout[CHILD_PREFIX + "meta_net.linear2.weight"] = (n_ctx * W, n_ctx * W)
    layout[CHILD_PREFIX + "meta_net.linear2.bias"] = (n_ctx * W,)
    layout["gcn.gc1.weight"] = (D, H1)
    layout["gcn.gc2.weight"] = (H1, H2)
    layout["gcn.gc3.weight"] = (H2, D)
    layout["gcn.gamma"] = (1,)
    return layout


def check_official_layout(state: dict[str, torch.Tensor], layout: dict[str, tuple[int, ...]]) -> None:
    """Raise one `ConversionError` listing every missing, unexpected and wrongly shaped key."""
    missing = [key for key in layout if key not in state]
    unexpected = [key for key in state if key not in layout]
    wrong = [
        f"{key}: {tuple(state[key].shape)} (expected {layout[key]})"
        for key in layout
        if key in state and tuple(state[key].shape) != layout[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing key(s): {missing}")
    if unexpected:
        problems.append(f"unexpected key(s), not mapped: {unexpected}")
    if wrong:
        problems.append(f"wrong shape(s): {wrong}")
    if problems:
        raise ConversionError("The checkpoint does not have the official HSPNet layout; " + "; ".join(problems) + ".")


# ---------------------------------------------------------------------------------------------------------------------
# EOS positions of the stored prompts
# ---------------------------------------------------------------------------------------------------------------------


def _same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-3) -> torch.Tensor:
    """Row-wise equality up to float noise (EMA updates can perturb constant buffers by a few ulps):
    max |a - b| <= rtol * max |b| per row."""
    a, b = a.double(), b.double()
    scale = b.abs().amax(dim=-1).clamp_min(1e-12)
    return (a - b).abs().amax(dim=-1) <= rtol * scale


@dataclass
class PromptTokens:
    """The special-token vectors found in the stored prompts."""

    sos: torch.Tensor
    eos: torch.Tensor
    pad: torch.Tensor


def find_eos_positions(prompts: torch.Tensor, names: list[str] | None = None) -> tuple[torch.Tensor, PromptTokens]:
    """EOS position of each prompt `(N, L, W)` embedded from OpenAI-tokenized text (`SOS ... "." EOS pad ... pad`,
    padding = token 0): the last row that differs from the common padding row. Checked as described in the module
    docstring; raises `ConversionError` if the prompts do not have that structure."""
    names = names or [f"prompt {i}" for i in range(prompts.shape[0])]
    n, length, _ = prompts.shape
    pad = prompts[0, -1]
    ends_padded = _same(prompts[:, -1], pad.expand(n, -1))
    if not bool(ends_padded.any(dim=0)) or int(ends_padded.sum()) < (n + 1) // 2:
        raise ConversionError("Cannot locate the padding of the stored prompts: their last rows differ.")
    is_pad = _same(prompts, pad.expand_as(prompts))  # (N, L)
    positions = []
    for index in range(n):
        if not bool(ends_padded[index]):  # a prompt of the full length: EOS is the last token
            positions.append(length - 1)
            continue
        not_pad = (~is_pad[index]).nonzero()
        if len(not_pad) == 0:
            raise ConversionError(f"The stored prompt of {names[index]} is all padding.")
        positions.append(int(not_pad[-1]))
    positions = torch.tensor(positions, dtype=torch.long)
    rows = torch.arange(n)
    eos, sos = prompts[rows, positions], prompts[:, 0]
    if bool((positions < 2).any()):
        raise ConversionError("A stored prompt is too short to hold SOS, a word and EOS.")
    for what, vectors in (("EOS", eos), ("SOS", sos)):
        same = _same(vectors, vectors[0].expand_as(vectors))
        if not bool(same.all()):
            odd = [names[i] for i in (~same).nonzero().flatten().tolist()[:5]]
            raise ConversionError(
                f"The stored prompts do not share one {what} token vector (differs for {odd}); the EOS positions "
                "cannot be derived. Were the prompts tokenized with OpenAI's CLIP tokenizer?"
            )
    after = torch.arange(length)[None, :] > positions[:, None]
    if bool((after & ~is_pad).any()):
        raise ConversionError("A stored prompt has non-padding tokens after its EOS token.")
    return positions, PromptTokens(sos=sos[0], eos=eos[0], pad=pad)


# ---------------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion did: the architecture found, the derived EOS positions, the keys dropped and why, the
    checks made, and the source tensors needed by `verify_conversion`."""

    architecture: dict[str, Any]
    group_eos_positions: torch.Tensor
    label_eos_positions: torch.Tensor
    mapped_keys: int
    dropped_keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    token_table: str = "empty"


def resolve_hierarchy(dataset: str | None, hierarchy: Any, num_labels: int) -> tuple[str | None, list, list, list]:
    """(dataset, labels, groups, label_to_group) from an explicit hierarchy or a built-in one."""
    if hierarchy is None:
        if dataset is None:
            found = [name for name, info in PUBLISHED_CHECKPOINTS.items() if info["num_labels"] == num_labels]
            if len(found) != 1:
                raise ConversionError(
                    f"The checkpoint has {num_labels} label prompts, which names no built-in dataset; pass the dataset "
                    f"({', '.join(PUBLISHED_CHECKPOINTS)}) or the labels and groups."
                )
            dataset = found[0]
        from hspnet.data import builtin_hierarchy

        hierarchy = builtin_hierarchy(dataset)
    if isinstance(hierarchy, dict):
        missing = [key for key in ("labels", "groups", "label_to_group") if key not in hierarchy]
        if missing:
            raise ConversionError(f"the hierarchy has no {', '.join(map(repr, missing))} (it needs 'labels', 'groups' "
                                  "and 'label_to_group')")
        labels, groups, label_to_group = hierarchy["labels"], hierarchy["groups"], hierarchy["label_to_group"]
    else:
        labels, groups, label_to_group = hierarchy.labels, hierarchy.groups, hierarchy.label_to_group
    return dataset, list(labels), list(groups), [int(g) for g in label_to_group]


def load_relation(relation: Any) -> torch.Tensor:
    """The authors' raw `(C + G, C + G)` relation matrix (a `.npy` path, an array or a tensor) as a float32 tensor.
    A file is read with `np.load(allow_pickle=False)`: an object array (which only unpickling, i.e. running code from
    the file, could read), a pickle, an `.npz` archive, a truncated file, values that are not numbers, NaN or
    infinite values raise a `ConversionError` naming the file."""
    what = "the relation matrix"
    if isinstance(relation, (str, os.PathLike)):
        import numpy as np

        path = what = os.fspath(relation)
        if not os.path.isfile(path):
            raise ConversionError(f"No relation file at {path} (the authors' relation+*.npy; it is not in the checkpoint).")
        try:
            relation = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            if "Object arrays" in reason:
                reason = "it holds Python objects (an object array), which only unpickling could read; refused"
            elif "pickled data" in reason:
                reason = "it is a pickle; a relation file is never unpickled"
            raise ConversionError(f"{path}: not a numeric .npy array ({reason})") from None
        if not isinstance(relation, np.ndarray):  # an .npz archive
            relation.close()
            raise ConversionError(f"{path}: not a numeric .npy array (an .npz archive of several arrays)")
        if not np.issubdtype(relation.dtype, np.number) or np.iscomplexobj(relation):
            raise ConversionError(f"{path}: holds {relation.dtype} values, not a numeric similarity matrix")
    try:
        relation = torch.as_tensor(relation, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConversionError(f"{what}: not a numeric matrix ({' '.join(str(error).split())})") from None
    if not bool(torch.isfinite(relation).all()):
        raise ConversionError(f"{what}: contains NaN or infinite values")
    return relation


def convert_official_state_dict(
    state: dict[str, torch.Tensor],
    relation: Any,
    dataset: str | None = None,
    hierarchy: Any = None,
    clip_weights: Any = None,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> tuple[HSPNetForImageClassification, ConversionReport]:
    """Build the HF model from an official HSPNet state dict.

    Args:
        state: the official state dict (see `load_official_checkpoint`).
        relation: the authors' raw `(C + G, C + G)` relation matrix (`.npy` path, array or tensor; labels first).
        dataset: `coco`, `voc`, `nuswide` or `cub`: the built-in labels and hierarchy (`hspnet.data`) and the
            dataset's SPLC `change_epoch`. Inferred from the number of labels when neither it nor `hierarchy` is given.
        hierarchy: instead of a built-in one, an object with `labels`, `groups`, `label_to_group` (or such a dict).
        clip_weights: optional OpenAI CLIP RN50 weights (a path to `RN50.pt`, or its state dict) whose token embedding
            table is copied in, so that prompts can be re-embedded (e.g. to rename labels). Only the table is used.
        text_heads, vision_heads: attention heads if not CLIP's rules (`width // 64`, `32 * resnet_width // 64`).
    Returns:
        `(model, report)`; the model is in eval mode with the text tower frozen.
    Raises:
        `ConversionError` for any mismatch (all missing, unexpected or wrongly shaped keys are listed together).
    """
    arch = infer_official_architecture(state)
    check_official_layout(state, official_checkpoint_layout(arch, vision_heads))
    dataset, labels, groups, label_to_group = resolve_hierarchy(dataset, hierarchy, arch["num_labels"])
    C, G, n_ctx, W = arch["num_labels"], arch["num_groups"], arch["n_ctx"], arch["text_width"]
    if (len(labels), len(groups)) != (C, G):
        raise ConversionError(
            f"The checkpoint has {C} label prompts and {G} group prompts, but the hierarchy"
            f"{f' of {dataset!r}' if dataset else ''} has {len(labels)} labels and {len(groups)} groups."
        )
    source = os.fspath(relation) if isinstance(relation, (str, os.PathLike)) else None
    relation = load_relation(relation)
    if tuple(relation.shape) != (C + G, C + G):
        raise ConversionError(
            f"{source + ': t' if source else 'T'}he relation matrix has shape {tuple(relation.shape)}, expected "
            f"{(C + G, C + G)} ({C} labels followed by {G} groups): is it the relation file of this dataset?"
        )
    notes: list[str] = []
    dropped: dict[str, str] = {}

    # text and image towers
    clip_config, backbone, clip_state, used = map_openai_clip_weights(
        state, text_prefix="text_encoder.", visual_prefix="image_encoder.", text_heads=text_heads,
        vision_heads=vision_heads,
    )

    # prompts: groups are stored whole; labels as SOS + (n_ctx slots filled by the meta-net) + suffix
    group_prompts = state[PARENT_PREFIX + "embedding"].float()
    slots = torch.zeros(C, n_ctx, W)
    label_prompts = torch.cat([state[CHILD_PREFIX + "token_prefix"].float(), slots,
                               state[CHILD_PREFIX + "token_suffix"].float()], dim=1)
    names = [f"group {g!r}" for g in groups] + [f"label {name!r}" for name in labels]
    positions, tokens = find_eos_positions(torch.cat([group_prompts, label_prompts]), names)
    if bool((positions[G:] <= n_ctx + 1).any()):
        raise ConversionError("A label prompt has no room for a name between its context slots and '.'.")
    group_eos, label_eos = positions[:G], positions[G:]

    parent_parts = torch.cat([state[PARENT_PREFIX + key].float() for key in ("token_prefix", "token_middle",
                                                                           "token_suffix")], dim=1)
    if not bool(_same(parent_parts.flatten(0, 1), group_prompts.flatten(0, 1)).all()):
        notes.append("parent_prompt_learner.{token_prefix,token_middle,token_suffix} differ from its `embedding`; "
                     "the official forward uses `embedding`, and so does the conversion.")
    for key in ("token_prefix", "token_middle", "token_suffix"):
        dropped[PARENT_PREFIX + key] = "piece of parent_prompt_learner.embedding (compared), which is kept"
    dropped[PARENT_PREFIX + "ctx"] = "trainable parent context that the official forward never uses"

    # optional token table
    token_table = "empty (prompts are stored as embeddings; pass CLIP RN50 weights to fill it)"
    if clip_weights is not None:
        clip_state_source = clip_weights
        if isinstance(clip_weights, (str, os.PathLike)):
            clip_state_source = load_clip_checkpoint_file(clip_weights)
        table = clip_state_source.get("token_embedding.weight")
        if table is None:
            raise ConversionError("The CLIP weights have no token_embedding.weight (OpenAI format expected).")
        table = table.float()
        if table.shape[1] != W or table.shape[0] < 3:
            raise ConversionError(f"The CLIP token table has shape {tuple(table.shape)}; the checkpoint's text width is {W}.")
        vocab = table.shape[0]
        expected = {"SOS": (tokens.sos, vocab - 2), "EOS": (tokens.eos, vocab - 1), "padding": (tokens.pad, 0)}
        for what, (vector, token_id) in expected.items():
            if not bool(_same(vector[None], table[token_id][None]).all()):
                raise ConversionError(
                    f"The CLIP weights do not match the checkpoint: the prompts' {what} vector is not token {token_id} "
                    "of their table. Pass OpenAI's RN50 weights (the checkpoints were trained from CLIP RN50)."
                )
        clip_state["text_model.embeddings.token_embedding.weight"] = table
        clip_config["text_config"].update(vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                                          pad_token_id=vocab - 1)
        token_table = f"OpenAI CLIP token table ({vocab} x {W}), checked against the prompts' SOS/EOS/padding"

    info = PUBLISHED_CHECKPOINTS.get(dataset or "", {})
    config = HSPNetConfig(
        clip_config=clip_config,
        **backbone,
        id2label=dict(enumerate(labels)),
        label2id={name: index for index, name in enumerate(labels)},
        group_names=groups,
        label_to_group=label_to_group,
        group_prompt_template="a photo of a {}.",
        n_ctx=n_ctx,
        ctx_init=" ".join(["X"] * n_ctx),
        gcn_hidden_dims=list(arch["gcn_hidden_dims"]),
        gcn_negative_slope=0.2,
        relation_keep_ratio=0.75,
        relation_reweight_p=0.2,
        logit_scale=10.0,
        loss="splc",
        loss_kwargs={"change_epoch": info["change_epoch"]} if info else {},
        # the checkpoint's prompts are those of these names: a later edit of the names is reported on loading
        prompt_label_names=list(labels),
        prompt_group_names=list(groups),
    )
    model = HSPNetForImageClassification(config)
    weights = {f"hspnet.clip.{key}": value for key, value in clip_state.items()}
    for index in (1, 2, 3):
        weights[f"hspnet.gcn.gc{index}.weight"] = state[f"gcn.gc{index}.weight"].float()
    weights["hspnet.gcn.gamma"] = state["gcn.gamma"].float()
    for name in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
        weights[f"hspnet.meta_net.{name}"] = state[f"{CHILD_PREFIX}meta_net.{name}"].float()
    weights["hspnet.relation"] = relation
    weights["hspnet.group_prompt_embeds"] = group_prompts
    weights["hspnet.label_prompt_embeds"] = label_prompts
    weights["hspnet.group_eos_positions"] = group_eos
    weights["hspnet.label_eos_positions"] = label_eos
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:  # an internal error: the layout check passed
        raise ConversionError(f"Mapping incomplete: missing {result.missing_keys}, unexpected {result.unexpected_keys}.")
    used = set(used) | {f"gcn.gc{i}.weight" for i in (1, 2, 3)} | {"gcn.gamma", PARENT_PREFIX + "embedding",
                                                                  CHILD_PREFIX + "token_prefix",
                                                                  CHILD_PREFIX + "token_suffix"}
    used |= {f"{CHILD_PREFIX}meta_net.{name}" for name in ("linear1.weight", "linear1.bias", "linear2.weight",
                                                           "linear2.bias")}
    leftover = sorted(set(state) - used - set(dropped))
    if leftover:  # an internal error: the layout check passed
        raise ConversionError(f"Unmapped key(s): {leftover}.")
    model.hspnet.apply_freezing()
    model.image_processor = default_image_processor(config)
    report = ConversionReport(
        architecture={**arch, "dataset": dataset, "resnet_heads": config.resnet_heads,
                      "text_heads": config.clip_config.text_config.num_attention_heads},
        group_eos_positions=group_eos,
        label_eos_positions=label_eos,
        mapped_keys=len(used),
        dropped_keys=dropped,
        notes=notes,
        token_table=token_table,
    )
    return model.eval(), report


def convert_official_checkpoint(
    checkpoint: str | os.PathLike,
    relation: Any,
    dataset: str | None = None,
    hierarchy: Any = None,
    clip_weights: Any = None,
    **kwargs,
) -> tuple[HSPNetForImageClassification, ConversionReport, dict[str, torch.Tensor]]:
    """`load_official_checkpoint` + `convert_official_state_dict`; also returns the official state dict (for
    `verify_conversion`)."""
    state = load_official_checkpoint(checkpoint)
    model, report = convert_official_state_dict(state, relation, dataset=dataset, hierarchy=hierarchy,
                                                clip_weights=clip_weights, **kwargs)
    return model, report, state
