"""Model cards: one builder for every tool that publishes a model folder (training, conversion).

:func:`card_metadata`, :func:`model_index`, :func:`render_card`: the YAML metadata block of a card (written with
``yaml.safe_dump`` and checked to load back to the same mapping) and its ``model-index`` results; :func:`model_card`:
the card of a trained model (final, or "training in progress").
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from hspnet.models.loading import label_names

HSPNET_TAGS = ["hspnet", "clip", "multi-label-classification", "single-positive-multi-label", "image-classification"]

DATASET_TITLES = {
    "coco": ("coco", "MS-COCO 2014"),
    "voc": ("pascal_voc", "PASCAL VOC 2012"),
    "nuswide": ("nus-wide", "NUS-WIDE"),
    "cub": ("cub-200-2011", "CUB-200-2011 (attributes)"),
    "demo": ("demo", "hspnet demo (coloured shapes)"),
}
"""The built-in datasets by the name their loader records: ``(model-index dataset type, title)``."""


def card_metadata(*, tags: Iterable[str] = HSPNET_TAGS, license: str | None = None, datasets: list[str] | None = None,
                  base_model: str | None = None, metrics: list[str] | None = None,
                  model_index: list[dict] | None = None, library_name: str = "transformers",
                  pipeline_tag: str = "image-classification", **extra: Any) -> dict:
    """The metadata mapping of a model card, in the Hub's usual key order; empty values are left out."""
    metadata: dict[str, Any] = {"library_name": library_name, "pipeline_tag": pipeline_tag, "tags": list(tags)}
    for key, value in (("license", license), ("datasets", datasets), ("base_model", base_model),
                       ("metrics", metrics), ("model-index", model_index)):
        if value:
            metadata[key] = value
    metadata.update({key: value for key, value in extra.items() if value is not None})
    return metadata


def model_index(name: str, *, dataset_type: str, dataset_name: str, metrics: list[dict],
                task_type: str = "image-classification", task_name: str = "Multi-label image classification",
                dataset_split: str | None = None) -> list[dict]:
    """A one-result ``model-index`` list. `metrics`: ``[{"type": ..., "value": ..., "name": ...}, ...]``."""
    dataset = {"type": dataset_type, "name": dataset_name}
    if dataset_split:
        dataset["split"] = dataset_split
    return [{"name": name, "results": [{"task": {"type": task_type, "name": task_name}, "dataset": dataset,
                                        "metrics": [dict(metric) for metric in metrics]}]}]


def render_card(metadata: dict, body: str) -> str:
    """``---\\n<YAML>\\n---\\n\\n<body>``. The YAML is written by ``yaml.safe_dump`` and must load back to the same
    mapping (a value YAML cannot represent faithfully raises ``ValueError`` instead of publishing a broken card)."""
    import yaml

    plain = json.loads(json.dumps(metadata))  # tuples -> lists, keys -> strings: what YAML gives back
    text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=10_000).strip()
    if yaml.safe_load(text) != plain:
        raise ValueError("model card metadata does not survive a YAML round trip")
    return f"---\n{text}\n---\n\n{body.lstrip()}"


