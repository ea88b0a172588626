"""Per-label decision thresholds for a trained model, chosen on a fully labelled dataset split: `hspnet calibrate`
(the command line is :mod:`hspnet.cli.calibrate`; the rule is :mod:`hspnet.evaluation.thresholds`; docs/thresholds.md).

- the split is read by :func:`hspnet.apps.evaluate.load_eval_split`'s code and scored as ``hspnet evaluate`` scores it
  (:func:`hspnet.data.batches.eval_dataloader`, :func:`hspnet.evaluation.loop.evaluate_model`); the probabilities are
  :func:`hspnet.models.loading.scores_from_logits` of the logits, the ones ``hspnet predict`` compares with a threshold;
- :func:`check_fully_labelled` refuses a split that holds single positives only (``labels`` equal to
  ``observed_labels`` on every image): its negatives are unknown, so no F1 can be measured on it;
- :func:`hspnet.evaluation.thresholds.calibrate_thresholds` chooses the thresholds;
- they are stored as ``label_thresholds`` in the model's ``config.json``: rewritten in place (atomically, only that key
  changes) for a local model folder, or, with ``--output_dir``, in a calibrated copy of the model, assembled in a
  temporary sibling folder and renamed into place when complete; ``calibration.json`` beside it records the rule, the
  data and the per-label table;
- ``--holdout F``: the thresholds are chosen on the other images of the split and measured on a fraction ``F`` of them
  (macro-F1, sample-F1, micro-F1 at 0.5 and at the thresholds); nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from hspnet.apps.evaluate import _check_output_dir, _evaluate, _open_eval_split
from hspnet.data.batches import label_permutation
from hspnet.evaluation.thresholds import DEFAULT_MIN_POSITIVES, Calibration, calibrate_thresholds, threshold_report
from hspnet.hub.transfer import model_files
from hspnet.models.loading import label_names, load_model, scores_from_logits
from hspnet.models.thresholds import DEFAULT_THRESHOLD, FIELD
from hspnet.utils.files import (
    atomic_write,
    give_default_mode,
    new_file_mode,
    new_folder_mode,
    read_json_file,
    same_file,
    write_json,
)
from hspnet.utils.validation import check_positive_int

CALIBRATION_FILE = "calibration.json"
"""Written beside the calibrated ``config.json``: the rule, the data and the per-label table."""
RULE = ("per label: the threshold t maximising F1 of `score > t` among the midpoints between consecutive distinct "
        "scores, 0 and 1 counting as scores below the lowest and above the highest; ties: the one closest to 0.5, "
        "then the larger; labels with fewer than min_positives positives: the one threshold maximising the micro F1 "
        "over all labels (the same rule on every score of every label at once)")


# ---------------------------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------------------------


def check_fully_labelled(data, split: str, dataset: str) -> None:
    """Refuse (``ValueError``, one line) a split whose labels are single positives only (its ``labels`` equal its
    ``observed_labels`` on every image), or a partially labelled one (a ``negative_labels`` column: Open Images). A
    split without ``observed_labels`` is taken as fully labelled."""
    if "negative_labels" in data.column_names:  # Open Images: most pairs are unknown, not negative
        raise ValueError(
            f"split {split!r} of dataset {dataset!r} is partially labelled (verified positives and negatives, the "
            "other pairs unknown): its F1 would count every unknown pair as a negative, so no threshold is calibrated "
            "on it; give a fully labelled split")
    if "observed_labels" not in data.column_names:
        return
    pairs = zip(data["labels"], data["observed_labels"])
    if all(sorted(set(full)) == sorted(set(observed)) for full, observed in pairs):
        raise ValueError(
            f"split {split!r} of dataset {dataset!r} holds single positive labels only (its labels equal its "
            "observed_labels, one per image): its negatives are unknown, so no threshold can be calibrated on it; give "
            "a fully labelled split (e.g. --split test of a benchmark) or a held-out fully labelled set")


def split_holdout(num_images: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(calibration rows, held-out rows)``, each sorted: ``round(fraction * N)`` rows drawn without replacement by
    ``numpy.random.default_rng(seed).permutation(N)`` (its first ones) are held out. Both parts must be non-empty."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--holdout must be a fraction in (0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(num_images)
    held = int(round(fraction * num_images))
    if not 0 < held < num_images:
        raise ValueError(f"--holdout {fraction:g} of {num_images} image(s) leaves {held} held out and "
                         f"{num_images - held} to calibrate on; both need at least one image")
    return np.sort(order[held:]), np.sort(order[:held])


# ---------------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------------


def format_calibration_table(calibration: Calibration, labels: list[str]) -> str:
    """Per label: the threshold, its source, the positives, F1 at the default (0.5) and at the threshold (percent)."""
    width = max([len("label")] + [len(name) for name in labels])
    default = f"F1 @{calibration.default:g}"
    header = f"{'label':<{width}}  {'threshold':>9}  {'source':<10}  {'positives':>9}  {default:>8}  {'F1 @thr':>8}"
    lines = [header, "-" * len(header)]
    for row in calibration.rows(labels):
        lines.append(f"{row['label']:<{width}}  {row['threshold']:>9.4f}  {row['source']:<10}  {row['positives']:>9}  "
                     f"{row['F1_at_default']:>8.2f}  {row['F1_at_threshold']:>8.2f}")
    fallback = calibration.sources.count("fallback")
    lines.append(f"global threshold {calibration.global_threshold:.4f} (micro F1 {calibration.global_micro_f1:.2f}), "
                 f"given to the {fallback} label(s) with fewer than {calibration.min_positives} positives")
    return "\n".join(lines) + "\n"


def format_holdout_report(before: dict, after: dict, default: float) -> str:
    """The held-out F1 measures at ``default`` and at the calibrated thresholds, side by side (percent)."""
    header = f"{'metric':<10}{f'> {default:g}':>10}{'calibrated':>12}{'diff':>10}"
    lines = [header, "-" * len(header)]
    for key, name in (("macro_F1", "macro-F1"), ("sample_F1", "sample-F1"), ("micro_F1", "micro-F1")):
        lines.append(f"{name:<10}{before[key]:>10.2f}{after[key]:>12.2f}{after[key] - before[key]:>+10.2f}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def _config_document(path: str, thresholds: list[float], config_class) -> dict:
    """The ``config.json`` at ``path`` with ``label_thresholds`` set (every other key as it was), checked by loading
    it as ``config_class`` would."""
    document = read_json_file(path, "config file")
    if not isinstance(document, dict):
        raise ValueError(f"{path}: the config file must hold a JSON object")
    document[FIELD] = [float(value) for value in thresholds]
    config_class.from_dict(dict(document))  # the config's own checks (HSPNetConfig: one threshold per label)
    return document


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before any work when the thresholds could not be written where they are to go."""
    if args.holdout is not None:
        if args.output_dir is not None:
            raise ValueError("--holdout only reports (it writes nothing); leave out --output_dir, or calibrate without "
                             "--holdout to store the thresholds")
        return
    if args.output_dir is None:
        if not os.path.isdir(args.model):
            raise ValueError(f"{args.model} is not a local model folder, so its config.json cannot be rewritten; give "
                             "--output_dir for a calibrated copy")
        config = os.path.join(args.model, "config.json")
        if os.path.islink(config):
            raise ValueError(f"{config} is a symbolic link (a Hub cache?); give --output_dir for a calibrated copy")
        return
    _check_output_dir(args.output_dir)
    if os.path.isdir(args.model) and same_file(args.output_dir, args.model):
        raise ValueError(f"{args.output_dir}: --output_dir is the model folder; leave it out to write the thresholds "
                         "into that folder")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) \
            and not os.path.isfile(os.path.join(args.output_dir, CALIBRATION_FILE)):
        raise ValueError(f"{args.output_dir}: --output_dir is a folder that an earlier hspnet calibrate did not write "
                         f"(no {CALIBRATION_FILE}); give a new or empty folder")


