"""Custom multi-label data: a folder of images with a CSV / JSONL metadata file, and the rules for label strings,
label names and the hierarchy that it shares with any Hugging Face dataset (:mod:`hspnet.data.hf_dataset`).

Folder layout (:func:`load_image_folder`): ``metadata.csv`` or ``metadata.jsonl`` at the root (file names relative
to the root; an optional ``split`` column with ``train`` / ``test``), or ``train/metadata.csv`` and
``test/metadata.csv`` (file names relative to each split folder, like ``imagefolder``). Each row has a
``file_name`` and its positive ``labels``: in JSONL a list of names (or indices) or a string; in CSV a string
of names (or indices). Without a test split, a seeded ``test_fraction`` of the images becomes the test split.

Label strings (CSV fields, JSONL strings, string columns of a Hugging Face dataset) follow ONE rule per file,
whatever the other rows hold:

* labels are separated by ``;`` by default, or by the separator you choose with ``label_separator``
  (CLI ``--label-separator``): ``";"``, ``"|"``, ``","`` or ``"space"`` (runs of white space);
* a label name may contain spaces (``"tabby cat;dog"`` is ``tabby cat`` and ``dog``); spaces around a name are
  dropped and runs of spaces inside it count as one; ``|`` and ``,`` are part of the name unless chosen;
* with the default (no ``label_separator`` given), a file in which NO label field contains ``;`` (no row is written
  with two labels) reads each field as one label, also a name with spaces (``tabby cat``), where that is the only
  sensible reading. It is refused with an error naming the file, line and field where a guess would split it
  silently one way or the other: a field with ``|`` or ``,``, or a field of several words one of which is a whole
  label field elsewhere in the file (``cat dog`` beside a row ``cat``: one label, or ``cat`` and ``dog``
  separated by spaces?) or whose words are all numbers. Choose the separator explicitly then (``";"`` reads such a
  file as one label per field). A JSONL list is always a list of labels.

A CSV file whose last line has no line end, when its last field is the labels and its last label is used by no
other row, looks cut short and is refused (add the line end if the file is complete); a quoted field that is
never closed is refused too.

Seeds: ``seed`` draws the single positives and the validation split (rerun with several seeds to average over
them); the held-out TEST split uses its own ``test_seed`` (default 0) and the automatic hierarchy its own
``hierarchy_seed`` (default 0), so changing ``seed`` never moves test images into training nor changes the label
groups: runs with different seeds are evaluated on the same test images with the same hierarchy.

Labels are label names, or indices into ``label_names`` (a list or a text file, one name per line). Without
``label_names`` the label set is the sorted set of names found. The hierarchy is ``hierarchy`` (a
:class:`~hspnet.data.hierarchy.Hierarchy`, a ``{label: group}`` mapping or a hierarchy file, see
:func:`~hspnet.data.hierarchy.load_hierarchy_file`) or, if not given, built automatically from the CLIP text
embeddings of the label names (:func:`~hspnet.data.clustering.auto_hierarchy`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from hspnet.data.clustering import DEFAULT_CLIP_MODEL, DEFAULT_PROMPT_TEMPLATE
from hspnet.data.clustering import auto_hierarchy as build_auto_hierarchy
from hspnet.data.core import (
    TEST,
    TRAIN,
    BuildOptions,
    ParsedSource,
    Record,
    build_dataset_dict,
    hash_files,
    hierarchy_option_key,
    validation_image_ids,
)
from hspnet.data.errors import (
    DatasetFormatError,
    MissingFileError,
    check_input_file,
    listed_path,
)
from hspnet.data.hierarchy import Hierarchy, resolve_hierarchy
from hspnet.data.text_files import iter_text_lines, normalise_key, require_dir
from hspnet.utils.files import parse_json_text, read_text_file

logger = logging.getLogger(__name__)

METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
SEPARATORS = (";", "|", ",", "space")
DEFAULT_SEPARATOR = ";"
SPLIT_NAMES = {"train": TRAIN, "test": TEST}


# --------------------------------------------------------------------------------------------------------------
# Label tokens -> indices


def read_label_names(label_names) -> list[str] | None:
    """``label_names`` as a list: a sequence, or a text file with one name per line."""
    if label_names is None:
        return None
    if isinstance(label_names, (str, os.PathLike)):
        path = check_input_file(os.fspath(label_names), "label-names file")
        names = [line for _, line in iter_text_lines(path)]
    else:
        names = [str(name) for name in label_names]
    if not names:
        raise DatasetFormatError("the label-name list is empty")
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DatasetFormatError(f"duplicate label name(s) {duplicates}")
    return names


def resolve_separator(label_separator: str | None) -> tuple[str, bool]:
    """``(separator, chosen)``: ``label_separator`` as one of :data:`SEPARATORS` (``" "``, ``"\\t"``,
    ``"whitespace"`` mean ``"space"``), and whether it was chosen (None gives the default ``";"``, not chosen)."""
    if label_separator is None:
        return DEFAULT_SEPARATOR, False
    if not isinstance(label_separator, str):
        raise ValueError(f"label_separator must be a string, got {label_separator!r}.")
    key = "space" if label_separator and label_separator.isspace() else label_separator.strip().lower()
    key = "space" if key == "whitespace" else key
    if key not in SEPARATORS:
        raise ValueError(
            f"label_separator must be one of {', '.join(repr(s) for s in SEPARATORS)}, got {label_separator!r}."
        )
    return key, True


def split_label_string(value: str, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """The label names in ``value``: split on ``separator`` (``"space"``: runs of white space), each name stripped
    and its inner runs of white space reduced to one space; empty names are dropped."""
    if separator == "space":
        return value.split()
    tokens = (" ".join(token.split()) for token in value.split(separator))
    return [token for token in tokens if token]


def check_default_separator(values: Sequence[tuple[str, dict]]) -> None:
    """With the default separator (none chosen): refuse a file (``values`` = its label strings with their
    ``where``) that never uses ``;`` but whose reading would be a guess (see the module docstring): a field with
    ``|`` or ``,``, or a field of several words of which one is also a whole label field of the file (``cat dog``
    where another row is ``cat``), or whose words are all numbers (label indices). Any other field with spaces is one
    label (``tabby cat``): no row of the file is written with two labels, and no word of it is a label by itself."""
    if any(DEFAULT_SEPARATOR in value for value, _ in values):
        return
    alone: dict[str, dict] = {}  # the label of each one-word field, where it is first
    for value, where in values:
        words = value.split()
        if len(words) == 1:
            alone.setdefault(words[0], where)
    for value, where in values:
        for char in ("|", ","):
            if char in value:
                raise DatasetFormatError(
                    f"the labels {value!r} contain {char!r} and no label field of this file contains ';'. Labels are "
                    f"separated by ';' unless you choose the separator: pass label_separator={char!r} (CLI: "
                    f"--label-separator '{char}') if {char!r} separates labels, or label_separator=';' if it is part "
                    "of a label name",
                    **where,
                )
        words = value.split()
        if len(words) < 2:
            continue
        found = next((word for word in words if word in alone), None)
        if found is None and not all(word.isdigit() for word in words):
            continue  # one label whose name has spaces: none of its words is a label of its own
        if found is not None:
            other = alone[found]
            at = f"line {other['line']}" if other.get("line") is not None else other.get("file")
            why = f"{found!r} is a label of its own at {at}, so it may be several labels"
        else:
            why = "its words are all numbers (label indices?)"
        raise DatasetFormatError(
            f"the labels {value!r} contain a space and no label field of this file contains ';', and {why}. A label "
            "name may contain spaces and labels are separated by ';' unless you choose the separator: pass "
            f"label_separator=';' (CLI: --label-separator ';') if {' '.join(words)!r} is one label, or "
            "label_separator='space' if spaces separate labels",
            **where,
        )


def _is_index(token) -> bool:
    return (isinstance(token, int) and not isinstance(token, bool)) or (
        isinstance(token, str) and token.strip().isdigit()
    )


def encode_labels(rows: list[tuple[list, dict]], label_names: list[str] | None) -> tuple[list[str], list[list[int]]]:
    """``rows`` = ``(tokens, where)`` with ``where`` = ``{"file", "line", "field"}``; returns the label names and
    the label indices of each row. Names must be known (with ``label_names``), indices in range."""
    if label_names is None:
        all_tokens = [token for tokens, _ in rows for token in tokens]
        for tokens, where in rows:
            for token in tokens:
                if isinstance(token, int) and not isinstance(token, bool):
                    raise DatasetFormatError(
                        f"label index {token} needs label_names (the list of label names) to be interpreted", **where
                    )
        if all_tokens and all(_is_index(token) for token in all_tokens):
            raise DatasetFormatError(
                "every label looks like an index; pass label_names (a list or a file of names, one per line)",
                file=rows[0][1].get("file"),
            )
        label_names = sorted({str(token) for token in all_tokens})
        if not label_names:
            raise DatasetFormatError("no label found", file=rows[0][1].get("file") if rows else None)
    index = {name: position for position, name in enumerate(label_names)}
    encoded = []
    for tokens, where in rows:
        labels = set()
        for token in tokens:
            if isinstance(token, bool):
                raise DatasetFormatError(f"invalid label {token!r}", **where)
            key = str(token).strip() if not isinstance(token, int) else None
            if key is not None and key in index:
                labels.add(index[key])
            elif _is_index(token):
                value = int(token)
                if not 0 <= value < len(label_names):
                    raise DatasetFormatError(
                        f"label index {value} is out of range (0..{len(label_names) - 1})", **where
                    )
                labels.add(value)
            else:
                known = ", ".join(label_names[:20]) + (", ..." if len(label_names) > 20 else "")
                raise DatasetFormatError(f"unknown label name {token!r} (known labels: {known})", **where)
        encoded.append(sorted(labels))
    return label_names, encoded


def clip_key(clip_model) -> Any:
    if clip_model is None:
        return None
    if isinstance(clip_model, (str, os.PathLike)):
        path = os.fspath(clip_model)
        if os.path.isdir(path):
            files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith((".json", ".txt")))
            weights = sorted(
                (name, os.path.getsize(os.path.join(path, name)), os.path.getmtime(os.path.join(path, name)))
                for name in os.listdir(path)
                if name.endswith((".safetensors", ".bin"))
            )
            return {"path": os.path.abspath(path), "files": hash_files(files), "weights": weights}
        return {"name": path}
    try:
        weight = clip_model.text_projection.weight.detach().cpu().float().numpy().tobytes()
        return {"instance": hashlib.blake2b(weight, digest_size=16).hexdigest()}
    except AttributeError:
        return {"instance": repr(clip_model)}


def hierarchy_for(names, hierarchy, auto: dict | None) -> Hierarchy:
    if hierarchy is not None:
        return resolve_hierarchy(names, hierarchy)
    if auto is None:
        raise DatasetFormatError("no hierarchy given and the automatic hierarchy is disabled; pass hierarchy=...")
    logger.info("Building the label hierarchy automatically from CLIP text embeddings of %d labels", len(names))
    return build_auto_hierarchy(names, **auto)


def test_split_note(test_fraction: float, test_seed: int) -> str:
    return f"held out: {test_fraction} of the images (test_seed {test_seed}, independent of seed)"


def auto_options(clip_model, tokenizer, num_groups, cluster_method, prompt_template, seed, auto: bool) -> dict | None:
    if not auto:
        return None
    return {
        "clip_model": clip_model,
        "tokenizer": tokenizer,
        "num_groups": num_groups,
        "method": cluster_method,
        "seed": seed,
        "template": prompt_template,
    }


def check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return value


def hold_out_test(records: list[Record], test_fraction: float, test_seed: int) -> dict[str, list[Record]]:
    """The ``test_fraction`` of ``records`` with the smallest ``hash(test_seed, "test", image_id)`` as the test split.
    ``test_seed`` is NOT the single-positive ``seed``: the test split stays fixed when ``seed`` changes."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"There is no test split, so test_fraction must be in (0, 1), got {test_fraction}.")
    test_ids = validation_image_ids([record.image_id for record in records], test_fraction, test_seed, purpose="test")
    return {
        TRAIN: [record for record in records if record.image_id not in test_ids],
        TEST: [record for record in records if record.image_id in test_ids],
    }


