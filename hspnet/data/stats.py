"""Statistics of a prepared dataset: images per split, labels per image, positives per label."""

from __future__ import annotations

from typing import Any

import numpy as np

from hspnet.data.core import get_build_report
from hspnet.data.hierarchy import get_hierarchy


def _label_counts(dataset, name: str, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels per row, positives per label) of a ``List(ClassLabel)`` column, computed on the Arrow data."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.select_columns([name]).with_format("arrow")[:][name]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.nan_to_num(lengths).astype(np.int64), np.bincount(flat, minlength=num_labels)


def dataset_statistics(dataset_dict) -> dict[str, Any]:
    """``{"labels", "groups", "label_to_group", "splits": {split: {...}}, "report": {...}}`` where each split has
    ``num_images``, ``labels_per_image`` (mean/min/max), ``positives`` (per label) and, for training splits,
    ``observed_positives`` (per label)."""
    hierarchy = get_hierarchy(dataset_dict)
    splits = {}
    for split, dataset in dataset_dict.items():
        counts, positives = _label_counts(dataset, "labels", hierarchy.num_labels)
        entry: dict[str, Any] = {
            "num_images": int(len(counts)),
            "labels_per_image": {
                "mean": float(counts.mean()) if len(counts) else 0.0,
                "min": int(counts.min()) if len(counts) else 0,
                "max": int(counts.max()) if len(counts) else 0,
            },
            "positives": positives.tolist(),
        }
        if "observed_labels" in dataset.column_names:
            entry["observed_positives"] = _label_counts(dataset, "observed_labels", hierarchy.num_labels)[1].tolist()
        splits[split] = entry
    return {**hierarchy.to_dict(), "splits": splits, "report": get_build_report(dataset_dict)}


MAX_LABEL_ROWS = 100
"""At most this many rows in the positives-per-label table of :func:`format_statistics` (the first and the last
labels, with a line saying how many are left out); the statistics themselves (``--json``) keep every label."""


def format_statistics(
    dataset_dict_or_stats, max_label_width: int = 28, max_label_rows: int | None = MAX_LABEL_ROWS
) -> str:
    """A plain-text table of :func:`dataset_statistics`. With more than ``max_label_rows`` labels (None: no limit)
    the positives-per-label table shows the first and last ``max_label_rows // 2`` labels only, and says so."""
    stats = (
        dataset_dict_or_stats
        if isinstance(dataset_dict_or_stats, dict) and "splits" in dataset_dict_or_stats
        else dataset_statistics(dataset_dict_or_stats)
    )
    report = stats.get("report", {})
    labels, groups, label_to_group = stats["labels"], stats["groups"], stats["label_to_group"]
    lines = []
    title = f"Dataset {report.get('dataset', '?')}: {len(labels)} labels in {len(groups)} groups"
    if report:
        protocol = report.get("protocol", "?")
        fraction = report.get("validation_fraction", 0)
        title += f"; protocol {protocol}" + (
            f" (validation = {fraction:.0%} of train)" if protocol == "heldout" else ""
        )
        title += f"; seed {report.get('seed', '?')}"
    lines += [title, f"Observed labels: {report.get('observed_labels', '?')}", ""]
    header = f"{'split':<12}{'images':>9}{'labels/image':>14}{'min':>5}{'max':>5}{'observed':>10}"
    lines += [header, "-" * len(header)]
    for split, entry in stats["splits"].items():
        per = entry["labels_per_image"]
        observed = sum(entry["observed_positives"]) if "observed_positives" in entry else "-"
        lines.append(
            f"{split:<12}{entry['num_images']:>9}{per['mean']:>14.2f}{per['min']:>5}{per['max']:>5}{observed:>10}"
        )
    lines.append("")
    width = min(max_label_width, max(len(name) for name in labels))
    group_width = min(16, max(len(name) for name in groups))
    columns = []
    for split, entry in stats["splits"].items():
        columns.append((split, entry["positives"]))
        if "observed_positives" in entry:
            columns.append(("obs", entry["observed_positives"]))
    widths = [max(len(name), len(str(max(values, default=0)))) + 2 for name, values in columns]
    header = f"{'label':<{width}}  {'group':<{group_width}}" + "".join(
        f"{name:>{w}}" for (name, _), w in zip(columns, widths)
    )
    lines += [
        "Positives per label (obs = observed single positives of the split on its left)",
        header,
        "-" * len(header),
    ]
    rows: list[int | None] = list(range(len(labels)))
    if max_label_rows is not None and len(labels) > max(int(max_label_rows), 2):
        half = max(int(max_label_rows), 2) // 2
        rows = rows[:half] + [None] + rows[len(labels) - half :]
    for index in rows:
        if index is None:
            lines.append(f"... ({len(labels) - 2 * half:,} more labels; the JSON statistics (--json) list every label)")
            continue
        name = labels[index]
        shown = name if len(name) <= width else name[: width - 1] + "~"
        group = groups[label_to_group[index]][:group_width]
        lines.append(
            f"{shown:<{width}}  {group:<{group_width}}"
            + "".join(f"{values[index]:>{w}}" for (_, values), w in zip(columns, widths))
        )
    excluded = report.get("excluded") or {}
    if excluded:
        lines += ["", "Excluded: " + ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in excluded.items())]
    for key in ("missing_images", "unreadable_images"):
        if report.get(key, {}).get("count"):
            examples = report[key]["examples"][:5]
            lines.append(f"{key.replace('_', ' ').capitalize()}: {report[key]['count']} (e.g. {examples})")
    if report.get("observed_list"):
        info = report["observed_list"]
        lines.append(
            f"Observed-label list {info['file']}: {info['matched']}/{info['entries']} entries matched a "
            "training image; "
            f"{info['observed_label_not_among_positives']} observed label(s) not among the annotated positives"
        )
    if report.get("label_value_anomalies"):
        info = report["label_value_anomalies"]
        lines.append(f"Label values other than 0/1 (treated as 0): {info['count']} (e.g. {info['examples'][:3]})")
    if report.get("note"):
        lines.append(f"Note: {report['note']}")
    return "\n".join(lines)