def _swap_in(staging: str, target: str) -> None:
    """Put the complete folder ``staging`` at ``target``; a previous ``target`` is removed only afterwards."""
    if os.path.isdir(target) and not os.listdir(target):
        os.rmdir(target)
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    parent, name = os.path.split(os.path.abspath(target))
    previous = tempfile.mkdtemp(prefix=f".{name}.previous-", dir=parent)
    os.rmdir(previous)  # a free name beside the target
    os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def write_calibrated_copy(model, processor, source: str, output_dir: str, thresholds: list[float], record: dict) -> str:
    """A calibrated copy of the model in ``output_dir``: the model files of a local folder copied (its card and
    ``training_args.json`` too; not the training run's logs and checkpoints), a Hub model saved with
    ``save_pretrained``; ``config.json`` with ``label_thresholds``; ``calibration.json``. Assembled in a temporary
    sibling folder and renamed into place when complete, so ``output_dir`` is never half written."""
    target = os.path.abspath(output_dir)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.calibrating-", dir=parent)
    try:
        os.chmod(staging, new_folder_mode(parent))
        if os.path.isdir(source):
            for file in model_files(source):
                if file != CALIBRATION_FILE:
                    shutil.copyfile(os.path.join(source, file), os.path.join(staging, file))
        else:
            model.save_pretrained(staging)
            processor.save_pretrained(staging)
            give_default_mode([os.path.join(staging, file) for file in os.listdir(staging)], new_file_mode(staging))
        config = os.path.join(staging, "config.json")
        write_json(config, _config_document(config, thresholds, type(model.config)))
        write_json(os.path.join(staging, CALIBRATION_FILE), record)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_in_place(model, folder: str, thresholds: list[float], record: dict) -> str:
    """``label_thresholds`` written into ``folder/config.json`` (every other key unchanged) and
    ``folder/calibration.json``: both written to temporary files first and renamed over the old ones only when both
    are complete, so a failed write (a full disk) leaves both files as they were."""
    config = os.path.join(folder, "config.json")
    document = _config_document(config, thresholds, type(model.config))
    with atomic_write(config) as config_stream, atomic_write(os.path.join(folder, CALIBRATION_FILE)) as record_stream:
        config_stream.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        record_stream.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def run_calibration(args: argparse.Namespace) -> dict:
    """Score ``args.split`` of ``args.dataset`` with ``args.model``, choose the thresholds, print the table, and store
    them (or, with ``args.holdout``, print the held-out report). Returns the record written to ``calibration.json``
    (with ``"holdout"`` for a report). ``args`` as parsed by :mod:`hspnet.cli.calibrate`."""
    from accelerate import Accelerator

    check_positive_int(args.min_positives, "--min_positives")
    check_positive_int(args.batch_size, "--batch_size")
    check_positive_int(args.seed, "--seed", minimum=0)
    check_positive_int(getattr(args, "num_workers", 0), "--num_workers", minimum=0)
    if args.holdout is not None and (isinstance(args.holdout, bool) or not 0.0 < args.holdout < 1.0):
        raise ValueError(f"--holdout must be a fraction in (0, 1), got {args.holdout!r}")
    if args.dataset_options is not None and not isinstance(args.dataset_options, dict):
        raise ValueError(f"--dataset_options must be a JSON object, got {args.dataset_options!r}")
    _check_outputs(args)
    accelerator = Accelerator(cpu=getattr(args, "cpu", False) or not torch.cuda.is_available())
    with accelerator.main_process_first():
        _, data, hierarchy = _open_eval_split(args.dataset, args.split, args.dataset_root, args.dataset_options,
                                              args.cache_dir, getattr(args, "max_samples", None))
        check_fully_labelled(data, args.split, args.dataset)
        rows, held = np.arange(len(data)), None
        if args.holdout is not None:  # before the scoring: a split too small for the fraction fails at once
            rows, held = split_holdout(len(data), args.holdout, args.seed)
        model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code)
    labels = label_names(model)
    permutation = label_permutation(labels, hierarchy.labels)
    accelerator.print(f"calibrating {args.model} on {args.dataset} [{args.split}]: {len(data)} images, {len(labels)} "
                      "labels")
    _, logits, targets = _evaluate(model, data, processor, permutation, len(labels), accelerator, args.batch_size,
                                   getattr(args, "num_workers", 0), f"scoring [{args.split}]", DEFAULT_THRESHOLD, 1)
    probabilities = scores_from_logits(model, torch.from_numpy(np.asarray(logits))).double().numpy()
    if len(probabilities) != len(data):
        raise RuntimeError(f"scored {len(probabilities)} images of the {len(data)} of the split")
    calibration = calibrate_thresholds(probabilities[rows], targets[rows], args.min_positives, DEFAULT_THRESHOLD)
    record = {
        "written_by": "hspnet calibrate", "model": args.model, "dataset": args.dataset,
        "dataset_options": dict(args.dataset_options or {}), "split": args.split, "num_images": int(len(rows)),
        "rule": RULE, "min_positives": calibration.min_positives, "default_threshold": calibration.default,
        "global_threshold": calibration.global_threshold, "global_micro_F1": calibration.global_micro_f1,
        "labels": calibration.rows(labels),
    }
    if not accelerator.is_main_process:
        return record
    print()
    print(format_calibration_table(calibration, labels), end="")
    if held is not None:
        before = threshold_report(probabilities[held], targets[held], DEFAULT_THRESHOLD)
        after = threshold_report(probabilities[held], targets[held], calibration.thresholds)
        record["holdout"] = {"fraction": args.holdout, "seed": args.seed, "num_images": int(len(held)),
                             "at_default": before, "at_thresholds": after}
        print()
        print(f"held out: calibrated on {len(rows)} images, measured on the {len(held)} others of {args.dataset} "
              f"[{args.split}] (--holdout {args.holdout:g} --seed {args.seed})")
        print(format_holdout_report(before, after, DEFAULT_THRESHOLD), end="")
        print(f"(percent; macro-F1 = mean over the {after['macro_F1_labels']} labels with a positive among the "
              "held-out images; sample-F1 = per-image F1, averaged; nothing written)")
        return record
    if args.output_dir is not None:
        where = write_calibrated_copy(model, processor, args.model, args.output_dir, calibration.thresholds, record)
    else:
        where = write_in_place(model, args.model, calibration.thresholds, record)
    print(f"wrote {FIELD} to {os.path.join(where, 'config.json')} and the table to "
          f"{os.path.join(where, CALIBRATION_FILE)}")
    return record


__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_MIN_POSITIVES",
    "check_fully_labelled",
    "format_calibration_table",
    "format_holdout_report",
    "run_calibration",
    "split_holdout",
    "write_calibrated_copy",
    "write_in_place",
]
