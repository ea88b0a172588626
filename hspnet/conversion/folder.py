# Copyright 2026 The hspnet authors. Licensed under the Apache License, Version 2.0.
"""A converted checkpoint as a Hugging Face folder: the model card, the files, and :func:`run_conversion`, the end to
end step behind ``hspnet convert`` (read -> map -> optionally verify -> save).

The card is built by :mod:`hspnet.hub` (the one card builder of the package, also used by training): YAML metadata
written by a YAML library, with a ``model-index`` holding the authors' published mAP.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hspnet.conversion.official import (
    AUTHORS_REPO,
    PAPER_URL,
    PUBLISHED_CHECKPOINTS,
    RELEASE_URL,
    ConversionReport,
    convert_official_state_dict,
    infer_official_architecture,
    load_official_checkpoint,
    resolve_hierarchy,
)
from hspnet.conversion.verify import verify_conversion
from hspnet.models.hspnet.configuration_hspnet import HSPNetConfig
from hspnet.models.hspnet.modeling_hspnet import HSPNetForImageClassification
from hspnet.models.openai_clip import ConversionError
from hspnet.utils.errors import FileFormatError
from hspnet.utils.files import (
    give_default_mode,
    new_file_mode,
    parse_json_text,
    read_text_file,
    write_json,
    write_text,
)

__all__ = ["converted_model_card", "find_relation_file", "read_hierarchy_file", "run_conversion",
           "save_converted_model", "sha256_of"]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_model_card(
    config: HSPNetConfig,
    dataset: str | None,
    checkpoint_name: str,
    checkpoint_sha256: str | None = None,
    relation_name: str | None = None,
    report: ConversionReport | None = None,
    verify: dict[str, float] | None = None,
    model_path: str = "PATH/TO/THIS/FOLDER",
) -> str:
    """README.md for a converted checkpoint: YAML metadata (through :mod:`hspnet.hub`, the one card builder; a
    ``model-index`` with the authors' published mAP), credit to the authors, source checkpoint and its published mAP,
    how it was converted and how to use it."""
    # imported here: `import hspnet` imports this package (for OpenAI CLIP files), and the Hub module is not needed then
    from hspnet.hub.cards import card_metadata, model_index, render_card

    info = PUBLISHED_CHECKPOINTS.get(dataset or "", {})
    published = info.get("map")
    title = info.get("title", dataset or "custom")
    index = None
    if published is not None:
        index = model_index(
            f"HSPNet ({title}, CLIP RN50)", dataset_type=info["hub_dataset"], dataset_name=title,
            task_name="Multi-label image classification (single positive labels)",
            metrics=[{"type": "mAP", "value": published,
                      "name": "mAP (published by the authors, not re-measured here)"}],
        )
    metadata = card_metadata(datasets=[info["hub_dataset"]] if info else None, metrics=["mAP"], model_index=index)
    card = ""
    card += f"# HSPNet on {title} (CLIP RN50), converted from the authors' checkpoint\n\n"
    card += (
        "HSPNet is the method of **Ao Wang, Hui Chen, Zijia Lin, Zixuan Ding, Pengzhang Liu, Yongjun Bao, Weipeng Yan "
        "and Guiguang Ding**, *Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single "
        f"Positive Labels*, ACM Multimedia 2023 ([paper]({PAPER_URL}), [code]({AUTHORS_REPO})). The weights in this "
        "folder are the authors' trained weights; all credit for them goes to the authors. This folder only "
        "re-packages them for the Hugging Face stack (the `hspnet` package); it was not retrained.\n\n"
    )
    card += "## Source\n\n"
    card += f"- Checkpoint: `{checkpoint_name}`"
    if info and checkpoint_name == info["checkpoint"] and info.get("released", True):  # the CUB link is empty upstream
        card += f" ({RELEASE_URL.format(checkpoint=checkpoint_name)})"
    card += "\n"
    if checkpoint_sha256:
        card += f"- SHA-256 of the checkpoint file: `{checkpoint_sha256}`\n"
    if published is not None:
        card += f"- Published result: **{published} mAP** on the {title} test set (authors' README / paper)\n"
    if relation_name:
        card += f"- Label/group relation matrix: `{relation_name}` (the authors' file; stored in the weights)\n"
    card += (
        f"- Labels: {config.num_labels}, groups: {config.num_groups}; backbone CLIP RN50 "
        f"(image {config.image_size}x{config.image_size}, embedding {config.projection_dim})\n\n"
    )
    card += "## Conversion\n\n"
    card += (
        "Converted with `scripts/convert_official_checkpoint.py` of the `hspnet` package. Every tensor of the "
        "checkpoint is mapped (image encoder, text encoder, meta-net, GCN, stored prompt embeddings); the unused "
        "parent context vector and the parent prompt pieces that duplicate the stored parent prompts are dropped. The "
        "prompts' EOS positions are derived from the stored prompt embeddings. "
    )
    if report is not None:
        card += f"Token embedding table: {report.token_table}. "
    if verify:
        card += (
            f"A direct re-implementation of the official forward on the checkpoint's tensors agrees with this model to "
            f"{verify['float32']:.2e} (largest absolute logit difference, float32 model vs float64 reference, on random "
            "inputs)."
        )
    card += "\n\nPreprocessing (saved as the image processor): resize the shorter side to 224 (bicubic), centre crop "
    card += "224, CLIP mean/std, as in the authors' evaluation.\n\n"
    card += "## Use\n\n```python\nfrom transformers import AutoModelForImageClassification, pipeline\n\n"
    card += (
        f'model = AutoModelForImageClassification.from_pretrained("{model_path}", trust_remote_code=True)\n'
        f'classifier = pipeline("image-classification", model="{model_path}", trust_remote_code=True)\n'
        f"classifier(\"image.jpg\", top_k={config.num_labels})  # sigmoid score per label\n```\n\n"
    )
    card += "## Citation\n\n```bibtex\n"
    card += (
        "@inproceedings{wang2023hierarchical,\n"
        "  title={Hierarchical prompt learning using clip for multi-label classification with single positive labels},\n"
        "  author={Wang, Ao and Chen, Hui and Lin, Zijia and Ding, Zixuan and Liu, Pengzhang and Bao, Yongjun and Yan, "
        "Weipeng and Ding, Guiguang},\n"
        "  booktitle={Proceedings of the 31st ACM International Conference on Multimedia},\n"
        "  pages={5594--5604},\n"
        "  year={2023}\n}\n```\n"
    )
    return render_card(metadata, card)


def save_converted_model(
    model: HSPNetForImageClassification,
    output_dir: str | os.PathLike,
    card: str,
    report: ConversionReport | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the HF folder: config, safetensors, remote code, image processor (`save_pretrained`), the model card as
    README.md and `conversion.json` (architecture, derived EOS positions, dropped keys, checks)."""
    output_dir = os.fspath(output_dir)
    model.save_pretrained(output_dir)
    weights = [os.path.join(output_dir, name) for name in os.listdir(output_dir) if name.endswith(".safetensors")]
    give_default_mode(weights, new_file_mode(output_dir))  # save_pretrained writes them 0600; the user's umask instead
    write_text(os.path.join(output_dir, "README.md"), card)
    if report is not None:
        record = {
            "architecture": report.architecture,
            "group_eos_positions": report.group_eos_positions.tolist(),
            "label_eos_positions": report.label_eos_positions.tolist(),
            "mapped_keys": report.mapped_keys,
            "dropped_keys": report.dropped_keys,
            "notes": report.notes,
            "token_table": report.token_table,
            **(extra or {}),
        }
        write_json(os.path.join(output_dir, "conversion.json"), record, indent=1)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# End to end (the command-line script is a thin wrapper around this)
# ---------------------------------------------------------------------------------------------------------------------


def find_relation_file(dataset: str | None, checkpoint: str | os.PathLike) -> str | None:
    """The authors' relation file of `dataset` (e.g. `relation+super+rn50.npy` for COCO) beside the checkpoint or in
    the current folder, if present."""
    info = PUBLISHED_CHECKPOINTS.get(dataset or "")
    if not info:
        return None
    for folder in (os.path.dirname(os.path.abspath(os.fspath(checkpoint))), os.getcwd()):
        candidate = os.path.join(folder, info["relation"])
        if os.path.isfile(candidate):
            return candidate
    return None


def read_hierarchy_file(path: str | os.PathLike) -> dict[str, list]:
    """The ``--hierarchy`` JSON file: ``{"labels": [...], "groups": [...], "label_to_group": [...]}``, the labels in
    the checkpoint's prompt order. Malformed JSON, a key twice, a missing key or a value of the wrong type or out of
    range raise :class:`~hspnet.utils.errors.FileFormatError` naming the file, the line (and column) and the field."""
    path = os.fspath(path)
    text = read_text_file(path, "hierarchy file")
    data = parse_json_text(text, path)

    def fail(reason: str, key: str | None = None):
        found = text.find(f'"{key}"') if key else -1
        line = text.count("\n", 0, found) + 1 if found >= 0 else None
        raise FileFormatError(reason, file=path, line=line, field=key)

    keys = ("labels", "groups", "label_to_group")
    if not isinstance(data, dict):
        fail(f"expected a JSON object with the keys {', '.join(map(repr, keys))}, got a {type(data).__name__}")
    for key in keys:
        if key not in data:
            fail(f"the key {key!r} is missing (a hierarchy file holds {', '.join(map(repr, keys))})")
        if not isinstance(data[key], list) or not data[key]:
            fail(f"expected a non-empty list, got {data[key]!r:.80}", key)
    for key in ("labels", "groups"):
        bad = [name for name in data[key] if not isinstance(name, str) or not name.strip()]
        if bad:
            fail(f"every entry must be a non-empty name (a string), got {bad[0]!r}", key)
    groups = len(data["groups"])
    for index, group in enumerate(data["label_to_group"]):
        if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < groups:
            fail(f"entry {index} is {group!r}, not a group index in 0..{groups - 1}", "label_to_group")
    if len(data["label_to_group"]) != len(data["labels"]):
        fail(f"has {len(data['label_to_group'])} entries but there are {len(data['labels'])} labels (one group index "
             "per label)", "label_to_group")
    return {key: list(data[key]) for key in keys}


def run_conversion(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    dataset: str | None = None,
    relation: Any = None,
    hierarchy: Any = None,
    clip_weights: Any = None,
    verify: bool = False,
    verify_images: int = 2,
    overwrite: bool = False,
    log=print,
) -> dict[str, Any]:
    """Convert an official checkpoint file into a complete HF folder (what `scripts/convert_official_checkpoint.py`
    does). Returns a summary: output folder, dataset, architecture, derived EOS positions and, with `verify`, the
    largest logit differences against `official_logits`."""
    checkpoint = os.fspath(checkpoint)
    output_dir = os.fspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    if isinstance(hierarchy, (str, os.PathLike)):  # before the (large) checkpoint is read
        hierarchy = read_hierarchy_file(hierarchy)
    log(f"Reading {checkpoint} with torch.load(weights_only=True) ...")
    state = load_official_checkpoint(checkpoint)
    arch = infer_official_architecture(state)
    if hierarchy is None and dataset is None:
        dataset = resolve_hierarchy(None, None, arch["num_labels"])[0]
        log(f"Dataset inferred from the {arch['num_labels']} label prompts: {dataset}")
    if dataset is not None and hierarchy is None:
        expected = PUBLISHED_CHECKPOINTS[dataset]["num_labels"]
        if expected != arch["num_labels"]:
            raise ConversionError(
                f"The checkpoint has {arch['num_labels']} label prompts but {dataset} has {expected} labels: "
                "is it the checkpoint of another dataset?"
            )
    if relation is None:
        relation = find_relation_file(dataset, checkpoint)
        if relation is None:
            name = PUBLISHED_CHECKPOINTS.get(dataset or "", {}).get("relation", "relation+*.npy")
            raise ConversionError(
                f"Pass the authors' relation file ({name}, from {AUTHORS_REPO}); it is not part of the checkpoint and "
                "was not found beside it or in the current folder."
            )
    relation_name = os.path.basename(os.fspath(relation)) if isinstance(relation, (str, os.PathLike)) else None
    log(f"Relation: {relation_name or 'given array'}; CLIP weights for the token table: {clip_weights or 'none'}")
    model, report = convert_official_state_dict(state, relation, dataset=dataset, hierarchy=hierarchy,
                                                clip_weights=clip_weights)
    log(f"Mapped {report.mapped_keys} tensors; dropped {sorted(report.dropped_keys)}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    for note in report.notes:
        log("Note: " + note)
    results = None
    if verify:
        log(f"Verifying against a direct re-implementation of the official forward ({verify_images} random images) ...")
        results = verify_conversion(model, state, relation, report, num_images=verify_images)
        log(f"Largest |logit difference|: {results['float32']:.3e} (converted float32 model vs float64 reference), "
            f"{results.get('float64', float('nan')):.3e} (float64 copy of the model); largest |logit| "
            f"{results['max_abs_logit']:.3f}")
    card = converted_model_card(model.config, report.architecture.get("dataset"), os.path.basename(checkpoint),
                      checkpoint_sha256=sha256_of(checkpoint), relation_name=relation_name, report=report,
                      verify=results, model_path=output_dir)
    save_converted_model(model, output_dir, card, report,
                         extra={"source_checkpoint": os.path.basename(checkpoint), "relation": relation_name,
                                "verify": results})
    log(f"Wrote {output_dir}: load it with AutoModelForImageClassification.from_pretrained({output_dir!r}, "
        "trust_remote_code=True)")
    return {"output_dir": output_dir, "dataset": report.architecture.get("dataset"), "report": report,
            "verify": results, "model": model}
