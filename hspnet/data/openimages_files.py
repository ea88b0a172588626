"""The official files of Open Images (V6 / V7) and their readers, for :mod:`hspnet.data.openimages`.

- the official names of each file, by version (:data:`HUMAN_LABEL_FILES`, ...), and how a layout's files are found
  (:func:`detect_version`, :func:`find_file`);
- the readers, each checking every row and naming the file and the line of the first bad one: the class descriptions
  (with or without V7's header), the trainable classes, the image lists, the image-level labels (:class:`LabelRows`,
  coded rows; :func:`aggregate` turns them into positives and verified negatives per image with one sort) and the
  nested ``bbox_labels_600_hierarchy.json`` (:func:`hierarchy_paths`);
- the cut-short rule: a file cut inside its last row fails that row's checks; where a cut last line can still look
  complete (a display name, an image-list row, a machine-generated confidence) a last line without a line end is
  refused too.
"""

from __future__ import annotations

import csv
import math
import os
import re
from array import array
from collections.abc import Sequence

import numpy as np

from hspnet.data.core import TRAIN
from hspnet.data.errors import DatasetFormatError, MissingFileError, check_input_file
from hspnet.data.text_files import first_existing, iter_text_lines
from hspnet.utils.files import read_json_file

LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
DESCRIPTION_COLUMNS = ("LabelName", "DisplayName")
HIERARCHY_FILE = "bbox_labels_600_hierarchy.json"
_EXAMPLES = 20

# official file names, by version, in order of preference
HUMAN_LABEL_FILES = {
    "v7": {
        "train": ("oidv7-train-annotations-human-imagelabels.csv",),
        "validation": ("oidv7-val-annotations-human-imagelabels.csv",),
        "test": ("oidv7-test-annotations-human-imagelabels.csv",),
    },
    "v6": {
        "train": ("oidv6-train-annotations-human-imagelabels.csv",),
        "validation": ("validation-annotations-human-imagelabels.csv",),
        "test": ("test-annotations-human-imagelabels.csv",),
    },
}
MACHINE_LABEL_FILES = {
    "v7": ("oidv7-train-annotations-machine-imagelabels.csv",),
    "v6": ("oidv6-train-annotations-machine-imagelabels.csv", "train-annotations-machine-imagelabels.csv"),
}
DESCRIPTION_FILES = {
    "v7": ("oidv7-class-descriptions.csv", "oidv6-class-descriptions.csv", "class-descriptions.csv"),
    "v6": ("oidv6-class-descriptions.csv", "class-descriptions.csv", "oidv7-class-descriptions.csv"),
}
TRAINABLE_FILES = {
    "v7": ("oidv7-classes-trainable.txt", "oidv6-classes-trainable.txt", "classes-trainable.txt"),
    "v6": ("oidv6-classes-trainable.txt", "classes-trainable.txt", "oidv7-classes-trainable.txt"),
}
IMAGE_LIST_FILES = {
    "train": ("oidv6-train-images-with-labels-with-rotation.csv", "train-images-with-labels-with-rotation.csv"),
    "validation": ("validation-images-with-rotation.csv",),
    "test": ("test-images-with-rotation.csv",),
}

_MID = re.compile(r"/[A-Za-z]+/[0-9A-Za-z_]+")
VERIFIED_NEGATIVE, VERIFIED_POSITIVE, MACHINE_POSITIVE = 0, 1, 2


# --------------------------------------------------------------------------------------------------------------
# Finding the files


def detect_version(folder: str) -> str:
    """``"v7"`` or ``"v6"`` from the training labels file present in ``folder``; both present (or neither) is an
    error asking for ``version``."""
    found = [version for version in ("v7", "v6") if first_existing(folder, HUMAN_LABEL_FILES[version][TRAIN])]
    if len(found) == 1:
        return found[0]
    if found:
        raise DatasetFormatError(
            f"both V7 and V6 training labels are present ({HUMAN_LABEL_FILES['v7'][TRAIN][0]}, "
            f"{HUMAN_LABEL_FILES['v6'][TRAIN][0]}): choose one with version='v7' or 'v6'",
            file=folder,
        )
    expected = ", ".join(HUMAN_LABEL_FILES[v][TRAIN][0] for v in ("v7", "v6"))
    raise MissingFileError(f"no Open Images training labels found (expected {expected}, or train_labels=...)",
                           file=folder)


def given_file(root: str, given, what: str) -> str:
    return check_input_file(os.path.abspath(os.path.join(root, os.fspath(given))), what)


def find_file(folder: str, given, candidates: Sequence[str], what: str, root: str, required: bool = True) -> str | None:
    if given is not None:
        return given_file(root, given, what)
    found = first_existing(folder, candidates)
    if found is None:
        if not required:
            return None
        raise MissingFileError(f"{what} not found (looked for {', '.join(candidates)})", file=folder)
    return check_input_file(found, what)


