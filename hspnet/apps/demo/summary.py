"""What a demo page knows about its model: the labels and their groups (:class:`LabelGroups`, from the config) and
the summary of its model card (:func:`read_model_summary`: base CLIP, dataset, test metrics from
:data:`SUMMARY_FILES`), as markdown (:func:`summary_markdown`). Needs no gradio."""

from __future__ import annotations

import contextlib
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.models.loading import label_names
from hspnet.utils.files import is_hub_id, read_json_file

CARD_METRICS = ("mAP", "mAP_tie_aware", "CF1", "OF1", "mean_class_F1")
RESULTS_NAME = "all_results.json"
"""What a training run writes beside the model with its test metrics (read when the card has none)."""
SUMMARY_FILES = ("README.md", RESULTS_NAME, TRAINING_ARGS_NAME)
"""The files of a model folder :func:`read_model_summary` reads (a Space copies them with the model)."""
_MAX_CARD_BYTES = 1 << 20


@dataclass(frozen=True)
class LabelGroups:
    """The labels of a model (index order) and its groups: ``groups = [(group name, [label index, ...]), ...]`` in the
    config's group order, each group's labels in label order. A model without a hierarchy has one group, ``labels``."""

    names: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def from_config(cls, config) -> "LabelGroups":
        names = tuple(label_names(config))
        group_names = list(getattr(config, "group_names", None) or [])
        label_to_group = list(getattr(config, "label_to_group", None) or [])
        valid = (
            group_names
            and len(label_to_group) == len(names)
            and all(isinstance(g, int) and not isinstance(g, bool) and 0 <= g < len(group_names)
                    for g in label_to_group)
        )
        if not valid:
            return cls(names, (("labels", tuple(range(len(names)))),))
        members: list[list[int]] = [[] for _ in group_names]
        for index, group in enumerate(label_to_group):
            members[group].append(index)
        return cls(names, tuple((str(name), tuple(m)) for name, m in zip(group_names, members) if m))

    @property
    def num_labels(self) -> int:
        return len(self.names)


