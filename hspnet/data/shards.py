"""A prepared dataset as Parquet shards with the image bytes embedded: what ``hspnet prepare ... --shards N`` writes,
``--push_to_hub`` uploads as a Hub dataset, and ``hspnet train --streaming true`` streams (docs/large-datasets.md).

Layout of the folder (and of the Hub dataset repository it is uploaded to, file for file)::

    README.md                    the dataset card; its YAML ``configs:`` name every split's files, so that
                                 ``datasets.load_dataset(FOLDER_OR_REPO, streaming=True)`` finds the splits
    hspnet_build.json            format "shards": for each split its number of rows, a digest of its image ids and
                                 labels, and its files with their number of rows (what a streamed run needs to know
                                 before reading: the epoch length, the resume check)
    hierarchy.json, report.json  the label hierarchy and the build report, as in the other forms
    train/train-00000-of-00008.parquet ...  N shards of (nearly) equal size (+-1 row), plus a column ``index`` (the
                                 row number in the split: ROLE's and the traceability's row index)
    validation/..., test/...     fewer shards: about N x (rows of the split / rows of train), at least 1

Every shard is self-contained: the images are stored as bytes (``datasets.Image()`` storage with the bytes
embedded, the path reduced to the file name), so no path points outside the folder, and the features (the labels
as ``ClassLabel`` carrying the hierarchy) travel in each file's schema. Row groups hold 100 images, so a reader
holds at most one row group per open file in memory.

The folder is written like the other forms (:mod:`hspnet.data.export`): into a temporary sibling folder, swapped in
when complete; a folder holding anything an earlier build did not write is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable

from hspnet.data.errors import DatasetFormatError
from hspnet.data.export import BUILD_MARKER, write_build
from hspnet.data.hierarchy import get_hierarchy
from hspnet.utils.files import is_hub_id, read_json_file, write_text

logger = logging.getLogger("hspnet.data")

ROW_GROUP_SIZE = 100
"""Images per Parquet row group (datasets' streaming reads one row group of a file at a time)."""
SHARD_NAME = re.compile(r"(?P<split>[A-Za-z0-9_]+)/(?P=split)-\d{5}-of-\d{5}\.parquet")
"""A shard's path inside the folder or repository."""
TRAIN_COLUMNS = ("image", "image_id", "labels", "observed_labels", "negative_labels", "index")
"""The columns a streamed training run reads (those a split has; `negative_labels`: Open Images' verified negatives,
for `use_verified_negatives`)."""


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def shard_counts(dataset_dict, num_shards: int) -> dict[str, int]:
    """How many shards each split gets: ``num_shards`` for train, about ``num_shards x rows / train rows`` (at least
    1, at most one per row) for the others. ``ValueError`` if train has fewer rows than shards."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"--shards must be a whole number >= 1, got {num_shards!r}")
    if "train" not in dataset_dict:
        raise ValueError(f"a sharded dataset needs a 'train' split (splits: {list(dataset_dict)})")
    train_rows = len(dataset_dict["train"])
    if train_rows < num_shards:
        raise ValueError(f"--shards {num_shards}: the train split has only {train_rows} rows (one shard needs one)")
    counts = {}
    for split, dataset in dataset_dict.items():
        wanted = num_shards if split == "train" else round(num_shards * len(dataset) / train_rows)
        counts[split] = max(1, min(wanted, len(dataset)))
    return counts


def content_digest(rows: Iterable[tuple]) -> str:
    """A digest of a split's rows (image id, observed labels, labels; in order): what a streamed run's checkpoint
    compares on resume instead of reading every row again."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _split_digest(dataset, batch_size: int = 10_000) -> str:
    present = [column for column in ("image_id", "observed_labels", "labels") if column in dataset.column_names]

    def rows():
        for batch in dataset.select_columns(present).iter(batch_size=batch_size):
            yield from zip(*(batch[column] for column in present))

    return content_digest(rows())


def write_parquet_shard(dataset, path: str, row_group_size: int = ROW_GROUP_SIZE) -> int:
    """Write ``dataset`` (a ``datasets.Dataset``) to the Parquet file ``path``, the files of its ``Image`` columns read
    and embedded as bytes, ``row_group_size`` rows at a time (memory: one row group). Returns the number of rows."""
    import pyarrow.parquet as pq
    from datasets.table import embed_table_storage

    schema = dataset.features.arrow_schema  # with the features (ClassLabel names, the hierarchy) as metadata
    arrow = dataset.with_format("arrow")
    with pq.ParquetWriter(path, schema=schema, compression="snappy") as writer:
        for start in range(0, len(dataset), row_group_size):
            table = embed_table_storage(arrow[start:start + row_group_size])
            writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=row_group_size)
    return len(dataset)