# --------------------------------------------------------------------------------------------------------------
# Folder of images + metadata


def _read_metadata(path: str, file_column: str, labels_column: str, split_column: str, label_separator: str | None):
    """Rows ``(file_name, split or None, tokens, where)`` of one CSV or JSONL metadata file (see the module
    docstring for how label strings are split)."""
    separator, chosen = resolve_separator(label_separator)
    rows = []
    if path.endswith(".jsonl"):
        raw_rows = []
        for number, line in iter_text_lines(path, "metadata file"):
            entry = parse_json_text(line, path, line=number, error=DatasetFormatError)
            if not isinstance(entry, dict):
                raise DatasetFormatError("expected a JSON object per line", file=path, line=number)
            raw_rows.append((number, entry))
        if not chosen:
            check_default_separator(
                [
                    (e[labels_column], {"file": path, "line": number, "field": labels_column})
                    for number, e in raw_rows
                    if isinstance(e.get(labels_column), str)
                ]
            )
        for number, entry in raw_rows:
            where = {"file": path, "line": number, "field": labels_column}
            for column in (file_column, labels_column):
                if column not in entry:
                    raise DatasetFormatError(f"missing {column!r}", file=path, line=number, field=column)
            value = entry[labels_column]
            if isinstance(value, str):
                tokens = split_label_string(value, separator)
            elif isinstance(value, list):
                tokens = [" ".join(token.split()) if isinstance(token, str) else token for token in value]
            elif isinstance(value, int) and not isinstance(value, bool):
                tokens = [value]
            else:
                raise DatasetFormatError(f"labels must be a list or a string, got {value!r}", **where)
            rows.append((entry[file_column], entry.get(split_column), tokens, where))
        return rows
    text = read_text_file(path, "metadata file", error=DatasetFormatError, missing=MissingFileError)
    reader = None
    try:  # one CSV document read from memory (BOM dropped); strict: a quoted field never closed is an error
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        if reader.fieldnames is None:
            raise DatasetFormatError("empty metadata file (no header line)", file=path)
        header = [name.strip() for name in reader.fieldnames]
        for column in (file_column, labels_column):
            if column not in header:
                raise DatasetFormatError(
                    f"the header has no {column!r} column (columns: {header})", file=path, line=1, field=column
                )
        reader.fieldnames = header
        raw_rows = []
        for entry in reader:
            number = reader.line_num
            if None in entry or any(value is None for value in entry.values()):
                raise DatasetFormatError(
                    f"expected {len(header)} fields ({', '.join(header)})", file=path, line=number
                )
            raw_rows.append((number, entry))
    except csv.Error as error:
        line = reader.line_num if reader is not None else None
        raise DatasetFormatError(f"malformed CSV: {error}", file=path, line=line) from None
    if not chosen:
        check_default_separator(
            [(e[labels_column], {"file": path, "line": n, "field": labels_column}) for n, e in raw_rows]
        )
    for number, entry in raw_rows:
        where = {"file": path, "line": number, "field": labels_column}
        split = entry.get(split_column) if split_column in entry else None
        rows.append(
            (
                entry[file_column],
                split.strip() if isinstance(split, str) and split.strip() else None,
                split_label_string(entry[labels_column], separator),
                where,
            )
        )
    if rows and header[-1] == labels_column and not text.endswith(("\n", "\r")):
        _check_last_row_complete(rows)
    return rows