# --------------------------------------------------------------------------------------------------------------
# Reading the files


def _ends_with_line_end(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) in (b"\n", b"\r")


def _cut_short(path: str, line: int, what: str) -> DatasetFormatError:
    return DatasetFormatError(
        f"the last line has no line end and its {what} may be cut: the file looks cut short (add a line end if it is "
        "complete)",
        file=path,
        line=line,
    )


def _csv_rows(path: str, what: str):
    """``(line number, fields)`` of each non-blank row of a UTF-8 CSV file (byte-order mark dropped, any line end,
    quoted fields); a row that is not UTF-8 is an error naming its line."""
    check_input_file(path, what)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as error:
                raise DatasetFormatError(f"not UTF-8 text ({error.reason})", file=path,
                                         line=reader.line_num + 1) from None
            except csv.Error as error:
                raise DatasetFormatError(f"malformed CSV ({error})", file=path, line=reader.line_num) from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            yield reader.line_num, fields


def check_mid(value: str, path: str, line: int, field: str = "LabelName") -> str:
    if not _MID.fullmatch(value):
        raise DatasetFormatError(f"{value!r} is not a class MID (like '/m/0dzct')", file=path, line=line, field=field)
    return value


def read_class_descriptions(path: str) -> dict[str, str]:
    """``{MID: display name}`` from a ``LabelName,DisplayName`` file, with or without that header (V7's has it, older
    ones do not). A MID described twice with two names, an empty name or a row without two fields is an error naming
    the line."""
    names: dict[str, str] = {}
    lines: dict[str, int] = {}
    last = 0
    for number, fields in _csv_rows(path, "class descriptions file"):
        first, last = last == 0, number
        if first and len(fields) == 2 and not _MID.fullmatch(fields[0].strip()):
            continue  # a header: V7's "LabelName,DisplayName" (older files have none)
        if len(fields) != 2:
            raise DatasetFormatError(f"expected 'LabelName,DisplayName' (2 fields), got {len(fields)}", file=path,
                                     line=number)
        mid, name = check_mid(fields[0].strip(), path, number), " ".join(fields[1].split())
        if not name:
            raise DatasetFormatError(f"class {mid} has an empty display name", file=path, line=number,
                                     field="DisplayName")
        if mid in names and names[mid] != name:
            raise DatasetFormatError(f"class {mid} is described twice ({names[mid]!r} on line {lines[mid]}, {name!r})",
                                     file=path, line=number)
        names.setdefault(mid, name)
        lines.setdefault(mid, number)
    if not names:
        raise DatasetFormatError("the class descriptions file describes no class", file=path)
    if not _ends_with_line_end(path):
        raise _cut_short(path, last, "display name")
    return names


def read_trainable_classes(path: str) -> list[tuple[str, int]]:
    """The MIDs of a trainable-classes file (one per line) with their line numbers; a MID listed twice is an error."""
    entries: list[tuple[str, int]] = []
    first: dict[str, int] = {}
    for number, line in iter_text_lines(check_input_file(path, "trainable classes file"), "trainable classes file"):
        mid = check_mid(line, path, number, field=None)
        if mid in first:
            raise DatasetFormatError(f"class {mid} is listed twice (first on line {first[mid]})", file=path,
                                     line=number)
        first[mid] = number
        entries.append((mid, number))
    if not entries:
        raise DatasetFormatError("the trainable classes file lists no class", file=path)
    return entries


def read_image_list(path: str, split: str) -> set[str]:
    """The ImageIDs of an image list (``ImageID,Subset,OriginalURL,...``): its rows whose ``Subset`` (when the file
    has that column) is ``split``."""
    ids: set[str] = set()
    header: list[str] | None = None
    last, last_fields = 0, None
    subsets = {"train": {"train"}, "validation": {"validation", "val"}, "test": {"test"}}[split]
    for number, fields in _csv_rows(path, "image list"):
        if header is None:
            header = [field.strip() for field in fields]
            if "ImageID" not in header:
                raise DatasetFormatError(f"expected a header with an 'ImageID' column, got {fields[:4]}", file=path,
                                         line=number)
            image_column = header.index("ImageID")
            subset_column = header.index("Subset") if "Subset" in header else None
            continue
        if len(fields) != len(header):
            raise DatasetFormatError(f"expected {len(header)} fields (as the header), got {len(fields)}: is the file "
                                     "cut short?", file=path, line=number)
        last, last_fields = number, fields
        if subset_column is not None and fields[subset_column].strip().lower() not in subsets:
            continue
        image_id = fields[image_column].strip()
        if not image_id:
            raise DatasetFormatError("empty ImageID", file=path, line=number, field="ImageID")
        ids.add(image_id)
    if header is None:
        raise DatasetFormatError("the image list is empty", file=path)
    if last_fields is not None and not _ends_with_line_end(path):
        raise _cut_short(path, last, "last field")
    return ids