def _card(name: str, info: dict, hierarchy) -> str:
    """The dataset card: YAML ``configs`` naming every split's files, then what the dataset is and how to use it."""
    import yaml

    header = {
        "configs": [{"config_name": "default", "data_files": [
            {"split": split, "path": [item["path"] for item in entry["files"]]} for split, entry in info.items()]}],
        "task_categories": ["image-classification"],
        "tags": ["hspnet", "multi-label", "single-positive-labels"],
    }
    groups: dict[str, list[str]] = {}
    for label, group in zip(hierarchy.labels, hierarchy.label_to_group):
        groups.setdefault(hierarchy.groups[group], []).append(label)
    rows = "\n".join(f"| {split} | {entry['num_rows']} | {len(entry['files'])} |" for split, entry in info.items())
    shown = "\n".join(f"- **{group}**: {', '.join(labels[:20])}{' ...' if len(labels) > 20 else ''}"
                      for group, labels in list(groups.items())[:30])
    return (f"---\n{yaml.safe_dump(header, sort_keys=False, allow_unicode=True)}---\n\n"
            f"# {name} for HSPNet (single positive labels)\n\n"
            f"Prepared by `hspnet prepare` as Parquet shards with the images embedded. Each row holds `image`, "
            f"`image_id`, `labels` (every positive) and, in the training splits, `observed_labels` (the one observed "
            f"positive); train also holds `index` (the row number).\n\n"
            f"| split | images | shards |\n|---|---|---|\n{rows}\n\n"
            f"{len(hierarchy.labels)} labels in {len(hierarchy.groups)} groups:\n\n{shown}\n\n"
            "Stream it with `datasets.load_dataset(REPO_ID, split=\"train\", streaming=True)`, or train on it with "
            "`hspnet train --dataset REPO_ID --streaming true` (see the hspnet documentation, "
            "docs/large-datasets.md).\n")


def save_sharded_dataset(dataset_dict, path: str | os.PathLike, num_shards: int, *, overwrite: bool = False,
                         inputs: Iterable[str | os.PathLike | None] = (), row_group_size: int = ROW_GROUP_SIZE) -> str:
    """Write a prepared ``DatasetDict`` as Parquet shards with the images embedded into the folder ``path`` (layout:
    the module docstring), replacing an earlier build there as a whole (as
    :func:`hspnet.data.export.save_prepared_dataset`: ``overwrite``, ``inputs``). Returns the absolute path."""
    from hspnet.data.batches import add_index_column

    counts = shard_counts(dataset_dict, num_shards)
    hierarchy = get_hierarchy(dataset_dict)

    def write(temporary: str, mode: int) -> dict:
        info = {}
        for split, dataset in dataset_dict.items():
            dataset = _images_as_images(add_index_column(dataset) if split == "train" else dataset)
            os.makedirs(os.path.join(temporary, split), mode=mode)
            files = []
            for index in range(counts[split]):
                shard = dataset.shard(num_shards=counts[split], index=index, contiguous=True)
                relative = f"{split}/{split}-{index:05d}-of-{counts[split]:05d}.parquet"
                rows = write_parquet_shard(shard, os.path.join(temporary, relative), row_group_size)
                files.append({"path": relative, "num_rows": rows,
                              "num_bytes": os.path.getsize(os.path.join(temporary, relative))})
            info[split] = {"num_rows": len(dataset), "content": _split_digest(dataset), "files": files}
            logger.info("%s: %d rows in %d shard(s)", split, len(dataset), counts[split])
        dataset_name = _dataset_name(dataset_dict)
        write_text(os.path.join(temporary, "README.md"), _card(dataset_name, info, hierarchy))
        return {"written_by": "hspnet.data.save_sharded_dataset", "format": "shards", "dataset": dataset_name,
                "shards": info}

    return write_build(dataset_dict, path, write, overwrite=overwrite, inputs=inputs, embedded=True)


