"""NUS-WIDE (81 concepts), in either of two layouts.

``official`` (the files distributed by NUS):
  ``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``), ``ImageList/TrainImagelist.txt`` and
  ``ImageList/TestImagelist.txt`` (one ``concept\\id_flickrid.jpg`` per line), ``Groundtruth/TrainTestLabels/
  Labels_<concept>_{Train,Test}.txt`` (one 0/1 per line, aligned with the image list), and the images under
  ``Flickr/<concept>/<file>.jpg`` (or ``images/`` / ``Images/``, or ``image_dir=``).

``flat`` (the HSPNet authors' layout): ``images/<file>.jpg`` and lists ``file,idx idx ...`` (the format of
  ``nus_val.txt``, indices in ``Concepts81.txt`` order): a training list (``nus_train.txt``; the authors'
  training list is not public, so the single positives are generated from it) and a test list (``nus_val.txt``).
  If the training list carries ONE label per image (e.g. ``nus_train_singlelabel.txt``), the ``labels`` of the
  train and held-out ``validation`` images are those single labels, not full annotations: model selection on that
  validation split would score against partial labels (missing positives count as negatives). Loading such a
  layout with ``validation_fraction > 0`` therefore emits a ``UserWarning`` (and a log warning) naming the list;
  use a fully annotated training list, or ``validation_fraction=0`` (the authors' protocol) instead.

Many NUS-WIDE images no longer exist on Flickr. Missing images are therefore skipped by default
(``on_missing_image="skip"``) and counted and listed in the build report (never silently dropped). Images with no
concept are excluded (also counted). A label value other than 0/1 (the official ``Labels_lake_Train.txt`` has one)
is treated as 0 and reported.

Files cut short never build: every ``Labels_<concept>_<split>.txt`` must have exactly one line per image of the image
list (else an error names the file and says which has fewer lines), and an image-list line that does not end with an
image extension (a last line cut mid-record) is an error naming its line. The flat layout's ``file,idx idx`` lists
carry no end-of-record mark: a last line cut inside its label indices cannot be told from a complete one.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

import numpy as np

from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict
from hspnet.data.errors import DatasetFormatError, MissingFileError, check_input_file, listed_path
from hspnet.data.hierarchy import builtin_hierarchy, resolve_hierarchy
from hspnet.data.text_files import (first_existing, iter_text_lines, normalise_key, read_label_list, require_dir,
                                     require_file)

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "official", "flat")
FLAT_TRAIN_LISTS = ("nus_train.txt", "nus_train_singlelabel.txt")
FLAT_TEST_LISTS = ("nus_val.txt", "nus_test.txt")
_SPLIT_WORDS = {TRAIN: "Train", TEST: "Test"}


def detect_layout(root: str) -> str:
    if os.path.isdir(os.path.join(root, "Groundtruth")):
        return "official"
    if first_existing(root, FLAT_TEST_LISTS + FLAT_TRAIN_LISTS):
        return "flat"
    raise MissingFileError(
        "no NUS-WIDE layout found: expected Groundtruth/TrainTestLabels/ and ImageList/ (official layout) or "
        f"images/ with {FLAT_TRAIN_LISTS[0]} and {FLAT_TEST_LISTS[0]} (flat layout)",
        file=root,
    )


def read_concepts(path: str) -> list[str]:
    names = []
    for number, line in iter_text_lines(path, "NUS-WIDE concept list"):
        if line in names:
            raise DatasetFormatError(f"concept {line!r} is listed twice", file=path, line=number)
        names.append(line)
    if not names:
        raise DatasetFormatError("no concept", file=path)
    return names


_DRIVE = re.compile(r"^[A-Za-z]:/")


def official_image_key(line: str) -> str:
    """``actor\\0001_2124494179.jpg`` -> ``actor/0001_2124494179.jpg`` (a ``C:\\ImageData\\Flickr\\`` prefix, as in
    ``Imagelist.txt``, is removed)."""
    key = normalise_key(line)
    if _DRIVE.match(key) or key.startswith("/"):
        parts = key.split("/")
        key = "/".join(parts[parts.index("Flickr") + 1 :]) if "Flickr" in parts else "/".join(parts[-2:])
    return key


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def read_image_list(path: str) -> list[tuple[str, int]]:
    """``ImageList/{Train,Test}Imagelist.txt``: one image path per line. Returns ``(key, line number)``. A line that
    does not end with an image extension (a list cut in the middle of its last line) is an error naming the line."""
    entries, first = [], {}
    for number, line in iter_text_lines(path, "NUS-WIDE image list"):
        if len(line.split()) != 1:
            raise DatasetFormatError(f"expected one image path per line, got {line!r}", file=path, line=number)
        if not line.lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetFormatError(
                f"{line!r} does not end with an image extension ({', '.join(IMAGE_EXTENSIONS)}): is the list cut "
                "short?",
                file=path,
                line=number,
            )
        key = official_image_key(line)
        if key in first:
            raise DatasetFormatError(
                f"image {key!r} is listed twice (first on line {first[key]})", file=path, line=number
            )
        first[key] = number
        entries.append((key, number))
    if not entries:
        raise DatasetFormatError("the image list is empty", file=path)
    return entries


def read_binary_labels(path: str, expected: int, anomalies: list[str], image_list: str | None = None) -> np.ndarray:
    """One 0/1 value per line; returns the positive line indices. Values other than 0/1 are integers treated as 0
    and appended to ``anomalies``; anything else is a :class:`DatasetFormatError` with its line number. The file
    must have exactly ``expected`` lines (one per image of ``image_list``): a file cut short is an error."""
    with open(check_input_file(path, "concept label file"), "rb") as handle:
        data = handle.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    tokens = [line.strip() for line in lines]
    if len(tokens) != expected:
        listing = f" {image_list}" if image_list else ""
        raise DatasetFormatError(
            f"has {len(tokens)} lines, expected {expected} (one per image of the image list{listing}): one of the "
            "two files is cut short or they do not belong together",
            file=path,
            line=len(tokens) if len(tokens) < expected else expected + 1,
        )
    array = np.array(tokens, dtype=object)
    valid = (array == b"1") | (array == b"0")
    if not valid.all():
        for index in np.flatnonzero(~valid):
            token = tokens[index].decode("utf-8", "replace")
            try:
                int(token)
            except ValueError:
                raise DatasetFormatError(f"expected 0 or 1, got {token!r}", file=path, line=int(index) + 1) from None
            anomalies.append(f"{path}:{int(index) + 1}: {token}")
    return np.flatnonzero(array == b"1")


def load_nuswide(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    layout: str = "auto",
    image_dir: str | os.PathLike | None = None,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    hierarchy=None,
    **build_options,
):
    """Prepare NUS-WIDE as a ``DatasetDict`` (``train`` [, ``validation``], ``test``).

    Args:
        root: the NUS-WIDE folder.
        options: the :class:`~hspnet.data.core.BuildOptions`; or pass its fields as keywords, which override it.
            Without ``options``, missing images are skipped (``on_missing_image="skip"``: missing Flickr images are
            common); they are counted.
        layout: ``"official"``, ``"flat"`` or ``"auto"`` (official if ``Groundtruth/`` exists).
        image_dir: the image folder (default: ``Flickr/``, ``images/`` or ``Images/`` under ``root``).
        train_list, test_list: flat layout lists (default ``nus_train.txt`` / ``nus_train_singlelabel.txt`` and
            ``nus_val.txt`` / ``nus_test.txt`` under ``root``).
        hierarchy: override the built-in hierarchy (a Hierarchy, mapping or file).

    Warns (``UserWarning``) when the flat layout's training list has one label per image and
    ``validation_fraction > 0``: the validation split's labels are then partial (see the module docstring).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    options = BuildOptions.resolve(load_nuswide, options, build_options, on_missing_image="skip")
    root = require_dir(root, "NUS-WIDE root folder")
    if layout == "auto":
        layout = detect_layout(root)
    if image_dir is not None:
        images = os.path.abspath(os.path.join(root, os.fspath(image_dir)))
    else:
        names = ("Flickr", "images", "Images") if layout == "official" else ("images", "Images", "Flickr")
        images = first_existing(root, names) or os.path.join(root, names[0])
    if layout == "official":
        return _load_official(root, images, hierarchy, options)
    return _load_flat(root, images, train_list, test_list, hierarchy, options)


