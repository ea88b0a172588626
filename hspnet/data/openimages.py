"""Open Images (V6 / V7) image-level labels, from the official files, as a single-positive dataset.

Layout (``root``; the CSV / TXT / JSON files may instead lie in ``annotations_dir``, or be named one by one)::

    root/
      oidv7-train-annotations-human-imagelabels.csv     ImageID,Source,LabelName,Confidence   (V6: oidv6-train-...)
      oidv7-test-annotations-human-imagelabels.csv      (V6: test-annotations-human-imagelabels.csv)
      oidv7-val-annotations-human-imagelabels.csv       (only with test_split="validation"; V6: validation-...)
      oidv7-class-descriptions.csv                      LabelName,DisplayName (older files have no header)
      oidv7-classes-trainable.txt                       one MID per line: the label set, in this order
      bbox_labels_600_hierarchy.json                    {"LabelName", "Subcategory": [...], "Part": [...]}
      oidv6-train-images-with-labels-with-rotation.csv  optional image lists (also validation- / test-images-
                                                        with-rotation.csv): when present, they define the images
      train/<ImageID>.jpg   test/<ImageID>.jpg   validation/<ImageID>.jpg

(the files of the download page under their own names; the images named as in the CVDF bucket's folders).

What a row means. ``Confidence`` 1 is a human-verified positive, 0 a human-verified negative (absent). Rows with a
fractional confidence, or with ``Source`` ``machine``, are machine-generated: ignored by default (counted);
``machine_confidence=t`` keeps those with confidence >= t as extra TRAINING positives (never as negatives, never in
the test split, and never against a human verification of the same pair). A pair listed twice is one pair (the
duplicates are counted); a pair verified both present and absent is left unknown (counted, with examples). Rows of
classes outside the label set are ignored (counted).

Splits. ``train`` is the official training split (``validation`` is held out of it, seeded, as for every dataset);
``test`` is the official ``test`` split, or the official ``validation`` split with ``test_split="validation"``. Each
split has the usual columns and ``negative_labels`` (``List(ClassLabel)``): the human-verified negatives. In ``test``
the ``labels`` are the verified positives, ``negative_labels`` the verified negatives and every other pair is
unknown: evaluate with :func:`hspnet.evaluation.openimages.openimages_map` (unknown pairs excluded). ``image_id`` is
the Open Images ``ImageID``. Images without any positive are left out (counted in the build report).

Labels and ids. The labels are the classes of the trainable list (or, without one, every class with a verified
positive in the training split), named by their display names; a display name shared by two classes is made unique
by appending the MID (``"Bat (/m/01h44)"``). The MIDs are kept in the hierarchy (``label_ids``): in the dataset's
features and, through ``from_clip(clip, **hierarchy.model_kwargs())``, in the model's config (``label_ids``), so a
prediction maps back to its MID.

Groups. From ``bbox_labels_600_hierarchy.json``: the group of a class is its ancestor at depth ``group_level`` (the
root entity is depth 0; 1 = the children of the root) on the first path to it in the file (depth first, in file
order); a class at or above that depth is its own group. ``Part`` edges (a wheel is a part of a car, not a kind of
car) are not followed unless ``follow_parts=True``, and then only for classes that no ``Subcategory`` path reaches.
The classes the hierarchy does not place (most of the trainable classes: it has 600) follow ``outside_hierarchy``:

* ``"nearest"`` (default): each joins the hierarchy group whose name is most similar to its own by CLIP text embedding
  (cosine of ``prompt_template`` embeddings, the CLIP of ``clip_model``), as ``set_labels`` places a new label;
* ``"cluster"``: they get groups of their own from the automatic hierarchy
  (:func:`~hspnet.data.clustering.auto_hierarchy`: CLIP text embeddings clustered into ``num_groups`` groups, default
  round(sqrt(n)), by ``cluster_method`` with ``hierarchy_seed``), after the hierarchy's groups;
* ``"drop"``: they are left out of the label set (the labels are then the hierarchy's classes only).

``hierarchy=`` (a :class:`~hspnet.data.hierarchy.Hierarchy`, a ``{display name: group}`` mapping or a hierarchy file)
replaces all of this; the MIDs are still kept.

Bad input. Every row is checked (field count, a MID that looks like ``/m/0dzct``, a confidence in [0, 1], an ImageID
that stays inside the image folder) and an error names the file and the line. A file cut short fails at its last,
incomplete row; a last line without a line end is also refused where completeness cannot be seen (a class description,
an image-list row, a machine-generated confidence): add the line end if such a file is complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from hspnet.data.clustering import DEFAULT_CLIP_MODEL, DEFAULT_PROMPT_TEMPLATE
from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, build_dataset_dict, hierarchy_option_key
from hspnet.data.custom import check_seed, clip_key
from hspnet.data.errors import DatasetFormatError, listed_path
from hspnet.data.hierarchy import Hierarchy, resolve_hierarchy
from hspnet.data.openimages_files import (
    DESCRIPTION_FILES,
    HIERARCHY_FILE,
    HUMAN_LABEL_FILES,
    IMAGE_LIST_FILES,
    MACHINE_LABEL_FILES,
    TRAINABLE_FILES,
    VERIFIED_POSITIVE,
    LabelRows,
    aggregate,
    detect_version,
    find_file,
    hierarchy_paths,
    read_class_descriptions,
    read_image_list,
    read_trainable_classes,
)
from hspnet.data.text_files import require_dir

logger = logging.getLogger(__name__)

VERSIONS = ("auto", "v7", "v6")
TEST_SPLITS = ("test", "validation")
OUTSIDE_HIERARCHY = ("nearest", "cluster", "drop")
IMAGE_EXTENSION = ".jpg"
_EXAMPLES = 20


# --------------------------------------------------------------------------------------------------------------
# Groups

def group_of_classes(mids: Sequence[str], root: str, paths: dict[str, tuple[str, ...]], group_level: int):
    """For each MID, the MID of its group (its ancestor at depth ``group_level``, itself when it is not that deep) or
    None when the hierarchy does not place it (the root entity is no class of its own)."""
    out: list[str | None] = []
    for mid in mids:
        trail = paths.get(mid)
        if trail is None or mid == root:
            out.append(None)
        else:
            out.append(trail[min(group_level, len(trail) - 1)])
    return out


def unique_names(names: Sequence[str], mids: Sequence[str]) -> tuple[list[str], list[str]]:
    """``names`` with every name that several MIDs share written ``"name (MID)"``; and the names so changed."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    shared = sorted(name for name, count in counts.items() if count > 1)
    return [f"{name} ({mid})" if counts[name] > 1 else name for name, mid in zip(names, mids)], shared