class LabelRows:
    """The rows of one split's label files, coded: image index, MID code and kind (0 verified negative, 1 verified
    positive, 2 kept machine positive) per row (compact arrays: 9 bytes a row), the ImageIDs, the file and line where
    each image first appears (:meth:`where`), and counts."""

    def __init__(self):
        self.images: list[str] = []
        self.image_code: dict[str, int] = {}
        self.files: list[str] = []
        self.first_file = array("b")
        self.first_line = array("l")
        self.image = array("i")
        self.mid = array("i")
        self.kind = array("b")
        self.counts = {"rows": 0, "machine_rows_ignored": 0, "machine_rows_kept": 0}

    def where(self, code: int) -> tuple[str, int]:
        """``(file, line)`` of the first row of image ``code``."""
        return self.files[self.first_file[code]], self.first_line[code]

    def read(self, path: str, mid_code: dict[str, int], machine_file: bool, keep_machine: float | None,
             images: set[str] | None) -> None:
        """Add the rows of ``path`` (``ImageID,Source,LabelName,Confidence``). Machine-generated rows (a fractional
        confidence, ``Source`` ``machine`` or a machine file) are kept as positives when ``keep_machine`` is a
        threshold they reach, else ignored; rows of images not in ``images`` (when given) are ignored."""
        what = "machine-generated labels file" if machine_file else "human-verified labels file"
        header = None
        last, last_token = 0, None
        counts = self.counts
        outside_list = 0
        self.files.append(path)
        file_index = len(self.files) - 1
        for number, fields in _csv_rows(path, what):
            if header is None:
                header = tuple(field.strip() for field in fields)
                if header != LABEL_COLUMNS:
                    raise DatasetFormatError(f"expected the header {','.join(LABEL_COLUMNS)}, got {','.join(fields)}",
                                             file=path, line=number)
                continue
            if len(fields) != 4:
                raise DatasetFormatError(f"expected 4 fields ({','.join(LABEL_COLUMNS)}), got {len(fields)}: is the "
                                         "file cut short?", file=path, line=number)
            image_id, source, mid, token = fields[0].strip(), fields[1].strip(), fields[2].strip(), fields[3].strip()
            if not image_id:
                raise DatasetFormatError("empty ImageID", file=path, line=number, field="ImageID")
            mid_index = mid_code.get(mid)
            if mid_index is None:  # each MID is checked once
                check_mid(mid, path, number)
            confidence = 1.0 if token == "1" else 0.0 if token == "0" else None
            if confidence is None:
                try:
                    confidence = float(token)
                except ValueError:
                    confidence = math.nan
                if not 0.0 <= confidence <= 1.0:
                    raise DatasetFormatError(f"Confidence must be a number in [0, 1], got {token!r}", file=path,
                                             line=number, field="Confidence")
            last, last_token = number, token
            counts["rows"] += 1
            if images is not None and image_id not in images:
                outside_list += 1
                continue
            machine = machine_file or source.lower() == "machine" or confidence not in (0.0, 1.0)
            if machine:
                if keep_machine is None or confidence < keep_machine or confidence == 0.0:
                    counts["machine_rows_ignored"] += 1
                    continue
                counts["machine_rows_kept"] += 1
                kind = MACHINE_POSITIVE
            else:
                kind = VERIFIED_POSITIVE if confidence == 1.0 else VERIFIED_NEGATIVE
            code = self.image_code.get(image_id)
            if code is None:
                code = self.image_code[image_id] = len(self.images)
                self.images.append(image_id)
                self.first_file.append(file_index)
                self.first_line.append(number)
            if mid_index is None:
                mid_index = mid_code[mid] = len(mid_code)
            self.image.append(code)
            self.mid.append(mid_index)
            self.kind.append(kind)
        if header is None:
            raise DatasetFormatError(f"the file is empty (expected the header {','.join(LABEL_COLUMNS)})", file=path)
        if last_token is not None and not _ends_with_line_end(path) and (machine_file or last_token not in ("0", "1")):
            raise _cut_short(path, last, "Confidence")
        if outside_list:
            counts["rows_of_images_not_in_the_image_list"] = counts.get("rows_of_images_not_in_the_image_list", 0) + \
                outside_list