def _load_official(root, images, hierarchy, options):
    concepts_file = first_existing(root, ("Concepts81.txt", os.path.join("ConceptsList", "Concepts81.txt")))
    concepts = read_concepts(concepts_file) if concepts_file else builtin_hierarchy("nuswide").labels
    resolved = resolve_hierarchy(concepts, hierarchy, builtin="nuswide")
    lists = {
        split: require_file(
            os.path.join(root, "ImageList", f"{word}Imagelist.txt"), f"NUS-WIDE {word.lower()} image list"
        )
        for split, word in _SPLIT_WORDS.items()
    }
    label_dir = os.path.join(root, "Groundtruth", "TrainTestLabels")
    if not os.path.isdir(label_dir):
        raise MissingFileError("NUS-WIDE label folder not found", file=label_dir)
    label_files = {
        split: [os.path.join(label_dir, f"Labels_{concept}_{word}.txt") for concept in concepts]
        for split, word in _SPLIT_WORDS.items()
    }
    for split in label_files:
        for path in label_files[split]:
            require_file(path, "NUS-WIDE concept label file")

    def parse() -> ParsedSource:
        anomalies: list[str] = []
        splits = {}
        for split, list_path in lists.items():
            entries = read_image_list(list_path)
            labels: list[list[int]] = [[] for _ in entries]
            for concept_index, path in enumerate(label_files[split]):
                for position in read_binary_labels(path, len(entries), anomalies, list_path):
                    labels[position].append(concept_index)
            splits[split] = [
                Record(
                    image_id=key,
                    path=listed_path(images, key, file=list_path, line=number),
                    labels=labels[i],
                    where=f"{list_path}:{number}",
                )
                for i, (key, number) in enumerate(entries)
            ]
        report = {"root": root, "layout": "official", "image_dir": images}
        if not concepts_file:
            report["note"] = "Concepts81.txt not found; the built-in concept order was used"
        if anomalies:
            report["label_value_anomalies"] = {"count": len(anomalies), "examples": anomalies[:20], "treated_as": 0}
        return ParsedSource(hierarchy=resolved, splits=splits, report=report)

    files = ([concepts_file] if concepts_file else []) + list(lists.values()) + label_files[TRAIN] + label_files[TEST]
    return build_dataset_dict(
        "nuswide",
        parse,
        options,
        annotation_files=files,
        loader_options={"root": root, "layout": "official", "image_dir": images, "hierarchy": resolved.to_dict()},
    )


