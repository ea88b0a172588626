"""Any Hugging Face multi-label image dataset (a ``DatasetDict``, a ``save_to_disk`` folder or a Hub id) as a
prepared ``DatasetDict``: :func:`load_custom_dataset`.

Label columns follow the rules of :mod:`hspnet.data.custom` (one separator per split for label strings, names or
indices, ``label_names``); the hierarchy, the held-out test split (``test_seed``) and the automatic hierarchy
(``hierarchy_seed``) work as for :func:`~hspnet.data.custom.load_image_folder`. Images are not copied and nothing is
cached: the image column is kept as is and the new columns are held in memory.
"""

from __future__ import annotations

import os
from dataclasses import replace

from hspnet.data.clustering import DEFAULT_CLIP_MODEL, DEFAULT_PROMPT_TEMPLATE
from hspnet.data.core import TEST, TRAIN, BuildOptions, ParsedSource, Record, attach_metadata, finalize
from hspnet.data.custom import (
    auto_options,
    check_default_separator,
    check_seed,
    encode_labels,
    hierarchy_for,
    hold_out_test,
    read_label_names,
    resolve_separator,
    split_label_string,
    test_split_note,
)
from hspnet.data.errors import DatasetFormatError
from hspnet.data.hierarchy import get_hierarchy, label_feature

IN_MEMORY_OPTIONS = frozenset({"seed", "validation_fraction", "observed_labels_file"})  # the BuildOptions that apply


