"""CUB-200-2011 attributes (312 labels): ``CUB_200_2011/{images.txt, train_test_split.txt,
attributes/image_attribute_labels.txt, images/}``.

An image's positives are the attributes with ``is_present == 1`` in ``image_attribute_labels.txt`` (``image_id
attribute_id is_present certainty_id time``; the certainty is ignored; a few lines of the official file carry an
extra column, which is tolerated). Every image of ``images.txt`` must have exactly one row per attribute id
1..312: a file cut short, or with an image left out or listed twice, is refused with the first incomplete image and
its line, never built with fewer positives. Train / test follow ``train_test_split.txt`` (5,994 / 5,794). The label
names are the HSPNet authors' (``cub_labels.txt``: ``has_bill_shape::curved_(up_or_down)`` -> ``curved bill``), in
attribute-id order; ``attributes.txt``, when present, is only checked to list 312 attributes.
"""

from __future__ import annotations

import os

import numpy as np

from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict
from hspnet.data.errors import DatasetFormatError, MissingFileError, check_input_file, listed_path
from hspnet.data.hierarchy import builtin_hierarchy, resolve_hierarchy
from hspnet.data.text_files import iter_text_lines, normalise_key, require_dir, require_file

NUM_ATTRIBUTES = 312


def find_cub_dir(root: str | os.PathLike) -> str:
    root = require_dir(root, "CUB root folder")
    for candidate in (root, os.path.join(root, "CUB_200_2011")):
        if os.path.lexists(os.path.join(candidate, "images.txt")):
            return candidate
    raise MissingFileError(
        "no CUB-200-2011 layout found: expected images.txt, train_test_split.txt, attributes/ and images/ in this "
        "folder or in CUB_200_2011/",
        file=root,
    )


