"""PASCAL VOC 2012 (20 labels): ``VOC2012/Annotations/*.xml``, ``ImageSets/Main/{train,val}.txt``, ``JPEGImages/``.

Train = the images of ``ImageSets/Main/train.txt`` (5,717), test = ``val.txt`` (5,823; the test-set annotations are
not public). An image's positives are the classes of its ``<object>`` elements. ``difficult`` objects
(``<difficult>1</difficult>``) do NOT make their class positive by default (``difficult="negative"``): this is
what the per-class ``ImageSets/Main/<class>_{train,val}.txt`` files encode (0 = only difficult objects) and what
Cole et al. and the HSPNet authors' ``voc_train.txt`` / ``voc_val.txt`` use (a class is positive only where those
files say 1). ``difficult="positive"`` counts them as positives instead.

When the per-class lists ``ImageSets/Main/<class>_{train,val}.txt`` are present (as in the official devkit), each
must name exactly the images of ``train.txt`` / ``val.txt``: a list cut short is refused, naming the file and line.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree

from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict
from hspnet.data.errors import DatasetFormatError, MissingFileError, check_input_file, listed_path
from hspnet.data.hierarchy import builtin_hierarchy, resolve_hierarchy
from hspnet.data.text_files import iter_text_lines, require_dir, require_file

DIFFICULT_POLICIES = ("negative", "positive")


def find_voc_dir(root: str | os.PathLike) -> str:
    """The ``VOC2012`` folder: ``root`` itself, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    root = require_dir(root, "VOC root folder")
    for candidate in (root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(candidate, "Annotations")):
            return candidate
    raise MissingFileError(
        "no VOC2012 layout found: expected Annotations/, ImageSets/Main/ and JPEGImages/ in this folder, "
        "in VOC2012/ or in VOCdevkit/VOC2012/",
        file=root,
    )


def read_id_list(path: str) -> list[tuple[str, int]]:
    """``ImageSets/Main/{train,val}.txt``: one image id per line. Returns ``(id, line number)``."""
    out: list[tuple[str, int]] = []
    first: dict[str, int] = {}
    for number, line in iter_text_lines(path, "VOC image list"):
        fields = line.split()
        if len(fields) != 1:
            raise DatasetFormatError(f"expected one image id per line, got {line!r}", file=path, line=number)
        image_id = fields[0]
        if image_id in first:
            raise DatasetFormatError(
                f"image {image_id!r} is listed twice (first on line {first[image_id]})", file=path, line=number
            )
        first[image_id] = number
        out.append((image_id, number))
    return out


def class_list_files(voc: str, split_word: str, labels) -> list[str]:
    """The per-class lists ``ImageSets/Main/<class>_<split>.txt`` that exist (the official devkit has all 20)."""
    paths = [os.path.join(voc, "ImageSets", "Main", f"{name}_{split_word}.txt") for name in labels]
    return [path for path in paths if os.path.lexists(path)]


def check_against_class_lists(list_path: str, entries: list[tuple[str, int]], class_files: list[str]) -> None:
    """Each per-class list ``<class>_<split>.txt`` names every image of the split (with -1 / 0 / 1): an image id
    list that lacks some of them was cut short (or a class list belongs to another version); both are errors
    naming the file and the line, so a build never silently loses images."""
    listed = {image_id: number for image_id, number in entries}
    for class_path in class_files:
        seen = {}
        for number, line in iter_text_lines(class_path, "VOC class list"):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("-1", "0", "1"):
                raise DatasetFormatError(
                    f"expected '<image id> <-1|0|1>', got {line!r}", file=class_path, line=number
                )
            seen.setdefault(fields[0], number)
        lacking = [(image_id, number) for image_id, number in seen.items() if image_id not in listed]
        if lacking:
            image_id, number = lacking[0]
            raise DatasetFormatError(
                f"{len(lacking)} image(s) of {class_path} are not in this list, e.g. {image_id!r} (line {number} "
                f"there); the list has {len(listed)} image(s), the class list {len(seen)}: is this list cut short?",
                file=list_path,
                line=max(listed.values(), default=None),
            )
        extra = [(image_id, number) for image_id, number in entries if image_id not in seen]
        if extra:
            image_id, number = extra[0]
            raise DatasetFormatError(
                f"image {image_id!r} (line {number} of {list_path}) is not in this class list, which should name "
                f"every image of the split ({len(extra)} image(s) lacking): is this file cut short?",
                file=class_path,
            )