def _check_last_row_complete(rows) -> None:
    """The last line of a CSV file has no line end and its last field holds the labels: if its last label is used by
    no other row, the file was probably cut in the middle of that label."""
    tokens = rows[-1][2]
    if not tokens:
        return
    last = str(tokens[-1])
    if any(last == str(token) for _, _, other, _ in rows[:-1] for token in other) or last in map(str, tokens[:-1]):
        return
    raise DatasetFormatError(
        f"the last line has no line end and its last label {last!r} is used by no other row: the file looks cut "
        "short. If it is complete, end the last line with a line break",
        **rows[-1][3],
    )


def find_metadata(root: str, metadata=None) -> list[tuple[str, str | None]]:
    """``[(metadata file, split or None)]``: ``metadata`` if given, else ``metadata.{csv,jsonl}`` at the root, else
    ``{train,test}/metadata.{csv,jsonl}``."""
    if metadata is not None:
        path = os.path.join(root, os.fspath(metadata))
        return [(check_input_file(path, "metadata file"), None)]
    for name in METADATA_NAMES:
        if os.path.lexists(os.path.join(root, name)):
            return [(check_input_file(os.path.join(root, name), "metadata file"), None)]
    found = []
    for folder, split in SPLIT_NAMES.items():
        for name in METADATA_NAMES:
            path = os.path.join(root, folder, name)
            if os.path.lexists(path):
                found.append((check_input_file(path, "metadata file"), split))
                break
    if not any(split == TRAIN for _, split in found):
        raise MissingFileError(
            "no metadata found: expected metadata.csv or metadata.jsonl (columns file_name, labels[, split]) in this "
            "folder, or train/metadata.csv (and test/metadata.csv)",
            file=root,
        )
    return found