def _int(token: str, path: str, number: int, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DatasetFormatError(f"{what} {token!r} is not an integer", file=path, line=number) from None


def read_cub_images(path: str) -> dict[int, tuple[str, int]]:
    """``images.txt``: ``<image_id> <relative path>`` -> ``{image_id: (path, line)}``."""
    out: dict[int, tuple[str, int]] = {}
    paths: dict[str, int] = {}
    for number, line in iter_text_lines(path):
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise DatasetFormatError(f"expected '<image_id> <path>', got {line!r}", file=path, line=number)
        image_id = _int(fields[0], path, number, "image id")
        relative = normalise_key(fields[1])
        listed_path("images", relative, file=path, line=number)  # inside the images folder, never outside
        if image_id in out:
            raise DatasetFormatError(
                f"image id {image_id} is listed twice (first on line {out[image_id][1]})", file=path, line=number
            )
        if relative in paths:
            raise DatasetFormatError(
                f"image {relative!r} is listed twice (first on line {paths[relative]})", file=path, line=number
            )
        out[image_id] = (relative, number)
        paths[relative] = number
    if not out:
        raise DatasetFormatError("no image", file=path)
    return out


def read_cub_split(path: str, images: dict[int, tuple[str, int]]) -> dict[int, bool]:
    out: dict[int, bool] = {}
    for number, line in iter_text_lines(path):
        fields = line.split()
        if len(fields) != 2:
            raise DatasetFormatError(f"expected '<image_id> <is_training_image>', got {line!r}", file=path, line=number)
        image_id = _int(fields[0], path, number, "image id")
        if image_id not in images:
            raise DatasetFormatError(f"image id {image_id} is not in images.txt", file=path, line=number)
        if fields[1] not in ("0", "1"):
            raise DatasetFormatError(f"is_training_image must be 0 or 1, got {fields[1]!r}", file=path, line=number)
        if image_id in out:
            raise DatasetFormatError(f"image id {image_id} is listed twice", file=path, line=number)
        out[image_id] = fields[1] == "1"
    lacking = [image_id for image_id in images if image_id not in out]
    if lacking:
        raise DatasetFormatError(
            f"{len(lacking)} image(s) of images.txt have no split (e.g. id {lacking[0]})", file=path
        )
    return out


def read_cub_attribute_labels(path: str, images: dict[int, tuple[str, int]]) -> dict[int, list[int]]:
    """``image_attribute_labels.txt`` -> ``{image_id: [0-based attribute indices with is_present == 1]}``.

    Every image of ``images.txt`` must have exactly one row for each attribute id 1..312: a file cut short (or
    an image left out) would otherwise lose positives silently, so the first incomplete image is named with its
    ``images.txt`` line, and a repeated ``(image, attribute)`` row with both lines.
    """
    positives: dict[int, set[int]] = {image_id: set() for image_id in images}
    row_of = {image_id: row for row, image_id in enumerate(images)}
    width = NUM_ATTRIBUTES + 1
    first_line = [0] * (len(images) * width)  # line of (image row, attribute id); 0 = no row yet (a flat list: fast)
    last_line = [0] * len(images)
    with open(check_input_file(path, "CUB attribute labels"), "rb") as handle:
        data = handle.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise DatasetFormatError(
                "expected '<image_id> <attribute_id> <is_present> <certainty_id> <time>', "
                f"got {raw.decode('utf-8', 'replace').strip()!r}",
                file=path,
                line=number,
            )
        try:
            image_id, attribute = int(fields[0]), int(fields[1])
        except ValueError:
            raise DatasetFormatError(
                f"image id and attribute id must be integers, got {raw.decode('utf-8', 'replace').strip()!r}",
                file=path,
                line=number,
            ) from None
        if image_id not in positives:
            raise DatasetFormatError(f"image id {image_id} is not in images.txt", file=path, line=number)
        if not 1 <= attribute <= NUM_ATTRIBUTES:
            raise DatasetFormatError(
                f"attribute id {attribute} is out of range (1..{NUM_ATTRIBUTES})", file=path, line=number
            )
        row = row_of[image_id]
        cell = row * width + attribute
        if first_line[cell]:
            raise DatasetFormatError(
                f"attribute {attribute} of image id {image_id} is listed twice (first on line {first_line[cell]})",
                file=path,
                line=number,
            )
        first_line[cell] = number
        last_line[row] = number
        present = fields[2]
        if present == b"1":
            positives[image_id].add(attribute - 1)
        elif present != b"0":
            raise DatasetFormatError(
                f"is_present must be 0 or 1, got {present.decode('utf-8', 'replace')!r}", file=path, line=number
            )
    seen = np.asarray(first_line, dtype=np.int64).reshape(len(images), width)[:, 1:] > 0
    counts = seen.sum(axis=1)
    incomplete = np.flatnonzero(counts != NUM_ATTRIBUTES)
    if len(incomplete):
        row = int(incomplete[0])
        image_id = list(images)[row]
        relative, images_line = images[image_id]
        missing = int(np.flatnonzero(~seen[row])[0]) + 1
        has = f"only {int(counts[row])} of its {NUM_ATTRIBUTES} rows (last on line {int(last_line[row])})"
        raise DatasetFormatError(
            f"image id {image_id} ({relative}, images.txt line {images_line}) has "
            + (has if counts[row] else f"none of its {NUM_ATTRIBUTES} rows")
            + f": attribute {missing} is missing; every image needs one row per attribute id 1..{NUM_ATTRIBUTES} "
            f"(is the file cut short? {len(incomplete)} image(s) are incomplete)",
            file=path,
            line=int(last_line[row]) or None,
        )
    return {image_id: sorted(values) for image_id, values in positives.items()}


def check_attribute_names(path: str) -> None:
    ids = []
    for number, line in iter_text_lines(path):
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise DatasetFormatError(f"expected '<attribute_id> <name>', got {line!r}", file=path, line=number)
        ids.append(_int(fields[0], path, number, "attribute id"))
    if ids != list(range(1, NUM_ATTRIBUTES + 1)):
        raise DatasetFormatError(
            f"expected the {NUM_ATTRIBUTES} attributes with ids 1..{NUM_ATTRIBUTES}, got {len(ids)}", file=path
        )


def load_cub(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    hierarchy=None,
    **build_options,
):
    """Prepare the CUB-200-2011 attributes as a ``DatasetDict`` (``train`` [, ``validation``], ``test``).

    Args:
        root: the folder holding ``CUB_200_2011/`` (or that folder itself).
        options: the :class:`~hspnet.data.core.BuildOptions` (``observed_labels_file``: the authors' ``cub_train.txt``,
            lines ``001.Black_footed_Albatross/...jpg, 212``); or pass its fields as keywords, which override it.
        hierarchy: override the built-in hierarchy (a Hierarchy, mapping or file).
    """
    options = BuildOptions.resolve(load_cub, options, build_options)
    cub = find_cub_dir(root)
    images_txt = require_file(os.path.join(cub, "images.txt"), "CUB image list")
    split_txt = require_file(os.path.join(cub, "train_test_split.txt"), "CUB train/test split")
    labels_txt = require_file(os.path.join(cub, "attributes", "image_attribute_labels.txt"), "CUB attribute labels")
    attributes_txt = None
    for candidate in (
        os.path.join(cub, "attributes.txt"),
        os.path.join(cub, "attributes", "attributes.txt"),
        os.path.join(os.path.dirname(cub), "attributes.txt"),
    ):
        if os.path.lexists(candidate):
            attributes_txt = candidate
            break
    names = builtin_hierarchy("cub").labels
    resolved = resolve_hierarchy(names, hierarchy, builtin="cub")

    def parse() -> ParsedSource:
        if attributes_txt:
            check_attribute_names(attributes_txt)
        images = read_cub_images(images_txt)
        is_train = read_cub_split(split_txt, images)
        positives = read_cub_attribute_labels(labels_txt, images)
        splits = {TRAIN: [], TEST: []}
        for image_id, (relative, number) in images.items():
            splits[TRAIN if is_train[image_id] else TEST].append(
                Record(
                    image_id=relative,
                    path=os.path.join(cub, "images", *relative.split("/")),
                    labels=positives[image_id],
                    where=f"{images_txt}:{number}",
                )
            )
        return ParsedSource(hierarchy=resolved, splits=splits, report={"root": cub})

    files = [images_txt, split_txt, labels_txt] + ([attributes_txt] if attributes_txt else [])
    return build_dataset_dict(
        "cub", parse, options, annotation_files=files, loader_options={"root": cub, "hierarchy": resolved.to_dict()}
    )