def model_card(config, *, dataset: str, metrics: dict | None, recipe: dict, repo_id: str | None = None,
               base_model: str | None = None, license: str | None = None, progress: dict | None = None,
               dataset_name: str | None = None, model_name: str | None = None) -> str:
    """README.md for a model trained with `scripts/train.py`: YAML metadata (library, tags, datasets, a model-index
    with the test metrics), the hierarchy, the recipe and usage snippets.

    `dataset` is the `--dataset` option as given (a name, or a prepared dataset's folder); `dataset_name` the name
    the dataset records itself ("demo", "coco", ..., or the folder of images of your own), which the model-index
    names (with its title for the built-in ones: "PASCAL VOC 2012"); the model-index entry is named after `repo_id`,
    else `model_name` (the output folder's name).

    `progress` (``epoch``, ``epochs``, ``step``, ``total_steps``, ``best_metric``, ``best_epoch``,
    ``selection_split``) makes it the card pushed while training runs: it says so at the top, gives the best
    selection metric so far, and has no model-index (the test metrics exist only at the end)."""
    name = repo_id or "path/to/this/folder"
    real_name = dataset_name or (os.path.basename(os.path.normpath(dataset)) if dataset else "")
    dataset_type, dataset_title = DATASET_TITLES.get(real_name, (real_name, real_name))
    index = None
    if metrics and progress is None:
        index_name = (repo_id or model_name or "hspnet").rstrip("/").split("/")[-1]
        index = model_index(index_name, dataset_type=dataset_type, dataset_name=dataset_title, metrics=[
            {"type": key, "value": round(float(value), 4), "name": key}
            for key, value in metrics.items() if key in ("mAP", "mAP_tie_aware", "CF1", "OF1", "mean_class_F1")
        ])
    metadata = card_metadata(
        license=license,
        datasets=[dataset] if dataset and not os.path.isdir(dataset) and dataset != "folder" else None,  # a name
        base_model=base_model,
        metrics=["mAP"] if index else None,
        model_index=index,
    )
    groups: dict[str, list[str]] = {g: [] for g in config.group_names}
    for label, group in zip(label_names(config), config.label_to_group):
        groups[config.group_names[group]].append(label)
    hierarchy = "\n".join(f"- **{group}**: {', '.join(labels)}" for group, labels in groups.items())
    recipe_lines = "\n".join(f"| {key} | {value} |" for key, value in recipe.items())
    status = ""
    if progress is not None:
        best = ("no model evaluated yet" if progress.get("best_epoch", -1) < 0 else
                f"best {progress.get('selection_split', 'validation')} mAP so far **{progress['best_metric']:.2f}** "
                f"(epoch {progress['best_epoch']}); the weights here are that model")
        status = (f"\n> **Training in progress**: epoch {progress['epoch']} of {progress['epochs']}, step "
                  f"{progress['step']} of {progress['total_steps']}; {best}. This card is replaced by the final one, "
                  "with the test metrics, when training ends.\n")
    results = ""
    if metrics and progress is None:
        results = "\n## Results\n\n| metric | value |\n|---|---:|\n" + "\n".join(
            f"| {key} | {float(value):.2f} |" for key, value in metrics.items() if key != "num_samples"
        ) + "\n"
    body = f"""# HSPNet multi-label classifier ({config.num_labels} labels, {config.num_groups} groups)
{status}
HSPNet (Wang et al., *Hierarchical Prompt Learning Using CLIP for Multi-label Classification with Single Positive
Labels*, ACM MM 2023) trained with the `hspnet` library on {dataset_title} (`{dataset}`) from single positive labels.
Base CLIP: `{base_model or 'see config'}`.

## Usage

```python
import hspnet  # or pass trust_remote_code=True below
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

image = Image.open("image.jpg")
processor = AutoImageProcessor.from_pretrained("{name}")
model = AutoModelForImageClassification.from_pretrained("{name}", trust_remote_code=True)
probabilities = model(**processor(images=image, return_tensors="pt")).logits.sigmoid()  # (1, {config.num_labels})

base = AutoModel.from_pretrained("{name}", trust_remote_code=True)  # logits, image and label embeddings
outputs = base(**processor(images=image, return_tensors="pt"))

classifier = pipeline("image-classification", model="{name}", trust_remote_code=True)
classifier("image.jpg", top_k={config.num_labels})  # a sigmoid score for every label
```
{results}
## Label hierarchy

{hierarchy}

## Training recipe

| option | value |
|---|---|
{recipe_lines}
"""
    return render_card(metadata, body)


RECIPE_OPTIONS = ("clip_model", "dataset", "protocol", "epochs", "schedule_epochs", "batch_size", "lr", "gcn_lr",
                  "weight_decay", "pct_start", "ema", "ema_keep_per_epoch", "loss", "loss_kwargs", "seed")
"""The options of a training run shown in its card's recipe table."""


def training_card(model_config, options, *, metrics: dict | None = None, progress: dict | None = None,
                  world_size: int = 1, mixed_precision: str = "no", dataset_name: str | None = None,
                  model_name: str | None = None) -> str:
    """:func:`model_card` for a model trained by `hspnet train` with the options `options` (a `TrainingConfig`):
    the recipe table (:data:`RECIPE_OPTIONS`, the number of processes and the mixed precision in use), the base CLIP
    (none when fine-tuning an HSPNet model), the Hub repository and license of the options."""
    recipe = {name: getattr(options, name) for name in RECIPE_OPTIONS}
    recipe.update(world_size=world_size, mixed_precision=mixed_precision)
    return model_card(model_config, dataset=options.dataset, metrics=metrics, recipe=recipe,
                      repo_id=options.hub_model_id, license=options.license, progress=progress,
                      base_model=None if options.model_name_or_path else options.clip_model,
                      dataset_name=dataset_name, model_name=model_name)