def warn_partial_validation_labels(train_list: str, validation_fraction: float) -> None:
    message = (
        f"NUS-WIDE flat layout: the training list {train_list} has one label per image, so the held-out validation "
        f"split ({validation_fraction:g} of it) only carries those single labels: validation labels are PARTIAL "
        "(missing positives count as negatives), so validation mAP and model selection on it are biased. Use a fully "
        "annotated training list, or validation_fraction=0 / --protocol authors."
    )
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def _load_flat(root, images, train_list, test_list, hierarchy, options):
    def pick(given, defaults, what):
        if given is not None:
            return require_file(os.path.abspath(os.path.join(root, os.fspath(given))), what)
        found = first_existing(root, defaults)
        if found is None:
            raise MissingFileError(f"{what} not found (looked for {', '.join(defaults)})", file=root)
        return found

    lists = {
        TRAIN: pick(train_list, FLAT_TRAIN_LISTS, "NUS-WIDE training list"),
        TEST: pick(test_list, FLAT_TEST_LISTS, "NUS-WIDE test list"),
    }
    concepts = builtin_hierarchy("nuswide").labels
    resolved = resolve_hierarchy(concepts, hierarchy, builtin="nuswide")
    if options.validation_fraction > 0:
        # checked on every load (not only when the cache is built), so a cached build warns too
        train_entries = read_label_list(lists[TRAIN], len(concepts))
        if all(len(labels) <= 1 for _, labels, _ in train_entries):
            warn_partial_validation_labels(lists[TRAIN], options.validation_fraction)

    def parse() -> ParsedSource:
        splits = {}
        single = {}
        for split, path in lists.items():
            entries = read_label_list(path, len(concepts))
            single[split] = all(len(labels) <= 1 for _, labels, _ in entries)
            splits[split] = [
                Record(
                    image_id=name,
                    path=listed_path(images, name, file=path, line=number),
                    labels=labels,
                    where=f"{path}:{number}",
                )
                for name, labels, number in entries
            ]
        report = {"root": root, "layout": "flat", "image_dir": images, "lists": lists}
        if single[TRAIN]:
            report["note"] = (
                "the training list has one label per image: 'labels' of train/validation images are those single "
                "labels, not full annotations"
            )
            if options.validation_fraction > 0:
                report["warning"] = "validation labels are partial (single labels of the training list)"
        return ParsedSource(hierarchy=resolved, splits=splits, report=report)

    return build_dataset_dict(
        "nuswide",
        parse,
        options,
        annotation_files=list(lists.values()),
        loader_options={"root": root, "layout": "flat", "image_dir": images, "hierarchy": resolved.to_dict()},
    )