def aggregate(rows: LabelRows, mid_to_label: np.ndarray, num_labels: int, mids: Sequence[str]):
    """Per image: sorted positive and negative label indices, and the report counts (duplicates, conflicts, rows of
    other classes). Vectorised: one sort of the ``image * C + label`` keys."""
    image = np.frombuffer(rows.image, dtype=np.int32).astype(np.int64) if len(rows.image) else np.zeros(0, np.int64)
    mid = np.frombuffer(rows.mid, dtype=np.int32) if len(rows.mid) else np.zeros(0, np.int64)
    kind = np.frombuffer(rows.kind, dtype=np.int8) if len(rows.kind) else np.zeros(0, np.int8)
    label = mid_to_label[mid] if len(mid) else np.zeros(0, np.int64)
    inside = label >= 0
    report = {"rows_of_other_classes": int((~inside).sum())}
    image, label, kind = image[inside], label[inside], kind[inside]
    key = image * num_labels + label
    unique, inverse = np.unique(key, return_inverse=True)
    report["duplicate_rows"] = int(len(key) - len(unique))

    def flag(value: int) -> np.ndarray:
        return np.bincount(inverse, weights=(kind == value), minlength=len(unique)) > 0

    human_pos, human_neg, machine_pos = flag(VERIFIED_POSITIVE), flag(VERIFIED_NEGATIVE), flag(MACHINE_POSITIVE)
    conflict = human_pos & human_neg
    positive = (human_pos & ~human_neg) | (machine_pos & ~human_pos & ~human_neg)
    negative = human_neg & ~human_pos
    report["verified_positives"] = int((human_pos & ~human_neg).sum())
    report["verified_negatives"] = int(negative.sum())
    report["machine_positives"] = int((machine_pos & ~human_pos & ~human_neg).sum())
    report["machine_positives_overruled_by_a_verification"] = int((machine_pos & (human_pos | human_neg)).sum())
    if conflict.any():
        where = unique[conflict][:_EXAMPLES]
        report["conflicting_pairs"] = {
            "count": int(conflict.sum()),
            "treated_as": "unknown",
            "examples": [[rows.images[int(k // num_labels)], mids[int(k % num_labels)]] for k in where],
        }
    out_image = unique // num_labels
    out_label = unique % num_labels
    positives: dict[int, list[int]] = {}
    negatives: dict[int, list[int]] = {}
    for selected, target in ((positive, positives), (negative, negatives)):
        images_here, labels_here = out_image[selected], out_label[selected]
        if not len(images_here):
            continue
        bounds = (np.flatnonzero(np.diff(images_here)) + 1).tolist()
        flat, owners = labels_here.tolist(), images_here.tolist()
        for start, stop in zip([0] + bounds, bounds + [len(flat)]):
            target[owners[start]] = flat[start:stop]
    return positives, negatives, report


# --------------------------------------------------------------------------------------------------------------
# The official hierarchy


def hierarchy_paths(path: str, follow_parts: bool = False) -> tuple[str, dict[str, tuple[str, ...]], dict[str, int]]:
    """``(root MID, {MID: path from the root}, {MID: discovery order})`` of ``bbox_labels_600_hierarchy.json``.

    Each MID's path is the first one met depth first in file order along ``Subcategory`` edges; with
    ``follow_parts``, a second walk along ``Subcategory`` and ``Part`` edges places the MIDs still unplaced. Each
    node must be an object with a ``LabelName`` MID and optional ``Subcategory`` / ``Part`` lists of nodes; anything
    else is an error naming the file and the place (``Subcategory[3].Part[0]``)."""
    data = read_json_file(path, "Open Images hierarchy file", error=DatasetFormatError, missing=MissingFileError)

    def check(node, where: str) -> str:
        if not isinstance(node, dict) or not isinstance(node.get("LabelName"), str):
            raise DatasetFormatError("expected an object with a 'LabelName'", file=path, field=where or "root")
        if not _MID.fullmatch(node["LabelName"]):
            raise DatasetFormatError(f"{node['LabelName']!r} is not a class MID (like '/m/0dzct')", file=path,
                                     field=f"{where}.LabelName" if where else "LabelName")
        for key in ("Subcategory", "Part"):
            if key in node and not isinstance(node[key], list):
                raise DatasetFormatError(f"{key} must be a list of objects", file=path,
                                         field=f"{where}.{key}" if where else key)
        return node["LabelName"]

    root = check(data, "")
    paths: dict[str, tuple[str, ...]] = {}
    order: dict[str, int] = {}

    def walk(edges: tuple[str, ...]) -> None:
        stack = [(data, "", (root,))]
        while stack:
            node, where, trail = stack.pop()
            mid = trail[-1]
            if mid not in paths:
                paths[mid] = trail
                order[mid] = len(order)
            children = []
            for key in edges:
                for index, child in enumerate(node.get(key, ())):
                    place = f"{where}.{key}[{index}]" if where else f"{key}[{index}]"
                    child_mid = check(child, place)
                    if child_mid in trail:  # a class listed below itself: no new path
                        continue
                    children.append((child, place, trail + (child_mid,)))
            stack.extend(reversed(children))

    walk(("Subcategory",))
    if follow_parts:
        walk(("Subcategory", "Part"))
    return root, paths, order
