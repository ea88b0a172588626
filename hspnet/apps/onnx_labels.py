"""The label side of an HSPNet model as an ONNX graph of its own (`hspnet export-onnx --label_encoder`, written as
`OUT.labels.onnx`): label names -> label embeddings with onnxruntime, for labels the model was not trained on.

The graph computes what `model.set_labels(names, label_to_group)` gives the PyTorch model (`modeling_label_set.py`)
for `C'` labels, with every learned weight as trained:

    inputs   label_token_ids (C', Lp) int64   the label prompts "{ctx_init} {name}." tokenized (start, end, padding)
             name_token_ids  (C', Ln) int64   the bare names "{name}" tokenized (for the relation)
             label_to_group  (C',)    int64   each label's group, or -1: the nearest group
    names    = normalize(text tower(name_token_ids))                       # (C', D), at each row's EOS token
    group_similarity = names @ group_names.T                               # (C', G); group_names: constant
    label_groups     = label_to_group, or argmax(group_similarity) where it is -1
    adjacency        = process_relation(names @ names.T)                   # top-k, reweighting: in the graph
    prompts          = token_embedding(label_token_ids) with the n_ctx slots after SOS replaced by
                       context[label_groups]                               # context: constant (G, n_ctx, W)
    label_embeds     = normalize(gcn(text tower(prompts), adjacency))      # (C', D)

The group side does not depend on the labels and is computed once at export, as `set_labels` computes it: the group
prompts through the text tower, the group GCN on the relation of the group names (recomputed by the text tower, as
`set_labels` recomputes the whole relation), the meta-net -> `context`; and the normalised text embeddings of the
group names. `C'`, `Lp` and `Ln` are dynamic (`Lp`, `Ln` <= 77); the EOS position of each row is found in the graph
(the first end-of-text token, or the largest id for legacy CLIP configs), so padding after it changes nothing.

The tokenizer (the model's own, `model.tokenizer`) is stored in the file (`metadata_props["hspnet.tokenizer"]`, a
`tokenizer.json`); :class:`hspnet.apps.onnx_inference.ONNXLabelEncoder` tokenizes with it and runs the graph.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hspnet.apps.onnx_inference import LABEL_INPUTS, LABELS_FORMAT_NAME, NEAREST, TOKENIZER_KEY
from hspnet.models.loading import hspnet_base_model, label_names

LABELS_FORMAT_VERSION = 1
MAX_CHECKED_LABELS = 32
"""The export check embeds at most this many of the model's labels (plus new names) both ways."""


def label_encoder_path(out_path: str | os.PathLike) -> str:
    """`model.onnx` -> `model.labels.onnx` (any other name gets `.labels.onnx` appended)."""
    out_path = os.fspath(out_path)
    root, extension = os.path.splitext(out_path)
    return (root if extension.lower() == ".onnx" else out_path) + ".labels.onnx"


def graph_adjacency(relation: torch.Tensor, keep_ratio: float, reweight_p: float) -> torch.Tensor:
    """`modeling_label_graph.process_relation` in operations that export to ONNX for a dynamic `n`: keep each row's
    `int(keep_ratio * n)` largest entries (every entry >= the k-th largest), zero the diagonal, scale each row to
    sum to `reweight_p`, diagonal `1 - reweight_p` (a row with nothing left: diagonal 1). `k` is computed in float64,
    as Python computes `int(keep_ratio * n)`. Equal to `process_relation` except on a row where an exact tie of
    non-zero values straddles the k-th place (all tied entries are kept here; `torch.topk` keeps some of them).

    Args:
        relation (`torch.Tensor` of shape `(n, n)`): raw similarities (float32).
    Returns:
        `torch.Tensor` of shape `(n, n)`, float32.
    """
    n = relation.shape[0]
    count = torch.ones_like(relation[:, 0], dtype=torch.float64).sum()
    k = torch.floor(count * keep_ratio).to(torch.long)
    ordered = torch.sort(relation, dim=1, descending=True).values
    index = torch.minimum((k - 1).clamp(min=0), count.to(torch.long) - 1).reshape(1, 1).expand(n, 1)
    threshold = ordered.gather(1, index)  # (n, 1): each row's k-th largest value
    position = torch.arange(n, device=relation.device)
    eye = position[:, None] == position[None, :]
    off = torch.where((relation >= threshold) & (k > 0) & ~eye, relation, 0.0)
    row_sum = off.sum(dim=1, keepdim=True)
    isolated = row_sum == 0
    off = torch.where(isolated, 0.0, off / torch.where(isolated, 1.0, row_sum) * reweight_p)
    return torch.where(eye, torch.where(isolated, 1.0, 1.0 - reweight_p), off)