def parse_voc_xml(path: str, class_index: dict[str, int], difficult: str = "negative") -> list[int]:
    """The positive label indices of one VOC annotation file."""
    check_input_file(path, "annotation file")
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        raise DatasetFormatError(f"invalid XML: {error}", file=path, line=error.position[0]) from None
    labels = set()
    for number, element in enumerate(tree.getroot().findall("object"), start=1):
        name = (element.findtext("name") or "").strip()
        if not name:
            raise DatasetFormatError(f"<object> number {number} has no <name>", file=path, field="object/name")
        if name not in class_index:
            raise DatasetFormatError(
                f"unknown label name {name!r} (object {number}); VOC labels are {', '.join(class_index)}",
                file=path,
                field="object/name",
            )
        flag = (element.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise DatasetFormatError(
                f"<difficult> must be 0 or 1, got {flag!r} (object {number})", file=path, field="object/difficult"
            )
        if flag == "1" and difficult == "negative":
            continue
        labels.add(class_index[name])
    return sorted(labels)


def load_voc(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    difficult: str = "negative",
    hierarchy=None,
    **build_options,
):
    """Prepare PASCAL VOC 2012 as a ``DatasetDict`` (``train`` [, ``validation``], ``test`` = official val).

    Args:
        root: the folder holding ``VOC2012/`` (or ``VOCdevkit/VOC2012/``, or ``VOC2012`` itself).
        options: the :class:`~hspnet.data.core.BuildOptions` (``observed_labels_file``: the authors' ``voc_train.txt``,
            lines ``2008_000008.jpg,12``); or pass its fields as keywords, which override ``options``.
        difficult: ``"negative"`` (default; difficult-only classes are not positives, like the authors' lists) or
            ``"positive"``.
        hierarchy: override the built-in 4-group hierarchy (a Hierarchy, mapping or file).
    """
    if difficult not in DIFFICULT_POLICIES:
        raise ValueError(f"difficult must be one of {DIFFICULT_POLICIES}, got {difficult!r}.")
    options = BuildOptions.resolve(load_voc, options, build_options)
    voc = find_voc_dir(root)
    labels = builtin_hierarchy("voc").labels
    resolved = resolve_hierarchy(labels, hierarchy, builtin="voc")
    lists = {
        TRAIN: require_file(os.path.join(voc, "ImageSets", "Main", "train.txt"), "VOC train image list"),
        TEST: require_file(os.path.join(voc, "ImageSets", "Main", "val.txt"), "VOC val image list"),
    }
    ids = {split: read_id_list(path) for split, path in lists.items()}
    for split, entries in ids.items():  # an id names files inside the VOC folder, never outside
        for image_id, number in entries:
            listed_path(os.path.join(voc, "JPEGImages"), f"{image_id}.jpg", file=lists[split], line=number)
    xml_files = [os.path.join(voc, "Annotations", f"{image_id}.xml") for split in ids for image_id, _ in ids[split]]
    class_files = {split: class_list_files(voc, word, labels) for split, word in ((TRAIN, "train"), (TEST, "val"))}

    def parse() -> ParsedSource:
        class_index = {name: index for index, name in enumerate(labels)}
        splits = {}
        for split, entries in ids.items():
            check_against_class_lists(lists[split], entries, class_files[split])
            records = []
            for image_id, number in entries:
                xml = os.path.join(voc, "Annotations", f"{image_id}.xml")
                records.append(
                    Record(
                        image_id=f"{image_id}.jpg",
                        path=os.path.join(voc, "JPEGImages", f"{image_id}.jpg"),
                        labels=parse_voc_xml(xml, class_index, difficult),
                        where=f"{lists[split]}:{number}",
                    )
                )
            splits[split] = records
        return ParsedSource(hierarchy=resolved, splits=splits, report={"root": voc, "difficult": difficult})

    return build_dataset_dict(
        "voc",
        parse,
        options,
        annotation_files=[*lists.values(), *class_files[TRAIN], *class_files[TEST], *xml_files],
        loader_options={"root": voc, "difficult": difficult, "hierarchy": resolved.to_dict()},
    )
