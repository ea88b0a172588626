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
  counted once); the command line is `hspnet.cli.evaluate`. Every output file is written atomically (complete or not
  at all, an earlier one left intact on failure) and never replaces an input (a model, CLIP or dataset file).

Every metric is :func:`hspnet.evaluation.metrics.compute_all_metrics` on the logits (``from_logits=True``): mAP in both
definitions, CP CR CF1 mean_class_F1 OP OR OF1 at ``sigmoid(logit) > threshold`` and the same for the top-k labels.
A model with calibrated thresholds (``config.label_thresholds``, ``hspnet calibrate``) also gets the threshold metrics
at those (:func:`hspnet.models.thresholds.label_thresholds`: 0.5 where a label has none), reported beside the ones at
``threshold`` under ``metrics_at_label_thresholds``; the ``metrics`` keys keep the one threshold. They are compared
with the probabilities ``hspnet predict`` and ``hspnet calibrate`` compute (float32 sigmoid of the logits).

Seen and unseen labels (``--unseen_labels FILE``, :func:`read_unseen_labels`, :func:`plan_unseen_labels`): the
dataset's labels listed in FILE are the unseen ones; every other dataset label must be one the model was trained on
(``config.trained_label_names``, else the model's labels). The dataset labels the model lacks are added with
``model.add_labels`` (each in the group nearest by CLIP text similarity; no weight is trained), every dataset label
is scored at once, and every metric is reported for the ``seen`` columns, the ``unseen`` columns and ``all``
(:func:`metrics_by_label_split`; docs/evaluate-and-predict.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from typing import Any

import numpy as np
import torch

from hspnet.data.batches import eval_dataloader, label_permutation
from hspnet.data.text_files import read_label_set_file
from hspnet.evaluation.loop import evaluate_model
from hspnet.evaluation.metrics import compute_all_metrics, threshold_metrics
from hspnet.evaluation.openimages import has_verified_negatives, openimages_metrics, openimages_targets
from hspnet.evaluation.report import METRIC_ORDER as METRIC_KEYS
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
from hspnet.models.loading import label_names, load_model, scores_from_logits
from hspnet.models.thresholds import DEFAULT_THRESHOLD, describe_thresholds, label_thresholds, stored_label_thresholds
from hspnet.utils.errors import FileFormatError, one_line
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
    if getattr(args, "unseen_labels", None) is not None:
        read_unseen_labels(args.unseen_labels)  # a missing, empty or malformed file fails before the work


# ---------------------------------------------------------------------------------------------------------------------
# Seen and unseen labels (--unseen_labels)
# ---------------------------------------------------------------------------------------------------------------------

LABEL_SPLITS = ("seen", "unseen", "all")


def read_unseen_labels(path: str) -> list[tuple[str, int]]:
    """The label names of an ``--unseen_labels`` file with their line numbers: the labels-file format of
    ``hspnet predict --labels`` (:func:`hspnet.data.text_files.read_label_set_file`: UTF-8, one name per line, blank
    lines and ``#`` lines skipped; a name listed twice or a file without any name is an error naming the file and
    line), without the optional group column (an unseen label takes the nearest group)."""
    entries = read_label_set_file(path, "--unseen_labels file")
    for name, group, number in entries:
        if group is not None:
            raise FileFormatError(f"label {name!r} has a group ({group!r}); an --unseen_labels file lists names only "
                                  "(each unseen label takes the nearest group)", file=path, line=number)
    return [(name, number) for name, _, number in entries]


def trained_labels(model) -> tuple[list[str], str]:
    """``(names, where they come from)``: the labels a model was trained on: ``config.trained_label_names`` (recorded
    when its label set was changed after training), else its labels."""
    recorded = getattr(model.config, "trained_label_names", None)
    if recorded:
        return list(recorded), "config.trained_label_names"
    return label_names(model), "the model's labels"


def plan_unseen_labels(path: str, entries: list[tuple[str, int]], model, dataset_labels: list[str],
                       dataset: str) -> dict:
    """Check an ``--unseen_labels`` file against the dataset and the model (nothing changes): every listed name must
    be a dataset label and not one the model was trained on; every other dataset label must be one it was trained
    on; every label of the model must be a dataset label. Returns ``{"file", "unseen", "seen", "missing",
    "trained_from"}``: ``unseen`` and ``seen`` in dataset order, ``missing`` the dataset labels the model lacks (to
    add). Raises a one-line ``ValueError`` naming the file, line and label."""
    dataset_labels = list(dataset_labels)
    known = set(dataset_labels)
    trained, trained_from = trained_labels(model)
    trained_set = set(trained)
    for name, line in entries:
        if name not in known:
            shown = ", ".join(repr(n) for n in dataset_labels[:10]) + (", ..." if len(dataset_labels) > 10 else "")
            raise FileFormatError(f"{name!r} is not a label of dataset {dataset!r} (its {len(dataset_labels)} labels: "
                                  f"{shown})", file=path, line=line)
        if name in trained_set:
            raise FileFormatError(f"{name!r} is a label the model was trained on ({trained_from}), so it is not "
                                  "unseen; leave it out of the file", file=path, line=line)
    unseen_set = {name for name, _ in entries}
    unseen = [name for name in dataset_labels if name in unseen_set]
    seen = [name for name in dataset_labels if name not in unseen_set]
    for name in seen:
        if name not in trained_set:
            raise ValueError(f"dataset label {name!r} is neither a label the model was trained on ({trained_from}) nor "
                             f"listed in {path}; list it there to evaluate it as unseen")
    current = label_names(model)
    extra = [name for name in current if name not in known]
    if extra:
        raise ValueError(f"the model has {len(extra)} label(s) that dataset {dataset!r} does not: "
                         f"{', '.join(repr(n) for n in extra[:5])}{', ...' if len(extra) > 5 else ''}; --unseen_labels "
                         "scores the dataset's labels only (model.set_labels can drop them from a copy of the model)")
    present = set(current)
    missing = [name for name in dataset_labels if name not in present]
    return {"file": path, "unseen": unseen, "seen": seen, "missing": missing, "trained_from": trained_from}


def add_missing_labels(model, plan: dict, tokenizer=None) -> list[str]:
    """``model.add_labels(plan["missing"])`` (each new label in the group nearest by CLIP text similarity); the
    model's own tokenizer, else ``tokenizer`` (the zero-shot CLIP's). Returns one line per added label
    (:meth:`LabelAssignment.describe`)."""
    if not plan["missing"]:
        return []
    if not hasattr(model, "add_labels"):
        raise ValueError(f"{type(model).__name__} cannot score labels it lacks ({', '.join(plan['missing'][:5])}); "
                         "--unseen_labels needs an HSPNet model")
    own = getattr(model, "tokenizer", None) or getattr(model.base_model, "tokenizer", None)
    if own is None and tokenizer is None:
        raise ValueError("the model has no tokenizer (its folder was saved without one) to embed the unseen labels "
                         f"{', '.join(repr(n) for n in plan['missing'][:5])} with; give --zero_shot_clip naming the "
                         "CLIP it was built on (its tokenizer is used), or save the model again with a current hspnet")
    result = model.add_labels(plan["missing"], tokenizer=None if own is not None else tokenizer)
    return [assignment.describe() for assignment in result.assignments if assignment.new]


def metrics_by_label_split(scores, targets, labels: list[str], unseen: list[str], threshold: float, top_k: int,
                           all_metrics: dict | None = None) -> dict:
    """``{"seen": ..., "unseen": ..., "all": ...}``: :func:`hspnet.evaluation.metrics.compute_all_metrics` of the
    logits ``scores`` (N, C) and ``targets`` (N, C), columns in ``labels`` order, restricted to the columns of the
    labels not in ``unseen`` / in ``unseen`` / all of them (``all_metrics`` when given: the same numbers, already
    computed). The top-k metrics rank the columns of each part only (k clamped to its size). A part without labels
    is ``None``."""
    unseen_set = set(unseen)
    columns = {"seen": [i for i, name in enumerate(labels) if name not in unseen_set],
               "unseen": [i for i, name in enumerate(labels) if name in unseen_set]}
    out: dict[str, dict | None] = {}
    for part, index in columns.items():
        out[part] = compute_all_metrics(scores[:, index], targets[:, index], from_logits=True, threshold=threshold,
                                        k=top_k) if index else None
    out["all"] = all_metrics if all_metrics is not None else compute_all_metrics(
        scores, targets, from_logits=True, threshold=threshold, k=top_k)
    return out


def format_label_split_table(by_split: dict, counts: dict, k: int) -> str:
    """Every metric (percent) for the seen labels, the unseen labels and all of them, side by side."""
    metrics = by_split["all"]
    keys = [key for key in METRIC_KEYS if key in metrics]
    keys += [f"{key}_top{k}" for key in METRIC_KEYS[2:] if f"{key}_top{k}" in metrics]
    titles = [f"{part} ({counts[part]})" for part in LABEL_SPLITS]
    header = f"{'metric':<22}" + "".join(f"{title:>14}" for title in titles)
    lines = [header, "-" * len(header)]
    for key in keys:
        cells = ["-" if by_split[part] is None else f"{by_split[part][key]:.2f}" for part in LABEL_SPLITS]
        lines.append(f"{key:<22}" + "".join(f"{cell:>14}" for cell in cells))
    return "\n".join(lines) + "\n"


def format_calibrated_table(metrics: dict, calibrated: dict, threshold: float) -> str:
    """The threshold metrics at ``threshold`` and at the model's calibrated thresholds, side by side (percent)."""
    header = f"{'metric':<22}{f'> {threshold:g}':>10}{'calibrated':>12}{'diff':>10}"
    lines = [header, "-" * len(header)]
    lines += [f"{key:<22}{metrics[key]:>10.2f}{value:>12.2f}{value - metrics[key]:>+10.2f}"
              for key, value in calibrated.items() if key in metrics]
    return "\n".join(lines) + "\n"


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
    unseen_file = getattr(args, "unseen_labels", None)
    unseen_plan = None
    if unseen_file is not None:  # checked before the work; the labels are added once the CLIP is known
        unseen_plan = plan_unseen_labels(unseen_file, read_unseen_labels(unseen_file), model, list(hierarchy.labels),
                                         args.dataset)
    else:
        label_permutation(label_names(model), hierarchy.labels)  # the same label set, or fail before the work
    num_labels = len(label_names(model)) + (len(unseen_plan["missing"]) if unseen_plan else 0)
    if not 1 <= args.top_k <= num_labels:
        raise ValueError(f"--top_k must be in [1, {num_labels}] (the model has {num_labels} labels), got {args.top_k}")
    say(f"evaluating {args.model} on {args.dataset} [{args.split}]: {len(data)} images, {num_labels} labels, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}")

    # the baseline is loaded before any evaluation, so that a bad --zero_shot_clip fails fast
    clip_name, seed, message = resolve_zero_shot_clip(args.model, args.zero_shot_clip)
    say(message)
    zero_shot: dict[str, Any] = {"skipped": message} if clip_name is None else {}
    clip = tokenizer = None
    if clip_name is not None:
        with accelerator.main_process_first():
            clip, tokenizer, clip_processor = load_zero_shot_clip(clip_name, seed)
        if _text_tower_matches(model, clip) is False:
            warning = (f"warning: the text tower of {clip_name!r} differs from the model's frozen one: it is probably "
                       "not the CLIP the model was built on")
            say(warning)
            zero_shot["warning"] = warning
    added: list[str] = []
    if unseen_plan is not None:
        added = add_missing_labels(model, unseen_plan, tokenizer)
        say(f"unseen labels ({unseen_file}): {len(unseen_plan['unseen'])}; seen (trained on, "
            f"{unseen_plan['trained_from']}): {len(unseen_plan['seen'])}")
        for line in added:
            say(f"  added to the model: {line}")
    labels = label_names(model)
    permutation = label_permutation(labels, hierarchy.labels)
    group_of = {name: hierarchy.groups[g] for name, g in zip(hierarchy.labels, hierarchy.label_to_group)}
    groups = [group_of[name] for name in labels]
    classifier = None
    if clip is not None:
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

    openimages = None
    if has_verified_negatives(data):  # Open Images: unknown pairs are not negatives (docs/metrics.md)
        openimages = openimages_metrics(scores, openimages_targets(data, num_labels, permutation), labels)
    stored = stored_label_thresholds(model)
    calibrated = None
    if stored is not None:  # the probabilities predict and calibrate compare with the thresholds (float32 sigmoid)
        probabilities = scores_from_logits(model, torch.from_numpy(np.asarray(scores))).double().numpy()
        calibrated = threshold_metrics(probabilities, targets, label_thresholds(model, DEFAULT_THRESHOLD))
    label_split = None
    if unseen_plan is not None:
        label_split = {
            "file": unseen_file, "trained_labels_from": unseen_plan["trained_from"],
            "seen": unseen_plan["seen"], "unseen": unseen_plan["unseen"], "added_to_model": added,
            "metrics": metrics_by_label_split(scores, targets, labels, unseen_plan["unseen"], args.threshold,
                                              args.top_k, metrics),
        }
        if zs_scores is not None:
            label_split["zero_shot_metrics"] = metrics_by_label_split(
                zs_scores, targets, labels, unseen_plan["unseen"], args.threshold, args.top_k, zs_metrics)
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
        **({"metrics_openimages": openimages} if openimages is not None else {}),
        "label_thresholds": stored,
        **({"metrics_at_label_thresholds": calibrated} if calibrated is not None else {}),
        **({"unseen_labels": label_split} if label_split is not None else {}),
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
        if openimages is not None:
            print(f"Open Images protocol (verified pairs only): mAP {openimages['mAP']:.2f} over "
                  f"{openimages['num_classes_evaluated']} of {openimages['num_classes']} classes")
        if calibrated is not None:
            print()
            print(format_calibrated_table(metrics, calibrated, args.threshold), end="")
            print(f"(percent; calibrated = {describe_thresholds(model, DEFAULT_THRESHOLD)}; hspnet calibrate)")
        if label_split is not None:
            counts = {"seen": len(label_split["seen"]), "unseen": len(label_split["unseen"]), "all": len(labels)}
            print()
            print(format_label_split_table(label_split["metrics"], counts, args.top_k), end="")
            print(f"(percent; HSPNet; unseen = the labels listed in {unseen_file}, seen = the others, which it "
                  "was trained on; each part is computed on its own columns of the same scores, its top-k ranking "
                  "its own labels; the zero-shot CLIP's are in metrics.json)")
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
    "LABEL_SPLITS",
    "OUTPUT_FILES",
    "add_missing_labels",
    "default_output_dir",
    "format_label_split_table",
    "load_eval_split",
    "metrics_by_label_split",
    "plan_unseen_labels",
    "read_unseen_labels",
    "run_evaluation",
    "trained_labels",
]