def load_image_folder(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    metadata: str | os.PathLike | None = None,
    file_name_column: str = "file_name",
    labels_column: str = "labels",
    split_column: str = "split",
    label_names=None,
    label_separator: str | None = None,
    on_duplicate: str = "error",
    hierarchy=None,
    auto_hierarchy: bool = True,
    clip_model=DEFAULT_CLIP_MODEL,
    tokenizer=None,
    num_groups: int | None = None,
    cluster_method: str = "kmeans",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    test_fraction: float = 0.2,
    test_seed: int = 0,
    hierarchy_seed: int = 0,
    **build_options,
):
    """Prepare a folder of images with a CSV / JSONL metadata file as a ``DatasetDict`` (see the module docstring).

    Args:
        options: the :class:`~hspnet.data.core.BuildOptions` (``seed``: the single positives and the validation
            split); or pass its fields as keywords, which override it.
        label_separator: how label strings are split: ``";"`` (default), ``"|"``, ``","`` or ``"space"``. Label
            names may contain spaces. Without it, a file that never uses ``;`` but has ``|`` or ``,`` in a label
            field, or a field of several words one of which is a label of its own elsewhere, is refused (see the
            module docstring); passing ``";"`` explicitly reads such fields as one label each.
        on_duplicate: ``"error"`` (default) when a file name is listed twice, or ``"merge"`` (union of labels).
        hierarchy: a Hierarchy, ``{label: group}`` mapping or hierarchy file; if None and ``auto_hierarchy``, one is
            built from the CLIP text embeddings of the label names with ``clip_model`` (a Hub id, a local folder or
            a ``CLIPModel`` with ``tokenizer``), ``num_groups`` (default ``round(sqrt(C))``), ``cluster_method``
            (``"kmeans"`` or ``"agglomerative"``), ``prompt_template`` and ``hierarchy_seed``.
        test_fraction: share of the images held out as the test split when the metadata has no test split.
        test_seed: the held-out test split (default 0). Kept separate from ``seed`` on purpose: runs with
            different ``seed`` values share the same test images; change it only to study another test split.
        hierarchy_seed: the k-means seeding of the automatic hierarchy (default 0), also independent of ``seed``.
    """
    if on_duplicate not in ("error", "merge"):
        raise ValueError(f"on_duplicate must be 'error' or 'merge', got {on_duplicate!r}.")
    test_seed = check_seed("test_seed", test_seed)
    hierarchy_seed = check_seed("hierarchy_seed", hierarchy_seed)
    resolve_separator(label_separator)  # a bad separator is refused before anything is read
    options = BuildOptions.resolve(load_image_folder, options, build_options)
    root = require_dir(root, "image folder")
    sources = find_metadata(root, metadata)
    names = read_label_names(label_names)
    auto = auto_options(
        clip_model, tokenizer, num_groups, cluster_method, prompt_template, hierarchy_seed, auto_hierarchy
    )
    label_names_file = [os.fspath(label_names)] if isinstance(label_names, (str, os.PathLike)) else []

    def parse() -> ParsedSource:
        entries = []  # (key, path, split, tokens, where)
        first: dict[str, tuple[int, dict]] = {}
        for path, folder_split in sources:
            base = os.path.dirname(path)
            for file_name, split_value, tokens, where in _read_metadata(
                path, file_name_column, labels_column, split_column, label_separator
            ):
                if not isinstance(file_name, str) or not file_name.strip():
                    raise DatasetFormatError(
                        f"empty or invalid file name {file_name!r}",
                        file=path,
                        line=where["line"],
                        field=file_name_column,
                    )
                split = folder_split
                if split_value is not None and folder_split is None:
                    if str(split_value).strip().lower() not in SPLIT_NAMES:
                        raise DatasetFormatError(
                            f"split must be 'train' or 'test', got {split_value!r}",
                            file=path,
                            line=where["line"],
                            field=split_column,
                        )
                    split = SPLIT_NAMES[str(split_value).strip().lower()]
                # relative to the metadata file's folder, and never outside the dataset's root
                bound = root if not os.path.relpath(base, root).startswith("..") else base
                full = listed_path(bound, normalise_key(file_name), start=base, file=path, line=where["line"],
                                   field=file_name_column)
                key = os.path.relpath(full, root).replace(os.sep, "/")
                if key in first:
                    position, previous = first[key]
                    if on_duplicate == "error":
                        raise DatasetFormatError(
                            f"image {key!r} is listed twice (first at {previous['file']}, line {previous['line']})",
                            file=path,
                            line=where["line"],
                            field=file_name_column,
                        )
                    entries[position][3].extend(tokens)
                    continue
                first[key] = (len(entries), where)
                entries.append([key, full, split, list(tokens), where])
        if not entries:
            raise DatasetFormatError("the metadata lists no image", file=sources[0][0])
        label_list, encoded = encode_labels([(e[3], e[4]) for e in entries], names)
        resolved = hierarchy_for(label_list, hierarchy, auto)
        records = [
            (split, Record(image_id=key, path=full, labels=labels, where=f"{where['file']}:{where['line']}"))
            for (key, full, split, _, where), labels in zip(entries, encoded)
        ]
        splits_given = {split for split, _ in records}
        test_note = "given by the metadata"
        if splits_given == {None}:
            splits = hold_out_test([record for _, record in records], test_fraction, test_seed)
            test_note = test_split_note(test_fraction, test_seed)
        else:
            if None in splits_given:
                raise DatasetFormatError(
                    f"some rows have no {split_column!r} value while others do", file=sources[0][0], field=split_column
                )
            splits = {TRAIN: [r for s, r in records if s == TRAIN], TEST: [r for s, r in records if s == TEST]}
            if not splits[TEST]:
                splits = hold_out_test(splits[TRAIN], test_fraction, test_seed)
                test_note = test_split_note(test_fraction, test_seed)
        return ParsedSource(
            hierarchy=resolved,
            splits=splits,
            report={"root": root, "metadata": [p for p, _ in sources], "test_split": test_note},
        )

    return build_dataset_dict(
        "custom",
        parse,
        options,
        annotation_files=[path for path, _ in sources] + label_names_file,
        loader_options={
            "root": root,
            "columns": [file_name_column, labels_column, split_column],
            "label_names": names,
            "label_separator": label_separator,
            "on_duplicate": on_duplicate,
            "hierarchy": hierarchy_option_key(hierarchy),
            "auto": None
            if auto is None
            else {
                **{k: v for k, v in auto.items() if k not in ("clip_model", "tokenizer")},
                "clip": clip_key(clip_model),
            },
            "test_fraction": test_fraction,
            "test_seed": test_seed,
        },
    )
