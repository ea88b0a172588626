"""MS-COCO 2014 (80 labels): ``annotations/instances_{train,val}2014.json``, ``train2014/``, ``val2014/``.

Labels are the ``categories`` of the annotation files in category-id order (0..79 for COCO's ids 1..90); an image's
positives are the categories of its annotations (crowd annotations included, as in ASL / Cole et al.). Train =
``train2014`` images with at least one annotation (82,081), test = ``val2014`` images with at least one annotation
(40,137); images without annotations are counted in the build report. The groups are the ``supercategory`` field
(the 12 groups of the HSPNet authors). Any annotation file in COCO format works (other category sets get their
groups from ``supercategory``, or from ``hierarchy=``).
"""

from __future__ import annotations

import os

from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict, hierarchy_option_key
from hspnet.data.errors import DatasetFormatError, listed_path
from hspnet.data.hierarchy import Hierarchy, builtin_hierarchy, resolve_hierarchy
from hspnet.data.text_files import require_dir, require_file
from hspnet.utils.files import read_json_file


def read_coco_json(path: str) -> dict:
    data = read_json_file(path, "COCO annotation file", error=DatasetFormatError)
    if not isinstance(data, dict):
        raise DatasetFormatError("expected a JSON object with 'images', 'annotations' and 'categories'", file=path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetFormatError(f"missing or non-list {key!r}", file=path, field=key)
    return data


def _get(entry, key: str, kind, path: str, where: str):
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetFormatError(f"{where} has no {key!r}", file=path, field=f"{where}.{key}")
    value = entry[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DatasetFormatError(f"{where}.{key} must be an integer, got {value!r}", file=path, field=f"{where}.{key}")
    if kind is str and (not isinstance(value, str) or not value.strip()):
        raise DatasetFormatError(
            f"{where}.{key} must be a non-empty string, got {value!r}", file=path, field=f"{where}.{key}"
        )
    return value


def coco_categories(data: dict, path: str) -> tuple[list[int], list[str], list[str | None]]:
    """``(category ids, names, supercategories)`` sorted by id."""
    entries = []
    seen: dict[int, int] = {}
    for position, entry in enumerate(data["categories"]):
        where = f"categories[{position}]"
        cid = _get(entry, "id", int, path, where)
        name = _get(entry, "name", str, path, where)
        if cid in seen:
            raise DatasetFormatError(f"category id {cid} is defined twice", file=path, field=f"{where}.id")
        seen[cid] = position
        supercategory = entry.get("supercategory")
        entries.append(
            (
                cid,
                name.strip(),
                supercategory.strip() if isinstance(supercategory, str) and supercategory.strip() else None,
            )
        )
    if not entries:
        raise DatasetFormatError("no category", file=path, field="categories")
    entries.sort()
    return [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries]


def coco_records(data: dict, path: str, image_dir: str, category_index: dict[int, int]) -> list[Record]:
    records: dict[int, Record] = {}
    file_names: dict[str, int] = {}
    for position, entry in enumerate(data["images"]):
        where = f"images[{position}]"
        image_id = _get(entry, "id", int, path, where)
        file_name = _get(entry, "file_name", str, path, where).strip()
        if image_id in records:
            raise DatasetFormatError(f"image id {image_id} is listed twice", file=path, field=f"{where}.id")
        if file_name in file_names:
            raise DatasetFormatError(
                f"file name {file_name!r} is listed twice (image ids {file_names[file_name]} and {image_id})",
                file=path,
                field=f"{where}.file_name",
            )
        file_names[file_name] = image_id
        records[image_id] = Record(
            image_id=file_name,
            path=listed_path(image_dir, file_name, file=path, field=f"{where}.file_name"),
            labels=[],
            where=f"{path} ({where})",
        )
    positives: dict[int, set[int]] = {}
    for position, entry in enumerate(data["annotations"]):
        where = f"annotations[{position}]"
        image_id = _get(entry, "image_id", int, path, where)
        category_id = _get(entry, "category_id", int, path, where)
        if image_id not in records:
            raise DatasetFormatError(f"image_id {image_id} is not in 'images'", file=path, field=f"{where}.image_id")
        if category_id not in category_index:
            raise DatasetFormatError(
                f"category_id {category_id} is not in 'categories'", file=path, field=f"{where}.category_id"
            )
        positives.setdefault(image_id, set()).add(category_index[category_id])
    for image_id, record in records.items():
        record.labels = sorted(positives.get(image_id, ()))
    return list(records.values())


def load_coco(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    hierarchy=None,
    train_annotations: str = "annotations/instances_train2014.json",
    val_annotations: str = "annotations/instances_val2014.json",
    train_images: str = "train2014",
    val_images: str = "val2014",
    **build_options,
):
    """Prepare COCO-2014 as a ``DatasetDict`` (``train`` [, ``validation``], ``test`` = val2014).

    Args:
        root: the COCO folder (``annotations/``, ``train2014/``, ``val2014/``).
        options: the :class:`~hspnet.data.core.BuildOptions` (seed, validation fraction, the authors'
            ``coco_train_singlelabel.txt`` as ``observed_labels_file``, image checks, cache); or pass its fields as
            keywords (``load_coco(root, seed=1, validation_fraction=0)``), which override ``options``.
        hierarchy: override the groups (a Hierarchy, ``{label: group}`` mapping or hierarchy file); by default the
            built-in 12 supercategories (or the ``supercategory`` field for non-standard category sets).
        train_annotations, val_annotations, train_images, val_images: paths relative to ``root``.
    """
    options = BuildOptions.resolve(load_coco, options, build_options)
    root = require_dir(root, "COCO root folder")
    files = {
        TRAIN: require_file(os.path.join(root, train_annotations), "COCO training annotations"),
        TEST: require_file(os.path.join(root, val_annotations), "COCO validation annotations"),
    }
    image_dirs = {TRAIN: os.path.join(root, train_images), TEST: os.path.join(root, val_images)}
    override = hierarchy

    def parse() -> ParsedSource:
        data = {split: read_coco_json(path) for split, path in files.items()}
        categories = {split: coco_categories(data[split], files[split]) for split in files}
        if categories[TRAIN][:2] != categories[TEST][:2]:
            raise DatasetFormatError(
                f"the categories differ from those of {files[TRAIN]}", file=files[TEST], field="categories"
            )
        ids, names, supercategories = categories[TRAIN]
        category_index = {cid: index for index, cid in enumerate(ids)}
        resolved = _coco_hierarchy(names, supercategories, override, files[TRAIN])
        splits = {split: coco_records(data[split], files[split], image_dirs[split], category_index) for split in files}
        return ParsedSource(
            hierarchy=resolved,
            splits=splits,
            report={"root": root, "category_ids": ids},
        )

    return build_dataset_dict(
        "coco",
        parse,
        options,
        annotation_files=list(files.values()),
        loader_options={
            "root": root,
            "image_dirs": image_dirs,
            "hierarchy": hierarchy_option_key(override),
        },
    )


def _coco_hierarchy(names, supercategories, override, path) -> Hierarchy:
    if override is not None:
        return resolve_hierarchy(names, override)
    builtin = builtin_hierarchy("coco")
    if names == builtin.labels:
        return builtin
    if all(supercategories):
        return Hierarchy.from_mapping(dict(zip(names, supercategories)), labels=names)
    raise DatasetFormatError(
        "the categories are not COCO's 80 and some have no 'supercategory'; pass hierarchy=<file or mapping>",
        file=path,
        field="categories",
    )
