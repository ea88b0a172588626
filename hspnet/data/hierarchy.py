"""Label hierarchies: label names, group names and the group of each label.

A prepared dataset carries its hierarchy in its features: the ``labels`` column is
``List(ClassLabel(names=labels))`` and that ``ClassLabel``'s ``id`` field holds a small JSON document with the
group names and ``label_to_group``. Feature definitions survive ``save_to_disk``/``load_from_disk``, Parquet
export and ``push_to_hub``, so :func:`get_hierarchy` can rebuild the hierarchy from the dataset alone. A
human-readable copy is also kept in each split's ``info.description``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from hspnet.data.errors import DatasetFormatError, check_input_file
from hspnet.utils.files import read_json_file, read_text_file

logger = logging.getLogger(__name__)

HIERARCHY_KEY = "hspnet_hierarchy"

_BUILTIN_ALIASES = {
    "coco": "coco",
    "coco2014": "coco",
    "coco-2014": "coco",
    "mscoco": "coco",
    "voc": "voc",
    "voc2012": "voc",
    "voc-2012": "voc",
    "pascal": "voc",
    "nuswide": "nuswide",
    "nus-wide": "nuswide",
    "nus_wide": "nuswide",
    "nus": "nuswide",
    "cub": "cub",
    "cub200": "cub",
    "cub-200-2011": "cub",
    "cub_200_2011": "cub",
    "demo": "demo",
}
BUILTIN_HIERARCHIES = ("coco", "voc", "nuswide", "cub", "demo")


@dataclass
class Hierarchy:
    """A two-level label hierarchy: each of the ``C`` labels belongs to exactly one of ``G`` groups.

    Attributes:
        labels: the ``C`` label names, in label-index order.
        groups: the ``G`` group names, in group-index order.
        label_to_group: for each label, the index of its group in ``groups``.
        label_ids: optional: the dataset's own id of each label (e.g. the Open Images MID ``/m/0dzct``), so that
            predictions can be mapped back to it; ``None`` when the dataset has no such ids.
    """

    labels: list[str]
    groups: list[str]
    label_to_group: list[int] = field(default_factory=list)
    label_ids: list[str] | None = None

    def __post_init__(self):
        self.labels = [str(name) for name in self.labels]
        self.groups = [str(name) for name in self.groups]
        self.label_to_group = [_as_index(value, "label_to_group") for value in self.label_to_group]
        if self.label_ids is not None:
            self.label_ids = [str(value) for value in self.label_ids]
        self.validate()

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the problem if this is not a valid hierarchy."""
        if not self.labels:
            raise ValueError("Hierarchy: the label list is empty.")
        if not self.groups:
            raise ValueError("Hierarchy: the group list is empty.")
        _check_unique(self.labels, "label")
        _check_unique(self.groups, "group")
        if len(self.label_to_group) != len(self.labels):
            raise ValueError(
                f"Hierarchy: label_to_group has {len(self.label_to_group)} entries for {len(self.labels)} labels."
            )
        for index, group in enumerate(self.label_to_group):
            if not 0 <= group < len(self.groups):
                raise ValueError(
                    f"Hierarchy: label {self.labels[index]!r} has group index {group}, "
                    f"outside 0..{len(self.groups) - 1}."
                )
        used = set(self.label_to_group)
        empty = [name for index, name in enumerate(self.groups) if index not in used]
        if empty:
            raise ValueError(f"Hierarchy: group(s) {empty} have no label.")
        if self.label_ids is not None:
            if len(self.label_ids) != len(self.labels):
                raise ValueError(
                    f"Hierarchy: label_ids has {len(self.label_ids)} entries for {len(self.labels)} labels."
                )
            _check_unique(self.label_ids, "label id")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def group_of(self, label: str | int) -> str:
        """The group name of a label given by name or index."""
        index = label if isinstance(label, int) else self.labels.index(label)
        return self.groups[self.label_to_group[index]]

    def members(self) -> dict[str, list[str]]:
        """``{group name: [label names]}`` in index order."""
        out: dict[str, list[str]] = {name: [] for name in self.groups}
        for label, group in zip(self.labels, self.label_to_group):
            out[self.groups[group]].append(label)
        return out

    def to_dict(self) -> dict[str, Any]:
        """``{"labels", "groups", "label_to_group"}``, and ``"label_ids"`` when the labels have ids."""
        out = {"labels": list(self.labels), "groups": list(self.groups), "label_to_group": list(self.label_to_group)}
        if self.label_ids is not None:
            out["label_ids"] = list(self.label_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hierarchy:
        missing = [key for key in ("labels", "groups", "label_to_group") if key not in data]
        if missing:
            raise ValueError(f"Hierarchy: the mapping lacks {missing}.")
        ids = data.get("label_ids")
        return cls(
            labels=list(data["labels"]),
            groups=list(data["groups"]),
            label_to_group=list(data["label_to_group"]),
            label_ids=None if ids is None else list(ids),
        )

    @classmethod
    def from_mapping(cls, label_to_group_name: dict[str, str], labels: Sequence[str] | None = None) -> Hierarchy:
        """Build from ``{label: group name}``; groups are numbered in order of first appearance."""
        order = list(labels) if labels is not None else list(label_to_group_name)
        groups: list[str] = []
        for label in order:
            group = label_to_group_name[label]
            if group not in groups:
                groups.append(group)
        return cls(labels=order, groups=groups, label_to_group=[groups.index(label_to_group_name[x]) for x in order])

    def save(self, path: str | os.PathLike) -> str:
        """Write the hierarchy as JSON (``{"labels", "groups", "label_to_group"}``) atomically (a file that was there
        is replaced only by the complete new one); returns the path."""
        from hspnet.utils.files import write_text

        path = os.fspath(path)
        write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``HSPNetForImageClassification.from_clip(clip, **hierarchy.model_kwargs())``:
        ``labels``, ``groups``, ``label_to_group`` and, when the labels have ids, ``label_ids`` (kept in the model's
        config, so that its predictions can be mapped back to the dataset's ids)."""
        return self.to_dict()


def _as_index(value, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"Hierarchy: {what} entries must be integers, got {value!r}.")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"Hierarchy: {what} entries must be integers, got {value!r}.")


def _check_unique(names: list[str], what: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name.strip():
            raise ValueError(f"Hierarchy: {what} {index} has an empty name.")
        if name in seen:
            raise ValueError(f"Hierarchy: duplicate {what} name {name!r} (entries {seen[name]} and {index}).")
        seen[name] = index


# --------------------------------------------------------------------------------------------------------------
# Built-in hierarchies


def builtin_hierarchy_name(name: str) -> str:
    """Canonical name (``coco``, ``voc``, ``nuswide``, ``cub``, ``demo``) for a dataset name or alias."""
    key = str(name).strip().lower()
    if key not in _BUILTIN_ALIASES:
        raise ValueError(f"No built-in hierarchy named {name!r}; choose one of {', '.join(BUILTIN_HIERARCHIES)}.")
    return _BUILTIN_ALIASES[key]


def _builtin_json(name: str) -> dict[str, Any]:
    text = resources.files("hspnet.data").joinpath("hierarchies", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def builtin_hierarchy(name: str) -> Hierarchy:
    """The hierarchy of a benchmark: ``"coco"`` (80 labels / 12 COCO supercategories), ``"voc"`` (20 / 4),
    ``"nuswide"`` (81 / 6), ``"cub"`` (312 / 20), all equal to the HSPNet authors' files, or ``"demo"`` (12 / 3, the
    shapes :mod:`hspnet.data.demo` draws). Each is a JSON file under ``hspnet/data/hierarchies/``."""
    return Hierarchy.from_dict(_builtin_json(builtin_hierarchy_name(name)))


def coco_category_ids() -> list[int]:
    """The 80 COCO-2014 category ids, in label-index order."""
    return list(_builtin_json("coco")["category_ids"])


# --------------------------------------------------------------------------------------------------------------
# Hierarchy <-> dataset features


def hierarchy_to_feature_id(hierarchy: Hierarchy) -> str:
    payload: dict[str, Any] = {"groups": hierarchy.groups, "label_to_group": hierarchy.label_to_group}
    if hierarchy.label_ids is not None:
        payload["label_ids"] = hierarchy.label_ids
    return json.dumps({HIERARCHY_KEY: payload})


def label_feature(hierarchy: Hierarchy):
    """``ClassLabel(names=labels)`` carrying the groups in its ``id`` field."""
    from datasets import ClassLabel

    return ClassLabel(names=list(hierarchy.labels), id=hierarchy_to_feature_id(hierarchy))


def _hierarchy_from_features(features) -> Hierarchy | None:
    from datasets import ClassLabel, List

    if features is None or "labels" not in features:
        return None
    feature = features["labels"]
    if isinstance(feature, List):
        feature = feature.feature
    if isinstance(feature, list) and feature:
        feature = feature[0]
    if not isinstance(feature, ClassLabel) or not feature.names:
        return None
    if feature.id:
        try:
            payload = json.loads(feature.id).get(HIERARCHY_KEY)
        except (ValueError, AttributeError):
            payload = None
        if payload:
            return Hierarchy(
                labels=list(feature.names),
                groups=payload["groups"],
                label_to_group=payload["label_to_group"],
                label_ids=payload.get("label_ids"),
            )
    return None


def _hierarchy_from_info(info) -> Hierarchy | None:
    description = getattr(info, "description", None)
    if not description:
        return None
    try:
        payload = json.loads(description)
    except ValueError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("hspnet"), dict) and "hierarchy" in payload["hspnet"]:
        return Hierarchy.from_dict(payload["hspnet"]["hierarchy"])
    return None


def get_hierarchy(source) -> Hierarchy:
    """Read the hierarchy back from a prepared dataset.

    ``source`` may be a ``DatasetDict``, ``Dataset`` or ``IterableDataset`` prepared by this package (also after
    ``save_to_disk``/``load_from_disk``, Parquet or the Hub), the path of a dataset saved with ``save_to_disk``,
    a hierarchy file (see :func:`load_hierarchy_file`), ``datasets.Features``, a ``{"labels", "groups",
    "label_to_group"}`` mapping, or a :class:`Hierarchy`.
    """
    import datasets

    if isinstance(source, Hierarchy):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            return get_hierarchy(datasets.load_from_disk(path))
        return load_hierarchy_file(path)
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        errors = []
        for split in source.values():
            try:
                return get_hierarchy(split)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError("No split of the DatasetDict carries a label hierarchy: " + "; ".join(errors))
    if isinstance(source, datasets.Features):
        found = _hierarchy_from_features(source)
        if found is None:
            raise ValueError(
                "These features carry no label hierarchy (expected `labels`: List(ClassLabel) with groups)."
            )
        return found
    if isinstance(source, dict):
        return Hierarchy.from_dict(source)
    features = getattr(source, "features", None)
    found = _hierarchy_from_features(features)
    if found is None:
        found = _hierarchy_from_info(getattr(source, "info", None))
    if found is None:
        raise ValueError(
            "This dataset carries no label hierarchy. Prepare it with hspnet.data (load_coco, load_custom_dataset, "
            "...), or build one with load_hierarchy_file(...) or auto_hierarchy(label_names)."
        )
    return found


# --------------------------------------------------------------------------------------------------------------
# Hierarchy files


def load_hierarchy_file(path: str | os.PathLike, label_names: Sequence[str] | None = None) -> Hierarchy:
    """Read a hierarchy file.

    Formats:
      * JSON ``{"labels": [...], "groups": [...], "label_to_group": [...]}``;
      * JSON ``{"cat": "animal", "dog": "animal", "car": "vehicle"}`` (label -> group);
      * JSON ``{"animal": ["cat", "dog"], "vehicle": ["car"]}`` (group -> labels);
      * text / CSV / TSV: one ``label,group`` (or ``label<TAB>group``) per line; an optional ``label,group``
        header; blank lines and lines starting with ``#`` are ignored.

    Files may start with a UTF-8 byte-order mark (Excel). Mistakes raise :class:`DatasetFormatError` naming the
    file and the line or key: a JSON object with the same key twice (a label or a group given twice), a label in
    two groups or twice in one group, a group listed twice in ``groups``, two group names that differ only in
    letter case or surrounding spaces (``"Animal"`` / ``"animal"``), a table line without two fields.

    With ``label_names``, the result follows that label order, every label must have a group (else
    :class:`DatasetFormatError`), labels of the file that are not in ``label_names`` are ignored (with a warning),
    and groups left without a label are dropped.
    """
    path = check_input_file(os.fspath(path), "hierarchy file")
    if path.lower().endswith(".json"):
        mapping = _read_hierarchy_json(path)
    else:
        mapping = _read_hierarchy_table(path)
    if isinstance(mapping, Hierarchy):
        if label_names is None:
            return mapping
        mapping = {label: mapping.groups[group] for label, group in zip(mapping.labels, mapping.label_to_group)}
    if label_names is None:
        try:
            return Hierarchy.from_mapping(mapping)
        except ValueError as error:
            raise DatasetFormatError(str(error), file=path) from None
    label_names = list(label_names)
    lacking = [name for name in label_names if name not in mapping]
    if lacking:
        shown = ", ".join(repr(name) for name in lacking[:10])
        more = f" and {len(lacking) - 10} more" if len(lacking) > 10 else ""
        raise DatasetFormatError(
            f"label(s) {shown}{more} of the dataset have no group in this hierarchy file", file=path
        )
    known = set(label_names)
    extra = [name for name in mapping if name not in known]
    if extra:
        logger.warning("%s: ignoring %d label(s) that the dataset does not have: %s", path, len(extra), extra[:10])
    try:
        return Hierarchy.from_mapping(mapping, labels=label_names)
    except ValueError as error:
        raise DatasetFormatError(str(error), file=path) from None


def _read_hierarchy_json(path: str):
    data = read_json_file(path, "hierarchy file", error=DatasetFormatError)
    if not isinstance(data, dict) or not data:
        raise DatasetFormatError("expected a non-empty JSON object", file=path)
    if "labels" in data and "label_to_group" in data:
        groups = data.get("groups")
        if isinstance(groups, list):
            _check_group_names([(str(name), None) for name in groups], path, field="groups", distinct=True)
        try:
            return Hierarchy.from_dict(data)
        except (ValueError, TypeError) as error:
            raise DatasetFormatError(str(error), file=path) from None
    if all(isinstance(value, str) for value in data.values()):
        _check_group_names([(group, None) for group in data.values()], path)
        return {str(label): group for label, group in data.items()}
    if all(isinstance(value, list) for value in data.values()):
        _check_group_names([(group, None) for group in data], path)
        mapping: dict[str, str] = {}
        for group, members in data.items():
            for label in members:
                if not isinstance(label, str):
                    raise DatasetFormatError(f"label names must be strings, got {label!r}", file=path, field=group)
                if label in mapping:
                    where = (
                        f"twice in group {group!r}"
                        if mapping[label] == group
                        else f"in two groups ({mapping[label]!r} and {group!r})"
                    )
                    raise DatasetFormatError(f"label {label!r} is listed {where}", file=path, field=group)
                mapping[label] = group
        return mapping
    raise DatasetFormatError(
        'expected {"labels", "groups", "label_to_group"}, {label: group} or {group: [labels]}', file=path
    )


def _check_group_names(
    names: list[tuple[str, int | None]], path: str, field: str | None = None, distinct: bool = False
) -> None:
    """Refuse names that mean ONE group twice: the same up to letter case and surrounding / repeated spaces, or
    (``distinct=True``, a list of groups) the same name twice. ``names`` = ``(name, line or None)``."""
    first: dict[str, tuple[str, int | None, int]] = {}
    for index, (name, line) in enumerate(names):
        key = " ".join(str(name).split()).casefold()
        if key not in first:
            first[key] = (name, line, index)
            continue
        other, other_line, other_index = first[key]
        if other != name:
            at = f" (line {other_line})" if other_line is not None else ""
            raise DatasetFormatError(
                f"group {name!r} and group {other!r}{at} differ only in letter case or spaces: write the group the "
                "same way everywhere",
                file=path,
                line=line,
                field=field,
            )
        if distinct:
            raise DatasetFormatError(
                f"group {name!r} is listed twice (entries {other_index} and {index})", file=path, line=line, field=field
            )


def _read_hierarchy_table(path: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    lines: dict[str, int] = {}
    groups: list[tuple[str, int]] = []
    text = read_text_file(path, "hierarchy file", error=DatasetFormatError)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        delimiter = "\t" if "\t" in line else ","
        fields = [value.strip() for value in next(csv.reader([line], delimiter=delimiter))]
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise DatasetFormatError(
                f"expected 'label{delimiter}group' (2 fields), got {len(fields)} field(s): {raw!r}",
                file=path,
                line=number,
            )
        label, group = fields
        if not mapping and label.lower() == "label" and group.lower() == "group":
            continue  # header
        if label in mapping:
            raise DatasetFormatError(
                f"label {label!r} is listed twice (first on line {lines[label]})", file=path, line=number
            )
        mapping[label] = group
        lines[label] = number
        groups.append((group, number))
    if not mapping:
        raise DatasetFormatError("the hierarchy file lists no label", file=path)
    _check_group_names(groups, path)
    return mapping


def resolve_hierarchy(label_names: Sequence[str], hierarchy: Any = None, *, builtin: str | None = None) -> Hierarchy:
    """The hierarchy for ``label_names``: ``hierarchy`` if given (a :class:`Hierarchy`, mapping or file path),
    else the built-in one ``builtin`` when its labels are exactly ``label_names``, else an error. (An automatic
    hierarchy from CLIP is :func:`hspnet.data.clustering.auto_hierarchy`, chosen by the loaders that offer it.)"""
    names = list(label_names)
    if hierarchy is not None:
        if isinstance(hierarchy, (str, os.PathLike)):
            return load_hierarchy_file(hierarchy, label_names=names)
        found = hierarchy if isinstance(hierarchy, Hierarchy) else None
        if found is None and isinstance(hierarchy, dict):
            if "labels" in hierarchy and "label_to_group" in hierarchy:
                found = Hierarchy.from_dict(hierarchy)
            else:
                lacking = [name for name in names if name not in hierarchy]
                if lacking:
                    raise DatasetFormatError(f"label(s) {lacking[:10]} have no group in the given hierarchy mapping")
                return Hierarchy.from_mapping({name: hierarchy[name] for name in names}, labels=names)
        if found is None:
            raise TypeError(f"hierarchy must be a Hierarchy, a mapping or a file path, not {type(hierarchy).__name__}.")
        if found.labels != names:
            unknown = sorted(set(names) - set(found.labels))
            if unknown:
                raise DatasetFormatError(f"label(s) {unknown[:10]} of the dataset are not in the given hierarchy")
            mapping = {label: found.groups[group] for label, group in zip(found.labels, found.label_to_group)}
            return Hierarchy.from_mapping(mapping, labels=names)
        return found
    if builtin is not None:
        candidate = builtin_hierarchy(builtin)
        if candidate.labels == names:
            return candidate
    raise DatasetFormatError(
        "the labels do not match the built-in hierarchy; pass hierarchy=<a Hierarchy, a mapping or a hierarchy file>"
    )