class HSPNetOnnxLabelEncoder(nn.Module):
    """The label side of an HSPNet model for export (this module's docstring): the text tower, the token embedding
    table and the GCN are the model's own modules (shared, not copied); the group side is computed here once with
    `tokenizer` (the model's) and stored as the buffers `context` `(G, n_ctx, W)` and `group_name_embeds` `(G, D)`.
    Build it from a float32 model in eval mode."""

    def __init__(self, model: nn.Module, tokenizer: Any):
        super().__init__()
        from hspnet.models.hspnet.modeling_from_clip import prompt_embeddings, prompt_name
        from hspnet.models.hspnet.modeling_label_graph import process_relation
        from hspnet.models.hspnet.modeling_prompts import clip_text_embeddings, encode_prompt_embeddings

        base = hspnet_base_model(model)
        config = base.config
        self.text_model = base.clip.text_model
        self.text_projection = base.clip.text_projection
        self.gcn = base.gcn
        self.n_ctx = config.n_ctx
        self.keep_ratio, self.reweight_p = float(config.relation_keep_ratio), float(config.relation_reweight_p)
        self.eos_token_id = int(config.clip_config.text_config.eos_token_id)
        groups = list(config.group_names)
        prompt_config = SimpleNamespace(clip_config=config.clip_config, group_names=groups, n_ctx=config.n_ctx,
                                        group_prompt_template=config.group_prompt_template, ctx_init=config.ctx_init,
                                        label_names=label_names(config))
        with torch.no_grad():
            prompts = prompt_embeddings(prompt_config, tokenizer, self.text_model.embeddings.token_embedding,
                                        torch.float32)
            group_features = encode_prompt_embeddings(base.clip, prompts.group_embeds, prompts.group_eos)
            group_names = F.normalize(clip_text_embeddings(base.clip, tokenizer, [prompt_name(g) for g in groups]),
                                      dim=-1)
            group_adjacency = process_relation(group_names @ group_names.T, self.keep_ratio, self.reweight_p)
            context = base.meta_net(base.gcn(group_features, group_adjacency))
        self.register_buffer("context", context.reshape(len(groups), config.n_ctx, config.text_width).clone())
        self.register_buffer("group_name_embeds", group_names.clone())

    def eos_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`(N,)` each row's EOS position: the first end-of-text token (legacy configs, `eos_token_id == 2`: the
        first largest id), as `modeling_from_clip` and CLIP's text model find it."""
        if self.eos_token_id == 2:
            return token_ids.float().argmax(dim=1)
        return (token_ids == self.eos_token_id).float().argmax(dim=1)

    def encode(self, embeds: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The text tower on token embeddings `(N, L, W)` -> projected EOS features `(N, D)` (not normalised)."""
        from hspnet.models.hspnet.modeling_prompts import encode_prompt_embeddings

        return encode_prompt_embeddings(self, embeds, self.eos_positions(token_ids), truncate=False)

    def forward(self, label_token_ids: torch.Tensor, name_token_ids: torch.Tensor,
                label_to_group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`label_token_ids` `(C', Lp)`, `name_token_ids` `(C', Ln)`, `label_to_group` `(C',)` (-1: nearest) ->
        `(label_embeds (C', D), label_groups (C',), group_similarity (C', G))`."""
        token_embedding = self.text_model.embeddings.token_embedding
        names = F.normalize(self.encode(token_embedding(name_token_ids), name_token_ids), dim=-1)
        group_similarity = names @ self.group_name_embeds.T
        groups = torch.where(label_to_group >= 0, label_to_group, group_similarity.argmax(dim=1))
        adjacency = graph_adjacency(names @ names.T, self.keep_ratio, self.reweight_p)
        embeds = token_embedding(label_token_ids)
        prompts = torch.cat([embeds[:, :1], self.context[groups], embeds[:, 1 + self.n_ctx:]], dim=1)
        features = self.gcn(self.encode(prompts, label_token_ids), adjacency)
        return F.normalize(features, dim=-1), groups, group_similarity


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer, the metadata, the export check
# ---------------------------------------------------------------------------------------------------------------------


def label_encoder_tokenizer(model: nn.Module, tokenizer: Any = None) -> Any:
    """The tokenizer the label encoder is exported with (`tokenizer`, else `model.tokenizer`), checked: a
    one-line `ValueError` when there is none, when it is not a fast (`tokenizers`) tokenizer, or when the model has
    no token embedding table (a converted checkpoint)."""
    base = hspnet_base_model(model)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) or getattr(base, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("label_encoder: this model has no tokenizer (model.tokenizer is None: its folder was saved "
                         "without one); pass tokenizer=, the tokenizer of the CLIP it was built on")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(f"label_encoder: the tokenizer must be a fast (tokenizers) one, got "
                         f"{type(tokenizer).__name__}")
    if base.clip.text_model.embeddings.token_embedding.num_embeddings == 0:
        raise ValueError("label_encoder: this model has no token embedding table (converted from a checkpoint that "
                         "stores its prompts as embeddings); re-convert it with the original CLIP weights")
    return tokenizer


def label_encoder_metadata(model: nn.Module, tokenizer: Any) -> tuple[dict, str]:
    """`(document, tokenizer_json)`: the label encoder's `metadata_props` (the JSON document under `"hspnet"`, and
    the tokenizer under `"hspnet.tokenizer"`): everything a caller without hspnet needs to make the inputs."""
    import hspnet

    base = hspnet_base_model(model)
    config = base.config
    text_config = config.clip_config.text_config
    groups, dim = list(config.group_names), int(config.projection_dim)
    eos = int(text_config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = config.ctx_init.replace("{", "{{").replace("}", "}}")
    document = {
        "format": LABELS_FORMAT_NAME,
        "format_version": LABELS_FORMAT_VERSION,
        "inputs": {
            "label_token_ids": {"shape": ["labels", "prompt_length"], "dtype": "int64",
                                "text": "label_prompt_template.format(name)"},
            "name_token_ids": {"shape": ["labels", "name_length"], "dtype": "int64",
                               "text": "name_template.format(name)"},
            "label_to_group": {"shape": ["labels"], "dtype": "int64",
                               "values": f"a group index 0..{len(groups) - 1}, or {NEAREST}: the nearest group"},
        },
        "outputs": {
            "label_embeds": {"shape": ["labels", dim], "dtype": "float32", "meaning": "L2-normalised label "
                             "embeddings: logits = logit_scale * image_embeds @ label_embeds.T"},
            "label_groups": {"shape": ["labels"], "dtype": "int64", "meaning": "each label's group (the nearest "
                             f"where label_to_group is {NEAREST})"},
            "group_similarity": {"shape": ["labels", len(groups)], "dtype": "float32", "meaning": "cosine of the "
                                 "CLIP text embeddings of each label name and each group name"},
        },
        "label_prompt_template": f"{ctx} {{}}.",
        "name_template": "{}",
        "names": "underscores in a label name are read as spaces, then the name fills both templates",
        "tokenization": f"the model's CLIP tokenizer (metadata_props[{TOKENIZER_KEY!r}], a tokenizer.json for the "
                        "tokenizers library) with its start and end tokens, no truncation (at most max_length "
                        "tokens); rows padded to the longest with pad_token_id",
        "max_length": int(text_config.max_position_embeddings),
        "pad_token_id": int(pad),
        "eos_token_id": eos,
        "eos_rule": "the position of the largest id in each row" if eos == 2 else
                    "the first position of eos_token_id in each row",
        "tokenizer_class": type(tokenizer).__name__,
        "groups": groups,
        "labels": label_names(config),
        "label_to_group": [int(g) for g in config.label_to_group],
        "group_rule": "label_to_group: the group given; else, for one of labels, its group in label_to_group; else "
                      f"{NEAREST}: argmax of group_similarity (model.set_labels' rule)",
        "relation_keep_ratio": float(config.relation_keep_ratio),
        "relation_reweight_p": float(config.relation_reweight_p),
        "n_ctx": int(config.n_ctx),
        "embedding_dim": dim,
        "logit_scale": float(config.logit_scale),
        "scores": "sigmoid(logit_scale * image_embeds @ label_embeds.T), image_embeds: the image model's output",
        "source_model": getattr(config, "_name_or_path", None) or None,
        "hspnet_version": hspnet.__version__,
        "torch_version": torch.__version__,
    }
    from tokenizers import Tokenizer

    stored = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    stored.no_padding()  # a tokenizer that was called with padding=... keeps it in its state
    stored.no_truncation()
    return document, stored.to_str()


def example_inputs(document: dict, tokenizer_json: str, model: nn.Module) -> tuple[torch.Tensor, ...]:
    """The export's example inputs: the first labels of the model (at least 2) with their groups, and a nearest."""
    from hspnet.apps.onnx_inference import LabelTokenizer

    labels = label_names(hspnet_base_model(model).config)
    names = labels[:3] + _new_names(labels, 1)
    feed, _ = LabelTokenizer(document, tokenizer_json).inputs(names, what="export_onnx")
    return tuple(torch.from_numpy(feed[name]) for name in LABEL_INPUTS)


def dynamic_axes() -> dict[str, dict[int, tuple[str, int, int | None]]]:
    """The dynamic axes of the inputs: `(name, min, max)`."""
    return {"label_token_ids": {0: ("labels", 1, None), 1: ("prompt_length", 2, 77)},
            "name_token_ids": {0: ("labels", 1, None), 1: ("name_length", 2, 77)},
            "label_to_group": {0: ("labels", 1, None)}}


def _new_names(labels: list[str], count: int) -> list[str]:
    """`count` names that are not labels of the model."""
    taken, names, index = set(labels), [], 0
    while len(names) < count:
        name = ("photo", "thing", "object")[index] if index < 3 else f"thing {index}"
        if name not in taken:
            names.append(name)
        index += 1
    return names


def check_label_encoder(data: bytes, model: nn.Module, tokenizer: Any, atol: float) -> tuple[float, str | None]:
    """Run the exported label encoder (`data`) with onnxruntime on label sets with new names (nearest and given
    groups) and some of the model's labels (kept groups), and compare with `model.embed_labels` (PyTorch, the model
    unchanged): `(max |label embedding difference|, None)`, or a problem found (a tokenization or a group that
    differs, or a difference above `atol`)."""
    from hspnet.apps.onnx_inference import ONNXLabelEncoder

    encoder = ONNXLabelEncoder(data)
    config = hspnet_base_model(model).config
    labels, groups = label_names(config), list(config.group_names)
    new = _new_names(labels, 2)
    checks = [(labels[:MAX_CHECKED_LABELS][::-1] + new[:1], None), ([new[1], labels[0]], {new[1]: groups[-1]})]
    max_diff = 0.0
    for names, given in checks:
        for texts in encoder.tokenizer.texts(names):
            if [e.ids for e in encoder.tokenizer.tokenizer.encode_batch(texts)] != tokenizer(texts)["input_ids"]:
                return max_diff, "the tokenizer stored in the label encoder does not give the model tokenizer's ids"
        result = encoder(names, given)
        with torch.no_grad():
            reference, plan = model.embed_labels(names, given, tokenizer=tokenizer)
        if result.label_to_group != plan.label_to_group:
            return max_diff, (f"onnxruntime puts the labels {names} in the groups {result.label_to_group}, the PyTorch "
                              f"model in {plan.label_to_group}")
        max_diff = max(max_diff, float((torch.from_numpy(result.label_embeds) - reference.float()).abs().max()))
    if not max_diff <= atol:
        return max_diff, f"onnxruntime's label embeddings differ from the PyTorch model's by {max_diff:.3g} (> atol " \
            f"{atol:g})"
    return max_diff, None


__all__ = [
    "HSPNetOnnxLabelEncoder",
    "LABELS_FORMAT_VERSION",
    "check_label_encoder",
    "dynamic_axes",
    "example_inputs",
    "graph_adjacency",
    "label_encoder_metadata",
    "label_encoder_path",
    "label_encoder_tokenizer",
]