def official_groups(mids: Sequence[str], descriptions: dict[str, str], structure, json_path: str | None,
                    group_level: int, follow_parts: bool, outside_hierarchy: str) -> tuple[dict, dict | None]:
    """``(labels, grouping)``: the labels (``mids``, unique ``names``, the display names ``shared`` by several
    classes; without the classes outside the hierarchy for ``"drop"``) and, when the official hierarchy
    (``structure`` = :func:`hierarchy_paths`) is used, each label's group MID (None outside it), the groups' MIDs and
    names in the order of the file, and the report."""
    names, shared = unique_names([descriptions[mid] for mid in mids], mids)
    labels = {"mids": list(mids), "names": names, "shared": shared}
    if structure is None:
        return labels, None
    root_mid, paths, order = structure
    groups = group_of_classes(mids, root_mid, paths, group_level)
    dropped = 0
    if outside_hierarchy == "drop":
        keep = [i for i, group in enumerate(groups) if group is not None]
        if not keep:
            raise DatasetFormatError(f"none of the {len(mids)} classes is in the hierarchy (outside_hierarchy='drop' "
                                     "leaves no label)", file=json_path)
        dropped = len(mids) - len(keep)
        kept = [mids[i] for i in keep]
        names, shared = unique_names([descriptions[mid] for mid in kept], kept)
        labels = {"mids": kept, "names": names, "shared": shared}
        groups = [groups[i] for i in keep]
    group_mids = sorted({group for group in groups if group is not None}, key=order.get)
    group_names, _ = unique_names([descriptions.get(mid, mid) for mid in group_mids], group_mids)
    report = {
        "source": f"the official hierarchy {json_path}, level {group_level}"
                  + (", Part edges followed" if follow_parts else ", Part edges not followed"),
        "in_hierarchy": sum(group is not None for group in groups),
        "outside_hierarchy": sum(group is None for group in groups),
        "outside_hierarchy_placement": outside_hierarchy,
        "groups_from_hierarchy": len(group_mids),
        "groups_without_a_display_name": [mid for mid in group_mids if mid not in descriptions],
    }
    if outside_hierarchy == "drop":
        report["dropped_outside_hierarchy"] = dropped
    return labels, {"assigned": groups, "group_mids": group_mids, "group_names": group_names, "report": report}


