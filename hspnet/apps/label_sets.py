"""Labels at inference for the applications: a labels file (``hspnet predict --labels FILE`` / ``--add_labels FILE``,
the demo page's text box) turned into a call of the model's ``set_labels`` / ``add_labels``
(:mod:`hspnet.models.hspnet.modeling_label_set`; docs/open-vocabulary.md).

- :func:`parse_label_lines`: label names typed by a person (one per line, optionally ``label<TAB>group`` or
  ``label: group`` in a text box) -> ``(label, group or None)``;
- :func:`change_model_labels`: the checked call of ``set_labels`` / ``add_labels`` on a loaded model, with the group
  names of a labels file resolved first (an unknown group names the file and line);
- :func:`describe_label_change`: the lines that say which group each new label took and why.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from hspnet.data.errors import DatasetFormatError
from hspnet.data.text_files import read_label_set_file
from hspnet.models.loading import hspnet_base_model

__all__ = ["change_model_labels", "describe_label_change", "group_spec", "parse_label_lines", "read_label_set_file",
           "resolve_groups"]

MAX_TYPED_LABELS = 200
"""At most this many labels typed into the demo page's text box (each costs one text-tower pass)."""


def parse_label_lines(text: str, separator: str = ":", limit: int = MAX_TYPED_LABELS) -> list[tuple[str, str | None]]:
    """Labels typed by a person: one per line or comma-separated, each optionally ``label: group`` (``separator``);
    blank entries skipped, duplicates kept once (first), surrounding spaces dropped. ``ValueError`` (one line) for an
    empty label before the separator or more than ``limit`` labels."""
    if not isinstance(text, str):
        raise ValueError(f"labels must be text, got {type(text).__name__}")
    out: dict[str, str | None] = {}
    for line in text.replace("\r", "\n").split("\n"):
        for entry in line.split(","):
            entry = entry.strip()
            if not entry:
                continue
            name, found, group = entry.partition(separator)
            name, group = name.strip(), group.strip()
            if not name:
                raise ValueError(f"no label name before {separator!r} in {entry!r}")
            if name not in out:
                out[name] = group if found and group else None
    if len(out) > limit:
        raise ValueError(f"{len(out)} labels typed; at most {limit} at a time")
    return list(out.items())


def group_spec(group: str, group_names: Sequence[str]) -> Any:
    """A group as written in a file or typed: its name, else its index (digits); None when it is neither."""
    if group in group_names:
        return group
    if group.isdigit() and int(group) < len(group_names):
        return int(group)
    return None


def resolve_groups(entries: Sequence[tuple], group_names: Sequence[str],
                   source: str | os.PathLike | None = None) -> list:
    """The group of each ``(label, group or None[, line number])`` entry as the model's group name or index
    (:func:`group_spec`), None where none is given (the nearest group); a group that is neither raises
    :class:`DatasetFormatError` naming the label (and ``source`` and the line, when known)."""
    resolved = []
    for entry in entries:
        name, group = entry[0], entry[1]
        spec = None if group is None else group_spec(group, group_names)
        if group is not None and spec is None:
            shown = ", ".join(repr(g) for g in group_names[:12]) + (" ..." if len(group_names) > 12 else "")
            raise DatasetFormatError(f"label {name!r}: {group!r} is not a group of the model (groups: {shown}; or an "
                                     f"index 0..{len(group_names) - 1})", file=source,
                                     line=entry[2] if len(entry) > 2 else None)
        resolved.append(spec)
    return resolved


def change_model_labels(model, entries: Sequence[tuple[str, str | None] | tuple[str, str | None, int]],
                        extend: bool, source: str | os.PathLike | None = None):
    """``model.set_labels`` (``extend=False``) or ``model.add_labels`` (``extend=True``) for ``entries`` (``(label,
    group or None[, line number])``, e.g. :func:`read_label_set_file` or :func:`parse_label_lines`); returns the
    model's ``LabelSetResult``. A group that is neither a group name nor index of the model raises
    :class:`DatasetFormatError` naming ``source`` and the line; a model that is not an HSPNet model, a ``ValueError``.
    The model is unchanged unless every check passes."""
    base = hspnet_base_model(model)
    if base is None:
        raise ValueError(f"labels at inference need an HSPNet model; this one is {type(model).__name__}")
    names = [entry[0] for entry in entries]
    groups = resolve_groups(entries, list(base.config.group_names), source)
    label_to_group = groups if any(g is not None for g in groups) else None
    target = model if hasattr(model, "set_labels") else base  # the wrapper keeps its config in step
    if extend:
        present = [name for name in names if name in set(base.config.label_names)]
        if present:
            raise ValueError(f"{present[0]!r} is already a label of the model"
                             + (f" ({os.fspath(source)})" if source is not None else "")
                             + "; --add_labels takes new labels only (--labels replaces the label set)")
        return target.add_labels(names, label_to_group)
    return target.set_labels(names, label_to_group)


def describe_label_change(result) -> list[str]:
    """One line per label whose group was given or chosen (not kept): ``label 'zebra' -> group 'animal' (nearest by
    CLIP text similarity, 0.71)``, each new label marked ``(new)``."""
    return [a.describe() + (" (new)" if a.new else "")
            for a in result.assignments if a.how != "kept"]
