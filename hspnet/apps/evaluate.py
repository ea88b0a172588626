"""Evaluating a trained model on a prepared dataset split, next to the zero-shot CLIP baseline: importable, tested
functions behind `hspnet evaluate` / `scripts/evaluate.py`.

- :func:`load_eval_split`: any dataset the package prepares (demo, coco, voc, nuswide, cub, folder, or a folder
  written by ``save_prepared_dataset`` / ``datasets_scripts``), one split, optionally truncated;
- the model is loaded by :func:`hspnet.models.loading.load_model` and evaluated by
  :func:`hspnet.data.batches.eval_dataloader` + :func:`hspnet.evaluation.loop.evaluate_model`, the loader and loop of
  training: images are read as ``hspnet predict`` reads them (:func:`hspnet.data.batches.read_dataset_image`: EXIF
  orientation, 16-bit and float images scaled to 8 bits, full decode, decompression bombs refused), so an image gets
  the same scores from both, and an unreadable one is named;
- the zero-shot CLIP baseline (:mod:`hspnet.evaluation.zero_shot`): by default the ``clip_model`` recorded in the
  ``training_args.json`` that training writes beside the model;
- the report (:mod:`hspnet.evaluation.report`): ``per_class_ap.csv`` / ``.md``, the metrics table, ``report.png``;
- :func:`run_evaluation`: the whole run (accelerate: several processes under ``accelerate launch``, each image
  counted once); the command line is `hspnet.cli.evaluate`. Every output file is written atomically (complete or not at all,
  an earlier one left intact on failure) and never replaces an input (a model, CLIP or dataset file).

Every metric is :func:`hspnet.evaluation.metrics.compute_all_metrics` on the logits (``from_logits=True``): mAP in both
definitions, CP CR CF1 mean_class_F1 OP OR OF1 at ``sigmoid(logit) > threshold`` and the same for the top-k labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from typing import Any

import torch

from hspnet.data.batches import eval_dataloader, label_permutation
from hspnet.evaluation.loop import evaluate_model
from hspnet.evaluation.report import (
    _import_pyplot,
    _per_class_text,
    format_metrics_table,
    per_class_table,
    per_class_table_text,
    report_png,
)
from hspnet.evaluation.zero_shot import (
    ZERO_SHOT_NOTE,
    ZERO_SHOT_TEMPLATE,
    ZeroShotCLIPClassifier,
    _text_tower_matches,
    check_zero_shot_template,
    load_zero_shot_clip,
    resolve_zero_shot_clip,
)
from hspnet.models.loading import label_names, load_model
from hspnet.utils.errors import one_line
from hspnet.utils.files import refuse_inputs_as_output, write_output
from hspnet.utils.tiny_clip import TINY_RANDOM
from hspnet.utils.validation import check_positive_int, check_probability

logger = logging.getLogger("hspnet.evaluate")

OUTPUT_FILES = ("metrics.json", "per_class_ap.csv", "per_class_ap.md", "report.png")


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_eval_split(dataset: str, split: str = "test", dataset_root: str | None = None,
                    dataset_options: dict | None = None, cache_dir: str | None = None, max_samples: int | None = None):
    """``(split_dataset, hierarchy)``: one split of a prepared dataset.

    ``dataset``: a name for :func:`hspnet.data.prepare_dataset` (``demo``, ``coco``, ``voc``, ``nuswide``, ``cub``,
    ``folder``; ``dataset_root`` and ``dataset_options`` go to its loader) or a folder written by
    ``save_prepared_dataset``. Raises ``ValueError`` naming the available splits when ``split`` does not exist.
    """
    _, data, hierarchy = _open_eval_split(dataset, split, dataset_root, dataset_options, cache_dir, max_samples)
    return data, hierarchy


def _open_eval_split(dataset, split, dataset_root, dataset_options, cache_dir, max_samples):
    """:func:`load_eval_split`, and the whole ``DatasetDict`` (whose image files are inputs never to overwrite)."""
    from hspnet.data import get_hierarchy, open_dataset

    if not isinstance(dataset, (str, os.PathLike)) or not os.fspath(dataset):
        raise ValueError(f"dataset must be a dataset name or a prepared dataset folder, got {dataset!r}")
    dataset = os.fspath(dataset)
    datasets = open_dataset(dataset, dataset_root, dataset_options, cache_dir)
    if split not in datasets:
        raise ValueError(f"dataset {dataset!r} has no split {split!r}; its splits are: {', '.join(datasets)}")
    data = datasets[split]
    for column in ("image", "labels"):
        if column not in data.column_names:
            raise ValueError(
                f"split {split!r} of dataset {dataset!r} has no {column!r} column (columns: {data.column_names})"
            )
    if max_samples is not None:
        max_samples = check_positive_int(max_samples, "max_samples")
        data = data.select(range(min(max_samples, len(data))))
    if len(data) == 0:
        raise ValueError(f"split {split!r} of dataset {dataset!r} is empty")
    return datasets, data, get_hierarchy(datasets)


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot CLIP
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def _evaluate(model, data, image_processor, permutation, num_labels, accelerator, batch_size, num_workers,
              description, threshold, top_k):
    """``(metrics, scores, targets)`` of ``model`` on ``data``: :func:`hspnet.data.batches.eval_dataloader` and
    :func:`hspnet.evaluation.loop.evaluate_model`, as training evaluates."""
    loader = accelerator.prepare(eval_dataloader(data, image_processor, num_labels, batch_size, permutation,
                                                 num_workers))
    model.to(accelerator.device)
    metrics, accumulator = evaluate_model(model, loader, accelerator, num_labels, description, threshold, top_k)
    return metrics, accumulator.scores, accumulator.targets


def _image_files(datasets) -> list[str]:
    """The local image files of every split (the ``path`` of undecoded image values without embedded bytes): inputs
    that an output must never replace. Best effort: an unusual layout gives fewer paths, never an error."""
    paths: list[str] = []
    for split in datasets.values() if hasattr(datasets, "values") else [datasets]:
        try:
            column = split.data.column("image")
            for chunk in column.chunks:
                if hasattr(chunk, "field"):
                    names, blobs = chunk.field("path").to_pylist(), chunk.field("bytes").is_null().to_pylist()
                    paths.extend(p for p, no_bytes in zip(names, blobs) if p and no_bytes)
                else:
                    paths.extend(p for p in chunk.to_pylist() if isinstance(p, str))
        except Exception:  # noqa: BLE001 (no image column, another type)
            continue
    return paths


def _check_output_dir(output_dir: str) -> None:
    """Fail before any work when ``--output_dir`` cannot be a folder: an existing file, or a path below a file."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"{output_dir}: --output_dir exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(output_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{output_dir}: cannot create --output_dir there, {parent} is not a folder")


def _check_evaluation_args(args: argparse.Namespace) -> None:
    """Every option of :func:`run_evaluation` that can be checked before the work: ``ValueError`` naming it."""
    check_probability(args.threshold, "--threshold", allow_none=False)
    check_positive_int(args.batch_size, "--batch_size")
    check_positive_int(args.top_k, "--top_k")
    check_positive_int(getattr(args, "max_samples", None), "--max_samples", allow_none=True)
    check_positive_int(getattr(args, "num_workers", 0), "--num_workers", minimum=0)
    if getattr(args, "zero_shot_clip", "auto") is not None and not isinstance(args.zero_shot_clip, str):
        raise ValueError("--zero_shot_clip must be a Hub id, a folder, tiny-random or none, got "
                         f"{args.zero_shot_clip!r}")
    if getattr(args, "zero_shot_template", None) is None:
        args.zero_shot_template = ZERO_SHOT_TEMPLATE
    check_zero_shot_template(args.zero_shot_template)
    if args.dataset_options is not None and not isinstance(args.dataset_options, dict):
        raise ValueError(f"--dataset_options must be a JSON object, got {args.dataset_options!r}")


def default_output_dir(model: str, dataset: str, split: str) -> str:
    """``<model folder>/eval_<dataset>_<split>`` for a local model, else ``eval_<model>_<dataset>_<split>``."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(dataset)) or "dataset")
    if os.path.isdir(model):
        return os.path.join(model, f"eval_{tag}_{split}")
    return f"eval_{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}_{tag}_{split}"


def run_evaluation(args: argparse.Namespace) -> dict:
    """Evaluate ``args.model`` (and the zero-shot CLIP baseline) on ``args.split`` of ``args.dataset``; write
    ``metrics.json``, ``per_class_ap.csv``, ``per_class_ap.md`` and ``report.png`` to ``args.output_dir`` (main
    process only) and print the tables. Returns the content of ``metrics.json``. ``args`` as parsed by
    `hspnet.cli.evaluate`."""
    from accelerate import Accelerator

    _check_evaluation_args(args)
    use_cpu = getattr(args, "cpu", False) or not torch.cuda.is_available()
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=getattr(args, "mixed_precision", None))
    say = accelerator.print
    output_dir = args.output_dir or default_output_dir(args.model, args.dataset, args.split)
    _check_output_dir(output_dir)
    if not args.no_plot:
        _import_pyplot()  # fail before the work when matplotlib is missing

    with accelerator.main_process_first():
        splits, data, hierarchy = _open_eval_split(args.dataset, args.split, args.dataset_root,
                                                   args.dataset_options, args.cache_dir, args.max_samples)
        model, image_processor = load_model(args.model, trust_remote_code=args.trust_remote_code)
    labels = label_names(model)
    num_labels = len(labels)
    if not 1 <= args.top_k <= num_labels:
        raise ValueError(f"--top_k must be in [1, {num_labels}] (the model has {num_labels} labels), got {args.top_k}")
    permutation = label_permutation(labels, hierarchy.labels)
    group_of = {name: hierarchy.groups[g] for name, g in zip(hierarchy.labels, hierarchy.label_to_group)}
    groups = [group_of[name] for name in labels]
    say(f"evaluating {args.model} on {args.dataset} [{args.split}]: {len(data)} images, {num_labels} labels, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}")

    # the baseline is loaded before any evaluation, so that a bad --zero_shot_clip fails fast
    clip_name, seed, message = resolve_zero_shot_clip(args.model, args.zero_shot_clip)
    say(message)
    zero_shot: dict[str, Any] = {"skipped": message} if clip_name is None else {}
    classifier = None
    if clip_name is not None:
        with accelerator.main_process_first():
            clip, tokenizer, clip_processor = load_zero_shot_clip(clip_name, seed)
        if _text_tower_matches(model, clip) is False:
            warning = (f"warning: the text tower of {clip_name!r} differs from the model's frozen one: it is probably "
                       "not the CLIP the model was built on")
            say(warning)
            zero_shot["warning"] = warning
        classifier = ZeroShotCLIPClassifier(clip, tokenizer, labels, template=args.zero_shot_template)
        del clip

    # outputs never replace an input: an image of the dataset named like one of them (checked before the work)
    outputs = {name: os.path.join(output_dir, name) for name in OUTPUT_FILES}
    by_name: dict[str, list[str]] = {}
    for path in _image_files(splits):
        if os.path.basename(path) in outputs:
            by_name.setdefault(os.path.basename(path), []).append(path)
    for name, path in outputs.items():
        refuse_inputs_as_output(path, by_name.get(name, []), f"--output_dir file {name}")

    if args.torch_compile:
        model = torch.compile(model)  # attribute access (config, device) reaches the model
    metrics, scores, targets = _evaluate(model, data, image_processor, permutation, num_labels, accelerator,
                                         args.batch_size, args.num_workers, f"HSPNet [{args.split}]", args.threshold,
                                         args.top_k)
    zs_scores = None
    if classifier is not None:
        zs_metrics, zs_scores, _ = _evaluate(classifier, data, clip_processor, permutation, num_labels, accelerator,
                                             args.batch_size, args.num_workers, f"zero-shot CLIP [{args.split}]",
                                             args.threshold, args.top_k)
        zero_shot.update({"clip": clip_name, "template": args.zero_shot_template,
                          "logit_scale": classifier.logit_scale, "metrics": zs_metrics, "note": ZERO_SHOT_NOTE})
        if clip_name == TINY_RANDOM:
            zero_shot["tiny_random_seed"] = seed

    rows = per_class_table(scores, targets, labels, groups, zs_scores)
    results = {
        "model": args.model,
        "dataset": args.dataset,
        "dataset_options": dict(args.dataset_options or {}),
        "split": args.split,
        "num_samples": int(metrics["num_samples"]),
        "num_labels": num_labels,
        "threshold": args.threshold,
        "top_k": args.top_k,
        "metrics": metrics,
        "per_class_AP": {row["label"]: row["AP"] for row in rows},
        "zero_shot": zero_shot,
        "output_dir": output_dir,
    }
    if accelerator.is_main_process:
        # everything is rendered first, then each file is written atomically: a failure names the file and leaves
        # every file not yet written as it was
        contents: dict[str, str | bytes] = {
            "metrics.json": json.dumps(results, indent=2) + "\n",
            "per_class_ap.csv": per_class_table_text(rows, "csv"),
            "per_class_ap.md": per_class_table_text(rows, "md"),
        }
        if not args.no_plot:
            contents["report.png"] = report_png(
                scores, targets, labels, zs_scores,
                title=f"{os.path.basename(os.path.normpath(args.model))} on {args.dataset} [{args.split}]")
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as error:
            raise OSError(f"{output_dir}: cannot create --output_dir ({error.strerror or one_line(error)})") from error
        for name, content in contents.items():
            write_output(outputs[name], content)
        print()
        print(format_metrics_table(metrics, zero_shot.get("metrics"), args.top_k), end="")
        print(f"(percent; thresholds at sigmoid > {args.threshold:g}, top-{args.top_k} = the {args.top_k} best labels "
              f"of each image; mAP = ranked definition, mAP_tie_aware = scikit-learn's)")
        if zero_shot.get("metrics"):
            print(f"note: {ZERO_SHOT_NOTE}")
        print()
        print(_per_class_text(rows))
        written = ["metrics.json", "per_class_ap.csv", "per_class_ap.md"] + ([] if args.no_plot else ["report.png"])
        print(f"wrote {', '.join(written)} to {output_dir}")
    accelerator.wait_for_everyone()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


__all__ = [
    "OUTPUT_FILES",
    "default_output_dir",
    "load_eval_split",
    "run_evaluation",
]