def _label_tokens(feature, value, separator):
    from datasets import ClassLabel, List

    if value is None:
        return []
    if isinstance(feature, ClassLabel):
        return [int(value)]
    if isinstance(feature, List) and isinstance(feature.feature, ClassLabel):
        return [int(v) for v in value]
    if isinstance(value, str):
        return split_label_string(value, separator)
    if isinstance(value, (list, tuple)):
        return [" ".join(token.split()) if isinstance(token, str) else token for token in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise TypeError(type(value).__name__)


def load_custom_dataset(
    dataset,
    options: BuildOptions | None = None,
    *,
    image_column: str = "image",
    labels_column: str = "labels",
    id_column: str | None = None,
    label_names=None,
    label_separator: str | None = None,
    hierarchy=None,
    auto_hierarchy: bool = True,
    clip_model=DEFAULT_CLIP_MODEL,
    tokenizer=None,
    num_groups: int | None = None,
    cluster_method: str = "kmeans",
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    test_split: str | None = None,
    test_fraction: float = 0.2,
    test_seed: int = 0,
    hierarchy_seed: int = 0,
    **build_options,
):
    """Prepare any Hugging Face multi-label image dataset.

    Args:
        dataset: a ``DatasetDict`` / ``Dataset``, the path of a dataset saved with ``save_to_disk``, or a Hub id
            (loaded with ``datasets.load_dataset``).
        image_column: the image column (``Image`` feature, or strings that are image paths).
        labels_column: the positives of each image: ``List(ClassLabel)``, a list of names or indices, a
            ``ClassLabel`` (one label), or a string of names separated by ``label_separator`` (``";"`` by default;
            ``"|"``, ``","`` or ``"space"`` when chosen; the same rule as :func:`load_image_folder`, per split).
        id_column: a column of unique image ids (keys of ``observed_labels_file`` and of the seeded choices);
            default ``"<split>/<row>"``.
        label_names: label names (list or file); taken from the ``ClassLabel`` feature when there is one.
        hierarchy / auto_hierarchy / clip_model / ...: as in :func:`load_image_folder`; a dataset already prepared
            by this package keeps its hierarchy.
        test_split: the split to evaluate on (default ``"test"``, else ``"validation"``); without one, a seeded
            ``test_fraction`` of ``train`` is held out, chosen by ``test_seed`` (default 0, independent of ``seed``).
        test_seed, hierarchy_seed: as in :func:`load_image_folder`.
        options: the :class:`~hspnet.data.core.BuildOptions`, of which ``seed``, ``validation_fraction`` and
            ``observed_labels_file`` apply (images are neither checked nor cached here); or pass those as keywords.

    Images are not copied: the image column is kept as is (cast to ``Image()`` if it holds paths). The new columns
    are held in memory.
    """
    import datasets
    from datasets import ClassLabel, Image, List, Value

    test_seed = check_seed("test_seed", test_seed)
    hierarchy_seed = check_seed("hierarchy_seed", hierarchy_seed)
    options = replace(BuildOptions.resolve(load_custom_dataset, options, build_options), check_images="none")
    held_in_memory = sorted(set(build_options) - IN_MEMORY_OPTIONS)
    if held_in_memory:
        raise TypeError(
            f"load_custom_dataset() got the option(s) {', '.join(held_in_memory)}, which do not apply: the dataset "
            "is held in memory, its images are neither checked nor cached (it takes "
            f"{', '.join(sorted(IN_MEMORY_OPTIONS))})"
        )
    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        dataset = datasets.load_from_disk(path) if os.path.isdir(path) else datasets.load_dataset(path)
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({TRAIN: dataset})
    if not isinstance(dataset, datasets.DatasetDict):
        raise TypeError(f"Expected a Dataset or DatasetDict, got {type(dataset).__name__}.")
    if TRAIN not in dataset:
        raise DatasetFormatError(f"the dataset has no 'train' split (splits: {list(dataset)})")
    if test_split is None:
        test_split = TEST if TEST in dataset else ("validation" if "validation" in dataset else None)
    elif test_split not in dataset:
        raise DatasetFormatError(f"the dataset has no {test_split!r} split (splits: {list(dataset)})")
    sources = {TRAIN: dataset[TRAIN]} | ({TEST: dataset[test_split]} if test_split else {})

    separator, chosen = resolve_separator(label_separator)
    tokens_rows, origins = [], []
    names = read_label_names(label_names)
    feature_names = None
    for split, source in sources.items():
        for column in (image_column, labels_column) + ((id_column,) if id_column else ()):
            if column not in source.column_names:
                raise DatasetFormatError(
                    f"no column {column!r} in split {split!r} (columns: {source.column_names})", field=column
                )
        feature = source.features[labels_column]
        inner = feature.feature if isinstance(feature, List) else feature
        if isinstance(inner, ClassLabel):
            feature_names = feature_names or list(inner.names)
        values = source[labels_column]
        if not chosen:
            check_default_separator(
                [
                    (value, {"file": f"split {split!r}, row {row}", "line": None, "field": labels_column})
                    for row, value in enumerate(values)
                    if isinstance(value, str)
                ]
            )
        ids = source[id_column] if id_column else [f"{split}/{row}" for row in range(len(source))]
        for row, value in enumerate(values):
            where = {"file": f"split {split!r}, row {row}", "line": None, "field": labels_column}
            try:
                tokens = _label_tokens(feature, value, separator)
            except TypeError:
                raise DatasetFormatError(f"unsupported label value {value!r}", **where) from None
            tokens_rows.append((tokens, where))
            origins.append((split, row, str(ids[row])))
    if names is None and feature_names is not None:
        names = feature_names
    label_list, encoded = encode_labels(tokens_rows, names)

    if hierarchy is None:
        try:
            carried = get_hierarchy(dataset)
            if carried.labels == label_list:
                hierarchy = carried
        except ValueError:
            pass
    auto = auto_options(
        clip_model, tokenizer, num_groups, cluster_method, prompt_template, hierarchy_seed, auto_hierarchy
    )
    resolved = hierarchy_for(label_list, hierarchy, auto)

    records: dict[str, list[Record]] = {TRAIN: [], TEST: []}
    for (split, row, image_id), labels in zip(origins, encoded):
        records[split].append(
            Record(
                image_id=image_id,
                path=None,
                labels=labels,
                where=f"split {split!r}, row {row}",
                row=row,
                source_split=split,
            )
        )
    test_note = f"the {test_split!r} split of the dataset"
    if not test_split:
        records = hold_out_test(records[TRAIN], test_fraction, test_seed)
        test_note = test_split_note(test_fraction, test_seed)
    prepared = finalize(
        "custom", ParsedSource(hierarchy=resolved, splits=records, report={"test_split": test_note}), options
    )

    label = label_feature(resolved)
    out = {}
    for split, split_records in prepared.records.items():
        source_name = split_records[0].source_split
        part = sources[source_name].select([record.row for record in split_records]).select_columns([image_column])
        if image_column != "image":
            part = part.rename_column(image_column, "image")
        if not isinstance(part.features["image"], Image):
            if part.features["image"] != Value("string"):
                raise DatasetFormatError(
                    f"column {image_column!r} must be an Image feature or image paths, got {part.features['image']}",
                    field=image_column,
                )
            part = part.cast_column("image", Image())
        part = part.add_column("image_id", [record.image_id for record in split_records], feature=Value("string"))
        part = part.add_column("labels", [record.labels for record in split_records], feature=List(label))
        if split != TEST:
            part = part.add_column(
                "observed_labels",
                [[prepared.observed[record.image_id]] for record in split_records],
                feature=List(label),
            )
        out[split] = part
    return attach_metadata(datasets.DatasetDict(out), "custom", resolved, prepared.report)