def place_outside(labels: dict, grouping: dict, outside_hierarchy: str, json_path: str | None, clip_model,
                  tokenizer, prompt_template: str, num_groups: int | None, cluster_method: str,
                  hierarchy_seed: int) -> Hierarchy:
    """The hierarchy of the labels: the official groups, and for the classes outside them the nearest group by CLIP
    text similarity (``"nearest"``) or automatic groups of their own (``"cluster"``); writes ``group_ids`` (the
    groups' MIDs, None for an automatic group) and examples into ``grouping``."""
    names, mids = labels["names"], labels["mids"]
    assigned = grouping["assigned"]
    group_mids, group_names = list(grouping["group_mids"]), list(grouping["group_names"])
    outside = [i for i, group in enumerate(assigned) if group is None]
    index_of = {mid: g for g, mid in enumerate(group_mids)}
    label_to_group = [index_of[group] if group is not None else -1 for group in assigned]
    report = grouping["report"]
    if outside and outside_hierarchy == "nearest":
        if not group_mids:
            raise DatasetFormatError(f"none of the {len(names)} classes is in the hierarchy, so there is no group to "
                                     "place them in: check the file, or use outside_hierarchy='cluster'",
                                     file=json_path)
        from hspnet.data.clustering import label_text_embeddings

        embeddings = label_text_embeddings([names[i] for i in outside] + group_names, clip_model, tokenizer,
                                           prompt_template)
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        similarity = embeddings[: len(outside)] @ embeddings[len(outside):].T
        nearest = np.argmax(similarity, axis=1)
        for position, label in enumerate(outside):
            label_to_group[label] = int(nearest[position])
        report["outside_hierarchy_examples"] = [
            f"{names[label]} -> {group_names[int(nearest[p])]} ({float(similarity[p, nearest[p]]):.2f})"
            for p, label in enumerate(outside[:_EXAMPLES])]
    elif outside and outside_hierarchy == "cluster":
        from hspnet.data.clustering import auto_hierarchy

        automatic = auto_hierarchy([names[i] for i in outside], clip_model, tokenizer, num_groups=num_groups,
                                   method=cluster_method, seed=hierarchy_seed, template=prompt_template)
        taken = set(group_names)
        for name in automatic.groups:  # each named after its most central class
            central = outside[automatic.labels.index(name)]
            group_names.append(name if name not in taken else f"{name} ({mids[central]})")
            group_mids.append(None)
            taken.add(group_names[-1])
        for position, label in enumerate(outside):
            label_to_group[label] = len(grouping["group_mids"]) + automatic.label_to_group[position]
        report["automatic_groups"] = automatic.num_groups
    grouping["group_ids"] = group_mids
    return Hierarchy(labels=names, groups=group_names, label_to_group=label_to_group, label_ids=mids)


# --------------------------------------------------------------------------------------------------------------
# The loader