def _images_as_images(dataset):
    """``dataset`` with its ``Image`` column recorded as ``Image()`` (decoded when read, as Hub viewers and
    ``load_dataset`` users expect); the stored values are the same."""
    import datasets

    feature = dataset.features.get("image")
    if isinstance(feature, datasets.Image) and not feature.decode:
        return dataset.cast_column("image", datasets.Image())
    return dataset


def _dataset_name(dataset_dict) -> str:
    for split in dataset_dict.values():
        try:
            return str(json.loads(split.info.description)["hspnet"]["dataset"])
        except (TypeError, ValueError, KeyError, AttributeError):
            continue
    return "custom"


def sharded_files(folder: str) -> list[tuple[str, str]]:
    """``(path in the repository, local path)`` of every file of the sharded dataset in ``folder``, as its
    ``hspnet_build.json`` lists them (a folder that is not a sharded build is refused)."""
    info = read_shards_info(folder)
    names = [name for name in info.get("entries", []) if name not in {split for split in info["shards"]}]
    files = [(name, os.path.join(folder, name)) for name in names if os.path.isfile(os.path.join(folder, name))]
    files += [(item["path"], os.path.join(folder, *item["path"].split("/")))
              for entry in info["shards"].values() for item in entry["files"]]
    return sorted(files)


