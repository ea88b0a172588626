"""Evaluating a trained model on a prepared dataset split, next to the zero-shot CLIP baseline: importable, tested
functions behind `scripts/evaluate.py`.

- :func:`load_eval_split`: any dataset the package prepares (demo, coco, voc, nuswide, cub, folder, or a folder
  written by ``save_prepared_dataset`` / ``datasets_scripts``), one split, optionally truncated;
- :class:`ZeroShotCLIPClassifier`: plain CLIP as a multi-label classifier, ``logit_scale * norm(image) @
  norm(text).T`` with the prompts ``"a photo of a {label}."`` (text embeddings computed once), whose
  ``forward(pixel_values=...)`` returns ``.logits`` like the HSPNet model, so :func:`hspnet.engine.evaluate_model`
  runs both; :func:`zero_shot_logits` is the formula;
- :func:`resolve_zero_shot_clip` / :func:`load_zero_shot_clip`: which CLIP to use for the baseline (by default the
  one recorded as ``base_model`` in the model card that training writes);
- :func:`per_class_table`, :func:`write_per_class_table`, :func:`format_metrics_table`, :func:`plot_report`
  (matplotlib, Agg backend, imported lazily), :func:`precision_recall_curve`;
- :func:`make_eval_transform`: dataset rows -> model inputs; images are read as :func:`hspnet.prediction` reads them
  (:func:`hspnet.images.open_image` for image files: EXIF orientation, 16-bit and float images scaled to 8 bits, full
  decode, decompression bombs refused; :func:`hspnet.images.to_rgb` for embedded bytes), so an image gets the same
  scores from ``evaluate.py`` and ``predict.py``, and an unreadable one is named;
- :func:`run_evaluation`: the whole run (accelerate: several processes under ``accelerate launch``, each image
  counted once), :func:`main`: the command line. Every output file is written atomically (complete or not at all,
  an earlier one left intact on failure) and never replaces an input (a model, CLIP or dataset file).

Every metric is :func:`hspnet.metrics.compute_all_metrics` on the logits (``from_logits=True``): mAP in both
definitions, CP CR CF1 mean_class_F1 OP OR OF1 at ``sigmoid(logit) > threshold`` and the same for the top-k labels.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import stat
import string
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from hspnet.cli_types import json_object, one_line, positive_int, probability, run_cli
from hspnet.files import refuse_inputs_as_output
from hspnet.images import MAX_IMAGE_PIXELS, ImageReadError, open_image, to_rgb
from hspnet.prediction import (
    _check_finite_parameters,
    _check_loading_info,
    _load_errors,
    _looks_like_path,
    _quiet_transformers,
    check_model_folder,
    check_positive_int,
    check_probability,
    load_image,
    write_output,
)
from hspnet.tiny_clip import TINY_RANDOM

logger = logging.getLogger("hspnet.evaluate")

ZERO_SHOT_TEMPLATE = "a photo of a {}."
ZERO_SHOT_NOTE = (
    "zero-shot CLIP threshold metrics use sigmoid(logit_scale * cosine) > threshold, like the model's, but CLIP's "
    "logits are not calibrated for a sigmoid: compare mAP (ranking only), not the threshold metrics."
)
METRIC_ORDER = ("mAP", "mAP_tie_aware", "CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1")
NO_ZERO_SHOT = ("none", "no", "off", "false", "skip", "")
OUTPUT_FILES = ("metrics.json", "per_class_ap.csv", "per_class_ap.md", "report.png")
MAX_BARS = 60
"""At most this many per-class AP bars in ``report.png``: with more classes, the ``MAX_BARS // 2`` best and worst
classes that have positives are drawn (every class is in ``per_class_ap.csv``)."""


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


def label_permutation(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> list[int]:
    """For each dataset label index, the model's index of the same name. Raises ``ValueError`` listing the
    differences when the two label sets are not the same."""
    model_labels, dataset_labels = list(model_labels), list(dataset_labels)
    if set(model_labels) != set(dataset_labels) or len(model_labels) != len(dataset_labels):
        in_model, in_data = set(model_labels), set(dataset_labels)
        only_model = [name for name in model_labels if name not in in_data]
        only_data = [name for name in dataset_labels if name not in in_model]
        raise ValueError(
            f"the model's {len(model_labels)} labels are not the dataset's {len(dataset_labels)}: only in the model "
            f"{only_model[:5]}{'...' if len(only_model) > 5 else ''}, only in the dataset "
            f"{only_data[:5]}{'...' if len(only_data) > 5 else ''}"
        )
    index = {name: i for i, name in enumerate(model_labels)}
    return [index[name] for name in dataset_labels]


# ---------------------------------------------------------------------------------------------------------------------
# Zero-shot CLIP
# ---------------------------------------------------------------------------------------------------------------------


def check_zero_shot_template(template: Any) -> str:
    """``template`` if it is a string with exactly one ``{}`` and no other ``{...}`` field; ``ValueError`` naming
    it otherwise (so that a bad ``--zero_shot_template`` fails before any work)."""
    if not isinstance(template, str):
        raise ValueError(f"the zero-shot template must be a string with one '{{}}', got {template!r}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as error:
        raise ValueError(f"the zero-shot template {template!r} is not a valid format string ({one_line(error)}); "
                         "use one '{}' for the label name and '{{' / '}}' for literal braces") from None
    if fields != [("", "", None)]:
        raise ValueError(f"the zero-shot template {template!r} must hold exactly one '{{}}' (the label name) and no "
                         "other '{...}' field")
    return template


def zero_shot_prompt(label: str, template: str = ZERO_SHOT_TEMPLATE) -> str:
    """``"a photo of a {label}."`` with underscores as spaces."""
    return check_zero_shot_template(template).format(str(label).replace("_", " "))


def zero_shot_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``logit_scale * normalize(image_embeds) @ normalize(text_embeds).T``: ``(B, D) x (C, D) -> (B, C)``."""
    if image_embeds.ndim != 2 or text_embeds.ndim != 2 or image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(f"zero_shot_logits needs (B, D) image and (C, D) text embeddings, got "
                         f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    _check_logit_scale(logit_scale)
    image = nn.functional.normalize(image_embeds.float(), dim=-1)
    text = nn.functional.normalize(text_embeds.float(), dim=-1)
    return logit_scale * image @ text.T


def _check_logit_scale(logit_scale: Any) -> float:
    if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not math.isfinite(logit_scale) \
            or logit_scale <= 0:
        raise ValueError(f"logit_scale must be a finite number > 0, got {logit_scale!r}")
    return float(logit_scale)


def _features(output):
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ZeroShotCLIPClassifier(nn.Module):
    """Plain CLIP as a multi-label classifier (the zero-shot baseline).

    ``forward(pixel_values=...)`` returns an ``ImageClassifierOutput`` whose ``logits`` are
    :func:`zero_shot_logits` of CLIP's image embeddings and the text embeddings of ``template.format(label)``
    (underscores -> spaces), computed once here and kept as a buffer. ``logit_scale``: default CLIP's learned
    ``logit_scale.exp()`` (capped at 100, as CLIP clamps it). Only the image tower is kept.
    """

    def __init__(self, clip_model, tokenizer, labels: Sequence[str], template: str = ZERO_SHOT_TEMPLATE,
                 logit_scale: float | None = None):
        super().__init__()
        from hspnet.modeling_hspnet import clip_text_embeddings

        check_zero_shot_template(template)
        self.labels = [str(name) for name in labels]
        if not self.labels:
            raise ValueError("the zero-shot classifier needs at least one label")
        self.prompts = [zero_shot_prompt(name, template) for name in self.labels]
        self.template = template
        with torch.no_grad():
            text = clip_text_embeddings(clip_model, tokenizer, self.prompts)
        self.register_buffer("text_embeds", nn.functional.normalize(text.float(), dim=-1))
        if logit_scale is None:
            logit_scale = min(float(clip_model.logit_scale.detach().exp()), 100.0)
        self.logit_scale = _check_logit_scale(logit_scale)
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection
        self.config = clip_model.config
        self.requires_grad_(False)
        self.eval()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.visual_projection.weight.dtype
        pooled = self.vision_model(pixel_values=pixel_values.to(dtype)).pooler_output
        return self.visual_projection(pooled)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        from transformers.modeling_outputs import ImageClassifierOutput

        logits = zero_shot_logits(self.get_image_features(pixel_values), self.text_embeds, self.logit_scale)
        return ImageClassifierOutput(logits=logits)


def read_model_card(model_name_or_path: str) -> dict:
    """``{"base_model": ..., "seed": ...}`` from the README.md that training writes beside the model (YAML
    ``base_model`` metadata and the recipe table); empty when there is none."""
    path = os.path.join(model_name_or_path, "README.md")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        return {}  # a FIFO or a device: never opened (it could block)
    if not os.path.isfile(path):
        if os.path.isdir(model_name_or_path):
            return {}
        try:  # a Hub id: the card if it is cached or can be downloaded
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model_name_or_path, "README.md")
        except Exception:  # noqa: BLE001 (offline, no card, not a repo: no record)
            return {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    info: dict[str, Any] = {}
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if match:
        import yaml

        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError:
            meta = {}
        if isinstance(meta, dict) and isinstance(meta.get("base_model"), str):
            info["base_model"] = meta["base_model"]
    seed = re.search(r"^\|\s*seed\s*\|\s*(-?\d+)\s*\|", text, re.M)
    if seed:
        info["seed"] = int(seed.group(1))
    return info


def _clip_available(name: str) -> bool:
    if name == TINY_RANDOM or os.path.isdir(name):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 (not a valid repo id)
        return False


def resolve_zero_shot_clip(model_name_or_path: str, requested: str | None = "auto") -> tuple[str | None, int, str]:
    """Which CLIP the baseline uses: ``(clip or None, tiny_random_seed, message)``.

    ``requested``: a Hub id / folder / ``"tiny-random"`` (used as given), ``"none"`` (skip), or ``"auto"`` / None:
    the ``base_model`` of the model card when it is ``tiny-random``, an existing folder, or a Hub id in the local
    cache; otherwise ``None`` with the reason in ``message``. The tiny random CLIP is rebuilt with the ``seed`` of the
    card's recipe (default 0).
    """
    card = read_model_card(model_name_or_path) if (requested in (None, "auto") or requested == TINY_RANDOM) else {}
    seed = int(card.get("seed", 0))
    if requested is not None and requested.strip().lower() in NO_ZERO_SHOT:
        return None, seed, "zero-shot CLIP baseline skipped (--zero_shot_clip none)"
    if requested not in (None, "auto"):
        return requested, seed, f"zero-shot CLIP baseline: {requested}"
    base = card.get("base_model")
    if not base:
        return None, seed, (
            f"zero-shot CLIP baseline skipped: {model_name_or_path} does not record the CLIP it was built on "
            "(no base_model in its README.md); pass --zero_shot_clip HUB_ID_OR_FOLDER (or tiny-random)"
        )
    if not _clip_available(base):
        return None, seed, (
            f"zero-shot CLIP baseline skipped: the model was built on {base!r}, which is neither a local folder nor in "
            "the Hugging Face cache; pass --zero_shot_clip HUB_ID_OR_FOLDER"
        )
    return base, seed, f"zero-shot CLIP baseline: {base} (the model's base CLIP, from its model card)"


def load_zero_shot_clip(name: str, seed: int = 0):
    """``(clip_model, tokenizer, image_processor)``: ``"tiny-random"`` (the tiny random CLIP of the demo, rebuilt
    with ``seed``), a CLIP folder or a Hub id. Raises ``OSError`` naming it when it cannot be loaded."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    import hspnet  # noqa: F401  (so that an HSPNet folder is recognised and refused by name)

    if name == TINY_RANDOM:
        from hspnet.tiny_clip import load_tiny_random

        return load_tiny_random(seed)
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name).strip():
        raise ValueError(f"the zero-shot CLIP must be a folder, a Hub id or {TINY_RANDOM!r}, got {name!r}")
    name = os.fspath(name)
    local = os.path.isdir(name)
    if local:
        check_model_folder(name, "CLIP")
    elif os.path.exists(name):
        raise ValueError(f"{name}: the zero-shot CLIP must be a folder (or a Hub id), not a file")
    elif _looks_like_path(name):
        raise FileNotFoundError(f"{name}: zero-shot CLIP folder does not exist")
    where = "CLIP folder" if local else "no such local folder, and the Hub model"
    errors = _load_errors()
    with _quiet_transformers():
        try:
            model_type = AutoConfig.from_pretrained(name).model_type
        except errors as error:
            raise OSError(f"{name}: cannot load it as a CLIP model for the zero-shot baseline ({where}: "
                          f"{one_line(error)[:300]})") from error
        if model_type != "clip":
            raise ValueError(f"{name}: a {model_type!r} model, not a CLIP model; the zero-shot baseline needs plain "
                             "CLIP (e.g. openai/clip-vit-base-patch16)")
        try:
            clip, info = CLIPModel.from_pretrained(name, output_loading_info=True, ignore_mismatched_sizes=True)
            tokenizer = AutoTokenizer.from_pretrained(name)
        except errors as error:
            raise OSError(f"{name}: cannot load it as a CLIP model for the zero-shot baseline ({where}: "
                          f"{one_line(error)[:300]})") from error
    _check_loading_info(name, clip, info)
    _check_finite_parameters(name, clip)
    clip.eval()
    with _quiet_transformers():
        try:
            processor = AutoImageProcessor.from_pretrained(name)
        except errors as error:
            saved = os.path.join(name, "preprocessor_config.json")
            if local and os.path.lexists(saved):
                raise OSError(f"{saved}: the image processor of the zero-shot CLIP cannot be loaded "
                              f"({one_line(error)[:200]})") from error
            from hspnet.tiny_clip import tiny_clip_image_processor

            size = clip.config.vision_config.image_size
            processor = tiny_clip_image_processor(size if isinstance(size, int) else size[0])
    return clip, tokenizer, processor


def _text_tower_matches(model, clip) -> bool | None:
    """Whether an HSPNet model's frozen text projection equals ``clip``'s (None when it cannot be told)."""
    base = getattr(model, "hspnet", None)
    if base is None or not getattr(model.config, "freeze_text_encoder", False):
        return None
    mine, theirs = base.clip.text_projection.weight, clip.text_projection.weight
    if mine.shape != theirs.shape:
        return False
    return bool(torch.allclose(mine.detach().float().cpu(), theirs.detach().float().cpu(), atol=1e-6))


# ---------------------------------------------------------------------------------------------------------------------
# Tables and plots
# ---------------------------------------------------------------------------------------------------------------------


def _check_score_matrix(scores: Any, targets: Any, labels: Sequence[str], name: str):
    """``(scores, targets)`` as arrays after checking they are ``(N, C)`` with ``C = len(labels)``, finite scores and
    0/1 targets; ``ValueError`` naming ``name`` otherwise. float32 scores stay float32 (no N x C float64 copy: the
    ranking, hence every AP, is the same)."""
    scores = np.asarray(scores.detach().float().cpu() if isinstance(scores, torch.Tensor) else scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    targets = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if scores.ndim != 2 or targets.shape != scores.shape or scores.shape[1] != len(labels):
        raise ValueError(f"{name} and targets must both be (N, C) with C = {len(labels)} labels, got "
                         f"{scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1 (multi-hot)")
    return scores, targets


def per_class_table(scores: Any, targets: Any, labels: Sequence[str], groups: Sequence[str] | None = None,
                    zero_shot_scores: Any = None) -> list[dict]:
    """One row per class, in label order: ``label``, ``group``, ``positives`` (count), ``AP`` (ranked, percent),
    ``AP_tie_aware`` and, with ``zero_shot_scores``, ``zero_shot_AP`` and ``AP_gain`` (= AP - zero_shot_AP)."""
    from hspnet.metrics import average_precision_ranked, average_precision_tie_aware

    scores, targets = _check_score_matrix(scores, targets, labels, "scores")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    if zero_shot_scores is not None:
        zero_shot_scores, _ = _check_score_matrix(zero_shot_scores, targets, labels, "zero_shot_scores")
    ap = 100.0 * average_precision_ranked(scores, targets)
    ap_tie = 100.0 * average_precision_tie_aware(scores, targets)
    positives = np.asarray(targets).sum(axis=0).astype(int)
    zs = None if zero_shot_scores is None else 100.0 * average_precision_ranked(zero_shot_scores, targets)
    rows = []
    for i, name in enumerate(labels):
        row = {"label": name, "group": groups[i] if groups is not None else "", "positives": int(positives[i]),
               "AP": float(ap[i]), "AP_tie_aware": float(ap_tie[i])}
        if zs is not None:
            row["zero_shot_AP"] = float(zs[i])
            row["AP_gain"] = float(ap[i] - zs[i])
        rows.append(row)
    return rows


def per_class_table_text(rows: list[dict], fmt: str) -> str:
    """The rows of :func:`per_class_table` as CSV (``fmt="csv"``) or a Markdown table (``fmt="md"``)."""
    if not rows:
        raise ValueError("no per-class rows to write")
    columns = list(rows[0])
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        return buffer.getvalue()
    if fmt == "md":
        return _markdown_rows(rows, columns)
    raise ValueError(f"the per-class table is written as csv or md, not {fmt!r}")


def write_per_class_table(rows: list[dict], path: str) -> str:
    """Write the rows of :func:`per_class_table` as CSV (``.csv``) or a Markdown table (``.md``), atomically."""
    path = os.fspath(path)
    if not path.endswith((".csv", ".md")):
        raise ValueError(f"{path}: the per-class table is written as .csv or .md")
    return write_output(path, per_class_table_text(rows, "csv" if path.endswith(".csv") else "md"))


def _markdown_rows(rows: list[dict], columns: list[str]) -> str:
    aligns = ["---:" if isinstance(rows[0][c], (int, float)) else "---" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def format_metrics_table(metrics: dict, zero_shot: dict | None = None, k: int = 3) -> str:
    """A plain-text table of every metric (percent): HSPNet, and zero-shot CLIP with the difference if given."""
    keys = [key for key in METRIC_ORDER if key in metrics]
    keys += [f"{key}_top{k}" for key in METRIC_ORDER[2:] if f"{key}_top{k}" in metrics]
    keys += [key for key in metrics if key not in keys and key != "num_samples"]
    header = f"{'metric':<22}{'HSPNet':>10}" + (f"{'zero-shot':>12}{'diff':>10}" if zero_shot else "")
    lines = [header, "-" * len(header)]
    for key in keys:
        line = f"{key:<22}{metrics[key]:>10.2f}"
        if zero_shot and key in zero_shot:
            line += f"{zero_shot[key]:>12.2f}{metrics[key] - zero_shot[key]:>+10.2f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def precision_recall_curve(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` of ONE class at every distinct score threshold, from the highest score down (tied
    scores form one point, as scikit-learn). Empty arrays when the class has no positive."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel()
    if s.shape != t.shape:
        raise ValueError(f"precision_recall_curve: {s.size} scores for {t.size} targets")
    if not np.isfinite(s).all():
        raise ValueError("precision_recall_curve: the scores hold NaN or infinite values")
    t = t.astype(bool)
    n_pos = int(t.sum())
    if n_pos == 0 or s.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    hits = np.cumsum(t)
    last_of_group = np.r_[s[:-1] != s[1:], True]
    ranks = np.arange(1, s.size + 1)
    return (hits / ranks)[last_of_group], (hits / n_pos)[last_of_group]


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the PNG report needs matplotlib: pip install matplotlib (or pip install 'hspnet[train]'); "
            "pass --no_plot to evaluate without it"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_report(scores: Any, targets: Any, labels: Sequence[str], path: str, zero_shot_scores: Any = None,
                num_curves: int = 3, title: str | None = None, max_bars: int = MAX_BARS) -> str:
    """Write :func:`report_png` to ``path`` (atomically: complete or not at all) and return ``path``."""
    return write_output(os.fspath(path),
                        report_png(scores, targets, labels, zero_shot_scores, num_curves, title, max_bars))


def bar_classes(ap: np.ndarray, positives: np.ndarray, max_bars: int = MAX_BARS) -> tuple[list[int], list[int], str]:
    """Which classes the AP bar chart of :func:`report_png` draws: ``(first, second, note)``.

    With at most ``max_bars`` classes: every class by decreasing AP (``first``), no ``second``, no note. With more:
    only classes with positives (the others have AP 0 by definition), all of them if they fit, else the
    ``max_bars // 2`` best (``first``) and the rest of ``max_bars`` worst (``second``), and a ``note`` that says what
    is drawn. Ties keep the label order."""
    max_bars = check_positive_int(max_bars, "max_bars")
    ap = np.asarray(ap, dtype=np.float64)
    order = np.argsort(-ap, kind="stable")
    if ap.size <= max_bars:
        return [int(i) for i in order], [], ""
    ranked = [int(i) for i in order[np.asarray(positives)[order] > 0]]
    without = ap.size - len(ranked)
    note = f"{ap.size:,} classes; {without:,} without positives (AP 0) not drawn"
    if len(ranked) <= max_bars:
        return ranked, [], note
    best = max(1, max_bars // 2)
    worst = max(0, max_bars - best)
    note = (f"{ap.size:,} classes: the {best} best and {worst} worst of the {len(ranked):,} with positives drawn"
            + (f", {without:,} without positives (AP 0) not drawn" if without else ""))
    return ranked[:best], ranked[len(ranked) - worst:] if worst else [], note


def report_png(scores: Any, targets: Any, labels: Sequence[str], zero_shot_scores: Any = None, num_curves: int = 3,
               title: str | None = None, max_bars: int = MAX_BARS) -> bytes:
    """A PNG (bytes): per-class AP bars (sorted, with the zero-shot AP as markers) on top, precision-recall curves of
    the ``num_curves`` best and worst classes (by AP, among classes with positives; zero-shot curves dashed) below.
    At most ``max_bars`` bars: with more classes, the best and worst classes with positives (see
    :func:`bar_classes`; the chart's title says so), so that the report stays readable and fast for 10,000 labels.
    Needs matplotlib (imported lazily, Agg backend)."""
    from hspnet.metrics import average_precision_ranked, mean_average_precision

    num_curves = check_positive_int(num_curves, "num_curves")
    max_bars = check_positive_int(max_bars, "max_bars")
    labels = list(labels)
    scores, targets = _check_score_matrix(scores, targets, labels, "scores")
    if zero_shot_scores is not None:
        zero_shot_scores, _ = _check_score_matrix(zero_shot_scores, targets, labels, "zero_shot_scores")
    plt = _import_pyplot()
    ap = 100.0 * average_precision_ranked(scores, targets)
    zs_ap = None if zero_shot_scores is None else 100.0 * average_precision_ranked(zero_shot_scores, targets)
    positives = np.asarray(targets).sum(axis=0)
    order = np.argsort(-ap, kind="stable")
    with_pos = [int(i) for i in order[positives[order] > 0]]
    k = max(1, min(num_curves, len(with_pos) // 2 or 1))
    best, worst = with_pos[:k], with_pos[::-1][:k]

    first, second, note = bar_classes(ap, positives, max_bars)
    drawn = first + second
    x = np.concatenate([np.arange(len(first)), len(first) + 1 + np.arange(len(second))]).astype(float)
    n = len(drawn) + (1 if second else 0)
    width = min(30.0, max(10.0, 0.28 * n))
    fig = plt.figure(figsize=(width, 10), dpi=100)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.1, 1.0], hspace=0.55, wspace=0.2)
    bars = fig.add_subplot(grid[0, :])
    bars.bar(x, ap[drawn], color="tab:blue", label="HSPNet")
    if zs_ap is not None and drawn:
        bars.scatter(x, zs_ap[drawn], color="tab:orange", marker="_", s=200, linewidths=2.5, label="zero-shot CLIP",
                     zorder=3)
    if second:
        bars.axvline(len(first), color="gray", linestyle=":", linewidth=1)
        bars.text(len(first), 50, "...", ha="center", va="center", fontsize=14, color="gray")
    bars.set_xticks(x)
    bars.set_xticklabels([labels[i] for i in drawn], rotation=75, ha="right",
                         fontsize=max(4, min(9, 600 // max(n, 1))))
    bars.set_ylabel("AP (%)")
    bars.set_ylim(0, 100)
    bars.set_xlim(-0.6, max(n, 1) - 0.4)
    summary = f"mAP {mean_average_precision(scores, targets):.2f}"
    if zero_shot_scores is not None:
        summary += f" (zero-shot CLIP {mean_average_precision(zero_shot_scores, targets):.2f})"
    bars.set_title(f"{title + ': ' if title else ''}per-class AP, {summary}, {targets.shape[0]} images"
                   + (f"\n({note}; every class is in per_class_ap.csv)" if note else ""))
    bars.grid(axis="y", alpha=0.3)
    if drawn:
        bars.legend(loc="upper right")

    for column, (name, classes) in enumerate((("best", best), ("worst", worst))):
        axis = fig.add_subplot(grid[1, column])
        colors = plt.get_cmap("tab10")
        for j, c in enumerate(classes):
            precision, recall = precision_recall_curve(scores[:, c], targets[:, c])
            axis.step(recall, precision, where="post", color=colors(j), label=f"{labels[c]} (AP {ap[c]:.1f})")
            if zero_shot_scores is not None:
                precision, recall = precision_recall_curve(np.asarray(zero_shot_scores)[:, c], targets[:, c])
                axis.step(recall, precision, where="post", color=colors(j), linestyle="--", alpha=0.7,
                          label=f"  zero-shot (AP {zs_ap[c]:.1f})")
        axis.set_xlim(0, 1.01)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
        axis.set_title(f"precision-recall: {len(classes)} {name} class{'es' if len(classes) > 1 else ''}")
        axis.grid(alpha=0.3)
        if classes:
            axis.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def read_dataset_image(value: Any, max_pixels: int | None = MAX_IMAGE_PIXELS):
    """One value of a dataset's image column as the 8-bit RGB ``PIL.Image`` the model sees, read exactly as
    ``predict.py`` reads a file: a local path (or ``{"path": ..., "bytes": None}``, the undecoded ``datasets.Image``
    value) through :func:`hspnet.images.open_image`; embedded bytes decoded and passed to
    :func:`hspnet.images.to_rgb` (EXIF orientation, 16-bit and float images scaled), with the same decompression-bomb
    limit; an already decoded ``PIL.Image`` through :func:`hspnet.images.to_rgb`. Raises
    :class:`hspnet.images.ImageReadError` naming the file."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    if not isinstance(value, dict):
        raise ValueError("expected an image (a path, a PIL image or a datasets Image value), got "
                         f"{type(value).__name__}")
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        return open_image(data, max_pixels=max_pixels, name=path or "<an image embedded in the dataset>")
    if not path:
        raise ValueError("a dataset image has neither bytes nor a path")
    if "://" in path or "::" in path:  # a remote file (hf://, https://...): datasets' own reader
        import datasets

        return to_rgb(datasets.Image().decode_example(value))
    return load_image(path, max_pixels=max_pixels)


def make_eval_transform(image_processor, num_labels: int, permutation: list[int] | None = None,
                        max_pixels: int | None = MAX_IMAGE_PIXELS):
    """A ``datasets`` ``with_transform`` function for evaluation: images -> ``pixel_values`` (each read by
    :func:`read_dataset_image`, as ``predict.py`` reads it), label lists -> multi-hot ``labels`` in the model's label
    order (``permutation[dataset_index] = model_index``). Give it the dataset with its image column cast to
    ``datasets.Image(decode=False)`` so that files are read by :func:`hspnet.images.open_image` (decoded images
    work too)."""
    from hspnet.data import to_multi_hot

    num_labels = check_positive_int(num_labels, "num_labels")

    def multi_hot(rows) -> torch.Tensor:
        if permutation is not None:
            rows = [[permutation[i] for i in row] for row in rows]
        return torch.from_numpy(to_multi_hot(rows, num_labels))

    def transform(batch: dict) -> dict:
        images = [read_dataset_image(value, max_pixels) for value in batch["image"]]
        out = {"pixel_values": image_processor(images=images, return_tensors="pt")["pixel_values"]}
        out["labels"] = multi_hot(batch["labels"])
        return out

    return transform


def _undecoded(data):
    """``data`` with its image column left undecoded, so that :func:`read_dataset_image` reads the files."""
    import datasets

    feature = data.features.get("image")
    if isinstance(feature, datasets.Image) and feature.decode:
        return data.cast_column("image", datasets.Image(decode=False))
    return data


def _evaluate(model, data, image_processor, permutation, num_labels, accelerator, batch_size, num_workers,
              description, threshold, top_k):
    from torch.utils.data import DataLoader

    from hspnet.engine import collate, evaluate_model

    data = _undecoded(data).select_columns(["image", "labels"])
    loader = DataLoader(data.with_transform(make_eval_transform(image_processor, num_labels, permutation)),
                        batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    loader = accelerator.prepare(loader)
    model.to(accelerator.device)
    try:
        metrics, accumulator = evaluate_model(model, loader, accelerator, num_labels, description, threshold, top_k)
    except RuntimeError as error:  # an ImageReadError raised in a DataLoader worker comes back as a RuntimeError
        found = re.findall(r"ImageReadError: (.+)", str(error))
        if found:
            raise ValueError(found[-1].strip()) from error
        raise
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
    check_zero_shot_template(getattr(args, "zero_shot_template", ZERO_SHOT_TEMPLATE))
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
    :func:`build_argument_parser` (see :func:`parse_args`)."""
    from accelerate import Accelerator

    from hspnet.prediction import label_names, load_model

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
        # the earlier version of every file not yet written intact
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


def _per_class_text(rows: list[dict], limit: int = 40) -> str:
    columns = [c for c in ("label", "group", "positives", "AP", "zero_shot_AP", "AP_gain") if c in rows[0]]
    ranked = sorted(rows, key=lambda r: -r["AP"])
    shown = ranked if len(ranked) <= limit else ranked[: limit // 2] + [None] + ranked[-(limit // 2):]
    widths = {c: max(len(c), *(len(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for r in rows))
              for c in columns}
    lines = ["per-class AP (%), best first:", "  ".join(f"{c:<{widths[c]}}" for c in columns)]
    for row in shown:
        if row is None:
            lines.append(f"... ({len(rows) - limit} more, see per_class_ap.csv) ...")
            continue
        lines.append("  ".join(
            f"{row[c]:>{widths[c]}.2f}" if isinstance(row[c], float) else
            (f"{row[c]:>{widths[c]}}" if isinstance(row[c], int) else f"{row[c]:<{widths[c]}}") for c in columns))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def build_argument_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a trained HSPNet model on a prepared dataset split (every metric of hspnet.metrics, a "
        "per-class AP table, a PNG report) next to the zero-shot CLIP baseline. Runs under `accelerate launch` too.",
    )
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--dataset", default="demo",
                        help="demo | coco | voc | nuswide | cub | folder, or a folder written by save_prepared_dataset "
                        "(datasets_scripts/prepare.py) (default: demo)")
    parser.add_argument("--dataset_root", default=None, help="root folder of coco / voc / nuswide / cub / folder")
    parser.add_argument("--dataset_options", type=json_object, default={}, metavar="JSON",
                        help="keyword arguments of the dataset loader, as when training (e.g. '{\"num_test\": 200}')")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="per-process batch size (default 64)")
    parser.add_argument("--output_dir", default=None,
                        help="where to write metrics.json, per_class_ap.csv/.md, report.png (default: "
                        "MODEL/eval_DATASET_SPLIT for a local model, else ./eval_MODEL_DATASET_SPLIT)")
    parser.add_argument("--zero_shot_clip", "--zero_shot", dest="zero_shot_clip", default="auto", metavar="CLIP",
                        help="CLIP for the zero-shot baseline: a Hub id, a folder, tiny-random (the demo's), or none; "
                        "default auto: the CLIP recorded in the model card, if it is available locally")
    parser.add_argument("--zero_shot_template", default=ZERO_SHOT_TEMPLATE,
                        help=f"prompt of the zero-shot baseline (default {ZERO_SHOT_TEMPLATE!r})")
    parser.add_argument("--threshold", type=probability, default=0.5,
                        help="decision threshold on sigmoid scores, in [0, 1] (default 0.5)")
    parser.add_argument("--top_k", type=positive_int, default=3, help="k of the top-k metrics (default 3)")
    parser.add_argument("--max_samples", type=positive_int, default=None, help="evaluate the first N images only")
    parser.add_argument("--cache_dir", default=None, help="datasets cache folder (as used when training)")
    parser.add_argument("--num_workers", type=int, default=0, help="dataloader workers (default 0)")
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                        help="default: what accelerate launch / accelerate config says")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    parser.add_argument("--no_plot", action="store_true", help="do not write report.png (no matplotlib needed)")
    parser.add_argument("--trust_remote_code", action="store_true", help="for Hub models that need their own code")
    parser.add_argument("--torch_compile", action="store_true", help="run the model through torch.compile (same "
                        "scores within float rounding; pays off for many images, the first batch compiles)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_argument_parser().parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = "evaluate.py") -> int:
    """Entry point of `scripts/evaluate.py`: 0 on success, 1 with a one-line ``error:`` message on bad input."""
    return run_cli(build_argument_parser(prog), run_evaluation, argv)


__all__ = [
    "ZERO_SHOT_NOTE",
    "ZERO_SHOT_TEMPLATE",
    "ZeroShotCLIPClassifier",
    "OUTPUT_FILES",
    "build_argument_parser",
    "check_zero_shot_template",
    "default_output_dir",
    "format_metrics_table",
    "label_permutation",
    "load_eval_split",
    "load_zero_shot_clip",
    "main",
    "make_eval_transform",
    "parse_args",
    "per_class_table",
    "per_class_table_text",
    "MAX_BARS",
    "bar_classes",
    "plot_report",
    "precision_recall_curve",
    "read_dataset_image",
    "read_model_card",
    "report_png",
    "resolve_zero_shot_clip",
    "run_evaluation",
    "write_per_class_table",
    "zero_shot_prompt",
    "zero_shot_logits",
]