def _read_small_text(path: str) -> str | None:
    """A regular file's text (at most 1 MB), or None (missing, a FIFO / device, unreadable)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(_MAX_CARD_BYTES)
    except OSError:
        return None


def _model_file(model_name_or_path: str, filename: str) -> str | None:
    """``filename`` of a local folder, or of a Hub model when it is in the local cache / can be downloaded."""
    if os.path.isdir(model_name_or_path):
        path = os.path.join(model_name_or_path, filename)
        return path if os.path.lexists(path) else None
    if not is_hub_id(model_name_or_path):
        return None
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(model_name_or_path, filename)
    except Exception:  # noqa: BLE001 (offline, no such file, not a repo: no summary from it)
        return None


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def read_model_summary(model_name_or_path: str | os.PathLike | None, config=None) -> dict:
    """What the page shows about the model: ``{"name", "num_labels", "groups": [(group, [labels])], "base_model",
    "dataset", "metrics": {name: value}, "metrics_source"}``. Labels and groups come from ``config``; the rest from
    the model card (``README.md`` YAML: ``base_model``, ``datasets``, ``model-index`` metrics), else from
    ``all_results.json`` (``test`` metrics) and ``training_args.json`` (``dataset``, ``clip_model``) when present
    (:data:`SUMMARY_FILES`).
    Missing or malformed files leave fields empty; nothing here raises for a bad card."""
    name = os.fspath(model_name_or_path) if model_name_or_path is not None else ""
    summary: dict[str, Any] = {"name": os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name,
                               "num_labels": 0, "groups": [], "base_model": None, "dataset": None, "metrics": {},
                               "metrics_source": None}
    if config is not None:
        with contextlib.suppress(ValueError):
            groups = LabelGroups.from_config(config)
            summary["num_labels"] = groups.num_labels
            summary["groups"] = [(g, [groups.names[i] for i in members]) for g, members in groups.groups]
    if not name:
        return summary
    card_path = _model_file(name, "README.md")
    text = _read_small_text(card_path) if card_path else None
    meta: dict = {}
    if text:
        match = re.match(r"\ufeff?---\s*\n(.*?)\n---", text, re.S)
        if match:
            import yaml

            with contextlib.suppress(yaml.YAMLError):
                loaded = yaml.safe_load(match.group(1))
                meta = loaded if isinstance(loaded, dict) else {}
    if isinstance(meta.get("base_model"), str):
        summary["base_model"] = meta["base_model"]
    datasets = meta.get("datasets")
    if isinstance(datasets, list) and datasets and isinstance(datasets[0], str):
        summary["dataset"] = datasets[0]
    index = meta.get("model-index")
    if isinstance(index, list):
        for entry in index:
            for result in (entry.get("results") or []) if isinstance(entry, dict) else []:
                if not isinstance(result, dict):
                    continue
                dataset = result.get("dataset") if isinstance(result.get("dataset"), dict) else {}
                if summary["dataset"] is None and isinstance(dataset.get("name"), str) and dataset["name"]:
                    summary["dataset"] = dataset["name"]
                for metric in result.get("metrics") or []:
                    if isinstance(metric, dict) and isinstance(metric.get("type"), str):
                        value = _finite_number(metric.get("value"))
                        if value is not None:
                            summary["metrics"].setdefault(metric.get("name") or metric["type"], value)
        if summary["metrics"]:
            summary["metrics_source"] = "model card"
    for filename, apply in ((RESULTS_NAME, _apply_all_results), (TRAINING_ARGS_NAME, _apply_training_args)):
        path = _model_file(name, filename)
        if path:
            with contextlib.suppress(OSError, ValueError):  # missing, a FIFO, malformed: nothing from it
                loaded = read_json_file(path, filename)
                if isinstance(loaded, dict):
                    apply(summary, loaded)
    return summary


def _apply_all_results(summary: dict, results: dict) -> None:
    test = results.get("test")
    if summary["metrics"] or not isinstance(test, dict):
        return
    metrics = {key: _finite_number(test.get(key)) for key in CARD_METRICS}
    summary["metrics"] = {key: value for key, value in metrics.items() if value is not None}
    if summary["metrics"]:
        summary["metrics_source"] = "all_results.json (test split)"


def _apply_training_args(summary: dict, args: dict) -> None:
    if summary["dataset"] is None and isinstance(args.get("dataset"), str):
        summary["dataset"] = args["dataset"]
    if summary["base_model"] is None and isinstance(args.get("clip_model"), str):
        summary["base_model"] = args["clip_model"]


def summary_markdown(summary: dict) -> str:
    """The model summary as markdown (names escaped)."""

    def esc(text: Any) -> str:
        return re.sub(r"([\\`*_{}\[\]<>()#+!|])", r"\\\1", str(text))

    groups = summary.get("groups") or []
    lines = []
    head = f"**Model** `{summary['name']}`: " if summary.get("name") else ""
    head += f"{summary.get('num_labels', 0)} labels in {len(groups)} group{'s' if len(groups) != 1 else ''}"
    extras = []
    if summary.get("base_model"):
        extras.append(f"base CLIP `{summary['base_model']}`")
    if summary.get("dataset"):
        extras.append(f"trained on {esc(summary['dataset'])}")
    lines.append(head + (" · " + " · ".join(extras) if extras else "") + ".")
    metrics = summary.get("metrics") or {}
    if metrics:
        shown = " · ".join(f"{esc(k)} **{v:.2f}**" for k, v in metrics.items())
        lines.append(f"Test metrics ({esc(summary.get('metrics_source') or 'model card')}): {shown}.")
    if groups:
        lines.append("")
        lines += [f"- **{esc(group)}**: {', '.join(esc(label) for label in labels)}" for group, labels in groups]
    return "\n".join(lines)