def push_sharded_dataset(folder: str, repo_id: str, *, token: str | None = None, private: bool = False,
                         commit_message: str = "Upload a dataset prepared by hspnet") -> str:
    """Upload the sharded dataset in ``folder`` to the Hub dataset repository ``repo_id`` (created if needed;
    ``private`` applies to a new one) in ONE commit, so that its files appear together or not at all; shards of an
    earlier upload that this one does not hold are deleted in the same commit (the card lists the files, so a stale
    one would not be read anyway). Returns the repository id."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    files = sharded_files(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private).repo_id
    try:
        existing = api.list_repo_files(repo_id, repo_type="dataset")
    except Exception as error:  # noqa: BLE001 - a new or unlistable repository: nothing to delete
        logger.info("could not list %s (%s); no earlier shard is deleted", repo_id, type(error).__name__)
        existing = []
    new = {name for name, _ in files}
    stale = sorted(name for name in existing if SHARD_NAME.fullmatch(name) and name not in new)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=local) for name, local in files]
    operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
    api.create_commit(repo_id=repo_id, repo_type="dataset", operations=operations, commit_message=commit_message)
    logger.info("pushed %d files to the Hub dataset %s%s", len(files), repo_id,
                f" (deleted {len(stale)} earlier shards)" if stale else "")
    return repo_id


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def read_shards_info(source: str, token: str | None = None) -> dict:
    """The ``hspnet_build.json`` of a sharded dataset: ``source`` a folder, or a Hub dataset id (that one file is
    downloaded). Errors say what ``source`` is not."""
    source = os.fspath(source)
    if os.path.isdir(source):
        marker = os.path.join(source, BUILD_MARKER)
        if not os.path.isfile(marker):
            raise DatasetFormatError("not a folder written by `hspnet prepare --shards N` (no hspnet_build.json)",
                                     file=source)
        path = marker
    elif is_hub_id(source):
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, BUILD_MARKER, repo_type="dataset", token=token)
        except Exception as error:  # noqa: BLE001 - offline, no such repository, not an hspnet dataset
            raise OSError(f"{source}: cannot read its {BUILD_MARKER} from the Hub ({type(error).__name__}); a "
                          "streamed run needs a dataset pushed by `hspnet prepare --shards N --push_to_hub`") from None
    else:
        raise FileNotFoundError(f"{source}: no such folder, and not a Hub dataset id (namespace/name); a streamed run "
                                "reads a dataset prepared by `hspnet prepare --shards N` (a folder or its Hub copy)")
    info = read_json_file(path, "build marker", error=DatasetFormatError)
    shards = info.get("shards") if isinstance(info, dict) else None
    if info.get("format") != "shards" or not isinstance(shards, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("files"), list) and isinstance(entry.get("num_rows"), int)
            for entry in shards.values()):
        raise DatasetFormatError("not written by `hspnet prepare --shards N` (no shard list); prepare the dataset "
                                 "with --shards to stream it", file=path)
    for entry in shards.values():
        for item in entry["files"]:
            if not (isinstance(item, dict) and isinstance(item.get("path"), str) and SHARD_NAME.fullmatch(item["path"])
                    and isinstance(item.get("num_rows"), int)):
                raise DatasetFormatError(f"malformed shard entry {item!r}", file=path)
    return info


class StreamedSplit:
    """A split of a sharded dataset, read as a stream (``datasets.IterableDataset``): what ``hspnet train --streaming
    true`` trains on. Knows what the run needs before reading a row: its number of rows (``len``), its shards, its
    features (with the hierarchy) and a fingerprint for the resume check."""

    streamed = True

    def __init__(self, source: str, split: str, entry: dict, token: str | None = None):
        self.source, self.split, self.token = source, split, token
        self.files = [item["path"] for item in entry["files"]]
        self.file_rows = [int(item["num_rows"]) for item in entry["files"]]
        self.num_rows = int(entry["num_rows"])
        self.content = str(entry.get("content", ""))
        if sum(self.file_rows) != self.num_rows:
            raise DatasetFormatError(f"split {split!r}: its shards hold {sum(self.file_rows)} rows, not the "
                                     f"{self.num_rows} recorded", file=source)
        self._features = None

    def __len__(self) -> int:
        return self.num_rows

    @property
    def num_shards(self) -> int:
        return len(self.files)

    def open(self):
        """The split as a ``datasets.IterableDataset`` in shard order (one shard per file), its images left undecoded
        (``{"bytes", "path"}``: read by :func:`hspnet.data.batches.read_dataset_image`), with the columns training
        reads."""
        import datasets

        stream = datasets.load_dataset(self.source, data_files={self.split: self.files}, split=self.split,
                                       streaming=True, token=self.token)
        if stream.num_shards != self.num_shards:
            raise DatasetFormatError(f"split {self.split!r} streams as {stream.num_shards} shards, not its "
                                     f"{self.num_shards} files", file=self.source)
        stream = stream.cast_column("image", datasets.Image(decode=False))
        return stream.select_columns([column for column in TRAIN_COLUMNS if column in stream.features])

    @property
    def features(self):
        if self._features is None:
            self._features = self.open().features
        return self._features

    @property
    def column_names(self) -> list[str]:
        return list(self.features)

    def content_fingerprint(self) -> dict:
        """What identifies the split for the resume check: its rows, and the digest of its ids and labels recorded
        when it was written (the files are not read again)."""
        return {"num_images": self.num_rows, "content": self.content,
                "shards": [[name, rows] for name, rows in zip(self.files, self.file_rows)]}


def open_sharded_dataset(source: str, *, token: str | None = None, cache_dir: str | None = None) -> dict:
    """A sharded dataset (a folder or a Hub dataset id) for a streamed run: ``{"train": StreamedSplit, "validation":
    Dataset, "test": Dataset}``; the evaluation splits are read whole (a Hub one downloaded), converted to Arrow in
    ``cache_dir`` and carry the hierarchy and build report in ``info.description`` like every prepared split."""
    import datasets

    from hspnet.data.core import attach_metadata

    info = read_shards_info(source, token)
    if "train" not in info["shards"]:
        raise DatasetFormatError(f"no 'train' split (splits: {list(info['shards'])})", file=source)
    train = StreamedSplit(source, "train", info["shards"]["train"], token)
    others = datasets.DatasetDict({
        split: datasets.load_dataset(source, data_files={split: [item["path"] for item in entry["files"]]},
                                     split=split, cache_dir=cache_dir, token=token)
        for split, entry in info["shards"].items() if split != "train"})
    report = {}
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "report.json")):
        report = read_json_file(os.path.join(source, "report.json"), "build report", error=DatasetFormatError)
    hierarchy = get_hierarchy(train)
    attach_metadata(others, str(info.get("dataset", "custom")), hierarchy, report)
    for split in list(others):
        others[split] = others[split].cast_column("image", datasets.Image(decode=False))
        if len(others[split]) != info["shards"][split]["num_rows"]:
            raise DatasetFormatError(f"split {split!r} holds {len(others[split])} rows, not the "
                                     f"{info['shards'][split]['num_rows']} recorded", file=source)
    return {"train": train, **others}