def load_openimages(
    root: str | os.PathLike,
    options: BuildOptions | None = None,
    *,
    version: str = "auto",
    test_split: str = "test",
    annotations_dir: str | os.PathLike | None = None,
    train_labels: str | os.PathLike | None = None,
    test_labels: str | os.PathLike | None = None,
    class_descriptions: str | os.PathLike | None = None,
    trainable_classes: str | os.PathLike | None = None,
    hierarchy_file: str | os.PathLike | None = None,
    train_image_list: str | os.PathLike | None = None,
    test_image_list: str | os.PathLike | None = None,
    use_image_lists: bool = True,
    train_images: str = "train",
    test_images: str | None = None,
    machine_confidence: float | None = None,
    machine_labels: str | os.PathLike | None = None,
    group_level: int = 1,
    follow_parts: bool = False,
    outside_hierarchy: str = "nearest",
    hierarchy=None,
    clip_model=DEFAULT_CLIP_MODEL,
    tokenizer=None,
    num_groups: int | None = None,
    cluster_method: str = "kmeans",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    hierarchy_seed: int = 0,
    **build_options,
):
    """Prepare Open Images (image-level labels) as a ``DatasetDict`` (``train`` [, ``validation``], ``test``) with a
    ``negative_labels`` column (see the module docstring for the files, the rules and the groups).

    Args:
        root: the dataset folder (annotation files and ``train/``, ``test/``, ``validation/`` image folders).
        options: the :class:`~hspnet.data.core.BuildOptions`; or pass its fields as keywords, which override it.
        version: ``"v7"``, ``"v6"`` or ``"auto"`` (from the training labels file present) chooses the file names.
        test_split: the official split that becomes ``test``: ``"test"`` (default) or ``"validation"``.
        annotations_dir: where the official files lie (relative to ``root``; default ``root``).
        train_labels, test_labels, class_descriptions, trainable_classes, hierarchy_file, train_image_list,
            test_image_list, machine_labels: a file of that role by path (relative to ``root``), instead of the
            official name. Without a trainable classes file, the labels are the classes with a verified positive in
            the training labels.
        use_image_lists: read the image lists when present (they then define the images of each split).
        train_images, test_images: the image folders (relative to ``root``; default ``train`` and the test split's
            name), holding ``<ImageID>.jpg``.
        machine_confidence: None (default: machine-generated rows ignored) or a threshold in (0, 1]: machine rows of
            the training split with at least this confidence are extra training positives (also read from the
            machine-labels file when present).
        group_level: the depth of the hierarchy whose classes are the groups (1: the root's children).
        follow_parts: also place classes reached only through ``Part`` edges.
        outside_hierarchy: ``"nearest"``, ``"cluster"`` or ``"drop"``: the classes the hierarchy does not place.
        hierarchy: a Hierarchy, ``{display name: group}`` mapping or hierarchy file: the groups, instead of the
            official hierarchy.
        clip_model, tokenizer, prompt_template: the CLIP text tower (a Hub id, a folder, or a ``CLIPModel`` with its
            tokenizer) and template that embed the names for ``"nearest"`` and ``"cluster"``.
        num_groups, cluster_method, hierarchy_seed: the automatic groups of ``"cluster"``.
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}.")
    if test_split not in TEST_SPLITS:
        raise ValueError(f"test_split must be one of {TEST_SPLITS}, got {test_split!r}.")
    if outside_hierarchy not in OUTSIDE_HIERARCHY:
        raise ValueError(f"outside_hierarchy must be one of {OUTSIDE_HIERARCHY}, got {outside_hierarchy!r}.")
    if isinstance(group_level, bool) or not isinstance(group_level, int) or group_level < 1:
        raise ValueError(f"group_level must be an integer >= 1 (1: the children of the root), got {group_level!r}.")
    if machine_confidence is not None:
        if isinstance(machine_confidence, bool) or not isinstance(machine_confidence, (int, float)) or not (
                0.0 < float(machine_confidence) <= 1.0):
            raise ValueError(f"machine_confidence must be None or a number in (0, 1], got {machine_confidence!r}.")
        machine_confidence = float(machine_confidence)
    if cluster_method not in ("kmeans", "agglomerative"):
        raise ValueError(f"cluster_method must be 'kmeans' or 'agglomerative', got {cluster_method!r}.")
    if "{}" not in prompt_template:
        raise ValueError(f"prompt_template {prompt_template!r} has no '{{}}' for the class name.")
    hierarchy_seed = check_seed("hierarchy_seed", hierarchy_seed)
    options = BuildOptions.resolve(load_openimages, options, build_options)
    root = require_dir(root, "Open Images root folder")
    folder = require_dir(os.path.join(root, os.fspath(annotations_dir)) if annotations_dir else root,
                         "Open Images annotations folder")
    if train_labels is None and version == "auto":
        version = detect_version(folder)
    elif version == "auto":
        version = "v7"  # only the names of the files not given explicitly depend on it
    def find(given, candidates, what, required=True):
        return find_file(folder, given, candidates, what, root, required)

    files = {
        TRAIN: find(train_labels, HUMAN_LABEL_FILES[version][TRAIN], "training labels file"),
        TEST: find(test_labels, HUMAN_LABEL_FILES[version][test_split], f"{test_split} labels file"),
    }
    descriptions_file = find(class_descriptions, DESCRIPTION_FILES[version], "class descriptions file")
    trainable_file = find(trainable_classes, TRAINABLE_FILES[version], "trainable classes file", required=False)
    json_file = None if hierarchy is not None else find(hierarchy_file, (HIERARCHY_FILE,), "Open Images hierarchy file")
    lists = {TRAIN: None, TEST: None}
    if use_image_lists:
        lists = {TRAIN: find(train_image_list, IMAGE_LIST_FILES[TRAIN], "training image list", False),
                 TEST: find(test_image_list, IMAGE_LIST_FILES[test_split], f"{test_split} image list", False)}
    machine_file = None
    if machine_confidence is not None:
        machine_file = find(machine_labels, MACHINE_LABEL_FILES[version], "machine-generated labels file",
                            required=machine_labels is not None)
    image_dirs = {TRAIN: os.path.join(root, train_images), TEST: os.path.join(root, test_images or test_split)}

    def parse() -> ParsedSource:
        descriptions = read_class_descriptions(descriptions_file)
        trainable = read_trainable_classes(trainable_file) if trainable_file else None
        structure = hierarchy_paths(json_file, follow_parts) if json_file else None
        mid_code: dict[str, int] = {}
        rows = {}
        image_lists = {}
        for split in (TRAIN, TEST):
            listed = read_image_list(lists[split], test_split if split == TEST else TRAIN) if lists[split] else None
            image_lists[split] = listed
            split_rows = LabelRows()
            split_rows.read(files[split], mid_code, False, machine_confidence if split == TRAIN else None, listed)
            if split == TRAIN and machine_file:
                split_rows.read(machine_file, mid_code, True, machine_confidence, listed)
            rows[split] = split_rows
        shared = set(rows[TRAIN].image_code).intersection(rows[TEST].image_code)
        if shared:
            example = sorted(shared)[0]
            raise DatasetFormatError(
                f"{len(shared)} image(s) are in both the training labels and the {test_split} labels "
                f"({files[TRAIN]}), e.g. {example!r}", file=files[TEST],
                line=rows[TEST].where(rows[TEST].image_code[example])[1])
        code_to_mid = sorted(mid_code, key=mid_code.get)

        # the label set
        report: dict[str, Any] = {}
        if trainable is not None:
            mids = [mid for mid, _ in trainable]
            lacking = [(mid, line) for mid, line in trainable if mid not in descriptions]
            if lacking:
                shown = ", ".join(f"{mid} (line {line})" for mid, line in lacking[:5])
                raise DatasetFormatError(
                    f"{len(lacking)} trainable class(es) have no display name in {descriptions_file}: {shown}"
                    f"{', ...' if len(lacking) > 5 else ''} (use the full class descriptions file of the same version)",
                    file=trainable_file, line=lacking[0][1])
            label_source = f"trainable classes ({trainable_file})"
        else:
            positive_codes = np.unique(np.frombuffer(rows[TRAIN].mid, dtype=np.int32)[
                np.frombuffer(rows[TRAIN].kind, dtype=np.int8) == VERIFIED_POSITIVE]) if len(rows[TRAIN].mid) else []
            mids = sorted(code_to_mid[int(code)] for code in positive_codes if code_to_mid[int(code)] in descriptions)
            if not mids:
                raise DatasetFormatError("no class has a verified positive with a display name: no label", file=files[
                    TRAIN])
            label_source = "classes with a verified positive in the training labels (no trainable classes file)"
        resolved, grouping = official_groups(mids, descriptions, structure, json_file, group_level, follow_parts,
                                             outside_hierarchy)
        mids = resolved["mids"]
        names = resolved["names"]
        report["labels"] = {"count": len(mids), "from": label_source,
                            "display_names_shared_by_several_classes": resolved["shared"]}
        if hierarchy is not None:
            final = resolve_hierarchy(names, hierarchy)
            final = Hierarchy(labels=final.labels, groups=final.groups, label_to_group=final.label_to_group,
                              label_ids=mids)
            report["groups"] = {"source": "the given hierarchy", "count": final.num_groups}
        else:
            if grouping is None:
                raise DatasetFormatError("no Open Images hierarchy file: pass hierarchy_file=... or hierarchy=...")
            final = place_outside(resolved, grouping, outside_hierarchy, json_file, clip_model, tokenizer,
                                  prompt_template, num_groups, cluster_method, hierarchy_seed)
            report["groups"] = grouping["report"]
            report["groups"]["count"] = final.num_groups
            report["groups"]["group_ids"] = grouping["group_ids"]

        mid_to_label = np.full(len(code_to_mid), -1, dtype=np.int64)
        label_of = {mid: index for index, mid in enumerate(mids)}
        for code, mid in enumerate(code_to_mid):
            mid_to_label[code] = label_of.get(mid, -1)
        splits: dict[str, list[Record]] = {}
        annotations: dict[str, Any] = {}
        without_positive: dict[str, int] = {}
        with_positive = np.zeros(len(mids), dtype=bool)
        for split in (TRAIN, TEST):
            split_rows = rows[split]
            positives, negatives, counts = aggregate(split_rows, mid_to_label, len(mids), mids)
            counts.update(split_rows.counts)
            counts["images_with_labels"] = len(split_rows.images)
            if image_lists[split] is not None:
                counts["listed_images_without_labels"] = len(image_lists[split] - set(split_rows.image_code))
            annotations[split if split == TRAIN else f"test ({test_split})"] = counts
            records = []
            for code, image_id in enumerate(split_rows.images):
                labels = positives.get(code)
                if not labels:
                    continue
                file, line = split_rows.where(code)
                records.append(Record(
                    image_id=image_id,
                    path=listed_path(image_dirs[split], image_id + IMAGE_EXTENSION, file=file, line=line,
                                     field="ImageID"),
                    labels=labels,
                    negatives=negatives.get(code, []),
                    where=f"{file}:{line}",
                ))
                if split == TRAIN:
                    with_positive[labels] = True
            without_positive[split] = len(split_rows.images) - len(records)
            records.sort(key=lambda record: record.image_id)  # the same dataset whatever the order of the rows
            splits[split] = records
        report["annotations"] = annotations
        report["images_without_a_positive_left_out"] = without_positive
        lacking = [names[i] for i in np.flatnonzero(~with_positive)]
        report["labels"]["without_a_training_positive"] = {"count": len(lacking), "examples": lacking[:_EXAMPLES]}
        report.update({
            "root": root, "version": version, "test_split": test_split,
            "files": {"train_labels": files[TRAIN], "test_labels": files[TEST], "class_descriptions": descriptions_file,
                      "trainable_classes": trainable_file, "hierarchy": json_file, "train_image_list": lists[TRAIN],
                      "test_image_list": lists[TEST], "machine_labels": machine_file},
            "machine_confidence": machine_confidence,
            "negatives": "negative_labels = human-verified absent (Confidence 0); every other pair not in labels is "
                         "unknown",
        })
        return ParsedSource(hierarchy=final, splits=splits, report=report)

    annotation_files = [path for path in (*files.values(), descriptions_file, trainable_file, json_file,
                                          *lists.values(), machine_file) if path]
    return build_dataset_dict(
        "openimages",
        parse,
        options,
        annotation_files=annotation_files,
        loader_options={
            "root": root,
            "files": annotation_files,
            "version": version,
            "test_split": test_split,
            "image_dirs": image_dirs,
            "machine_confidence": machine_confidence,
            "group_level": group_level,
            "follow_parts": follow_parts,
            "outside_hierarchy": outside_hierarchy,
            "hierarchy": hierarchy_option_key(hierarchy),
            "auto": {"clip": clip_key(clip_model), "template": prompt_template, "num_groups": num_groups,
                     "method": cluster_method, "seed": hierarchy_seed},
        },
        negative_labels=True,
    )


__all__ = [
    "OUTSIDE_HIERARCHY",
    "group_of_classes",
    "load_openimages",
    "official_groups",
    "place_outside",
    "unique_names",
]
