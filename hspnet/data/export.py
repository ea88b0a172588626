"""Writing a prepared dataset somewhere other than the cache, and reading it back.

A build written with :func:`save_prepared_dataset` replaces the previous build in that folder AS A WHOLE: the new
build is written into a temporary sibling folder (``.NAME.building-XXXX``) and swapped in only once it is complete,
so no file of an earlier build (say a ``validation.parquet`` of a held-out build, under a later ``--protocol
authors`` build that has no validation split) survives into the new one, and a build that fails leaves the old
folder intact. A folder that holds anything an earlier build did not write is refused unless ``overwrite=True``
(CLI ``--overwrite``), which replaces the folder and everything in it; a folder that is, or contains, one of the
inputs (the dataset root, an annotation file, the cache, the working directory) is always refused.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable

from hspnet.data.core import get_build_report
from hspnet.data.errors import DatasetFormatError, ImageError
from hspnet.data.hierarchy import get_hierarchy
from hspnet.utils.files import new_folder_mode, read_json_file

BUILD_MARKER = "hspnet_build.json"
_BUILD_FILES = ("hierarchy.json", "report.json", "dataset_dict.json", BUILD_MARKER)
_SPLIT_FOLDER_FILES = ("dataset_info.json", "state.json")


def _split_folder_file(name: str) -> bool:
    """A file ``save_to_disk`` writes into a split folder (or a ``datasets`` cache file made from it later), or a shard
    of :func:`hspnet.data.shards.save_sharded_dataset`."""
    return (name in _SPLIT_FOLDER_FILES or (name.startswith(("data-", "cache-")) and name.endswith(".arrow"))
            or name.endswith(".parquet"))


def _listed_entries(path: str, entries: list[str]) -> set[str] | None:
    """The top-level names the build in ``path`` wrote: from its ``hspnet_build.json``, or, for a folder without that
    marker, all entries if the folder looks like a build (hierarchy.json, report.json and the splits)."""
    marker = os.path.join(path, BUILD_MARKER)
    if os.path.isfile(marker) and not os.path.islink(marker):
        try:
            listed = read_json_file(marker, BUILD_MARKER).get("entries")
        except (OSError, ValueError, AttributeError):
            listed = None
        if isinstance(listed, list):
            return {str(name) for name in listed} | {BUILD_MARKER}
    names = set(entries)
    if {"hierarchy.json", "report.json"} <= names and (
        "dataset_dict.json" in names or any(name.endswith(".parquet") for name in names)
    ):
        return names
    return None


def foreign_entries(path: str | os.PathLike) -> list[str]:
    """The entries of an existing output folder (``split/file`` inside split folders) that no earlier build wrote:
    all of them if the folder is not a build. Only these make a folder need ``overwrite``."""
    path = os.fspath(path)
    entries = sorted(os.listdir(path))
    listed = _listed_entries(path, entries)
    if listed is None:
        return entries
    foreign = []
    for name in entries:
        full = os.path.join(path, name)
        if name not in listed or os.path.islink(full):
            foreign.append(name)
        elif os.path.isdir(full):
            foreign += [
                f"{name}/{inner}"
                for inner in sorted(os.listdir(full))
                if not _split_folder_file(inner)
                or os.path.islink(os.path.join(full, inner))
                or not os.path.isfile(os.path.join(full, inner))
            ]
        elif not os.path.isfile(full) or not (name in _BUILD_FILES or name.endswith(".parquet") or (
                name == "README.md" and os.path.isfile(os.path.join(path, BUILD_MARKER)))):  # a sharded build's card
            foreign.append(name)
    return foreign


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both absolute, links resolved)."""
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _report_inputs(report: dict) -> list[str]:
    found = []
    for key in ("root", "metadata", "lists", "image_dir"):
        value = report.get(key)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        found += [item for item in values if isinstance(item, str) and item]
    observed = report.get("observed_list")
    if isinstance(observed, dict) and isinstance(observed.get("file"), str):
        found.append(observed["file"])
    return found


def check_output_folder(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> str:
    """The absolute, link-resolved output folder ``path`` if a build may be written there, else an error that says
    why and writes nothing:

    * ``path`` is, or contains, one of ``inputs`` (or the working directory, or the home folder): ``ValueError``;
    * ``path`` exists and is not a folder: :class:`DatasetFormatError`;
    * ``path`` holds files that no earlier build wrote and ``overwrite`` is False: :class:`DatasetFormatError`
      naming a few of them (``overwrite=True`` / ``--overwrite`` replaces the folder and everything in it).
    """
    path = os.path.realpath(os.fspath(path))
    protected = [os.getcwd(), os.path.expanduser("~"), *(item for item in inputs if item is not None)]
    for item in protected:
        item = os.path.realpath(os.fspath(item))
        if _inside(item, path):
            what = "is" if item == path else "contains"
            raise ValueError(
                f"{path}: the output folder {what} {item}, which this build reads or runs in; replacing the folder "
                "would destroy it. Choose another output folder"
            )
    if os.path.lexists(path):
        if not os.path.isdir(path):
            raise DatasetFormatError("the output path exists and is not a folder", file=path)
        foreign = foreign_entries(path)
        if foreign and not overwrite:
            shown = ", ".join(repr(name) for name in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise DatasetFormatError(
                f"the output folder holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that no earlier "
                f"build wrote ({shown}); nothing was written. Choose a new or empty folder, or pass overwrite=True "
                "(CLI: --overwrite) to replace this folder and EVERYTHING in it",
                file=path,
            )
    return path


def check_image_paths(dataset_dict, batch_size: int = 1000) -> None:
    """Refuse (:class:`ImageError`) images stored as paths that are not regular files (a FIFO or a device would block
    ``save_to_disk`` / ``push_to_hub`` forever when they read the bytes; a missing file would fail half-way)."""
    from datasets import Image

    bad = []
    for split, dataset in dataset_dict.items():
        if "image" not in dataset.column_names or not isinstance(dataset.features["image"], Image):
            continue
        paths = dataset.select_columns(["image"]).cast_column("image", Image(decode=False))
        for batch in paths.iter(batch_size=batch_size):
            for value in batch["image"]:
                if not value or value.get("bytes") is not None or not value.get("path"):
                    continue
                try:
                    mode = os.stat(value["path"]).st_mode
                except OSError:
                    bad.append((split, value["path"], "missing"))
                    continue
                if not stat.S_ISREG(mode):
                    bad.append((split, value["path"], "not a regular file"))
    if bad:
        shown = "; ".join(f"{path} ({why}, {split})" for split, path, why in bad[:10])
        raise ImageError(
            f"{len(bad)} image(s) cannot be embedded: {shown}{'; ...' if len(bad) > 10 else ''}. Prepare the "
            "dataset with check_images='exists' (the default) and on_missing_image='skip' to leave them out",
            missing=[path for _, path, why in bad if why == "missing"],
            unreadable=[(path, why) for _, path, why in bad if why != "missing"],
        )


def _fresh_folder(parent: str, prefix: str, mode: int) -> str:
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(folder, mode)
    return folder


def save_prepared_dataset(
    dataset_dict,
    path: str | os.PathLike,
    embed_images: bool = True,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> str:
    """Write a prepared ``DatasetDict`` to the folder ``path``, replacing an earlier build there as a whole.

    ``embed_images=True``: ``save_to_disk`` (a self-contained copy: the image bytes are embedded, e.g. ~19 GB for
    COCO). ``embed_images=False``: one Parquet file per split holding the image PATHS (small, but only valid where
    the images are). Both forms also hold ``hierarchy.json``, ``report.json`` and ``hspnet_build.json`` (what the
    build wrote); :func:`load_prepared_dataset` reads both.

    The build is written into a temporary sibling folder and swapped in when complete (see the module docstring):
    on any error the previous folder is left as it was. ``overwrite=True`` allows replacing a folder that holds
    files an earlier build did not write; ``inputs`` are paths the output folder must not be or contain (the
    dataset root and annotation files named in the build report are added). Returns the absolute path.
    """
    def write(temporary: str, mode: int) -> dict:
        if embed_images:
            dataset_dict.save_to_disk(temporary)
        else:
            for split, dataset in dataset_dict.items():
                dataset.to_parquet(os.path.join(temporary, f"{split}.parquet"))
        return {"written_by": "hspnet.data.save_prepared_dataset", "format": "arrow" if embed_images else "parquet"}

    return write_build(dataset_dict, path, write, overwrite=overwrite, inputs=inputs, embedded=embed_images)


def write_build(dataset_dict, path: str | os.PathLike, write, *, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike | None] = (), embedded: bool = True) -> str:
    """The one way a build folder is written (:func:`save_prepared_dataset`, :func:`hspnet.data.shards.
    save_sharded_dataset`): the output path checked (``overwrite``, ``inputs`` and the build report's inputs), the
    images checked when they are to be ``embedded``; ``write(temporary, mode)`` writes the data into a temporary
    sibling folder and returns the fields of ``hspnet_build.json`` it adds; then ``hierarchy.json``, ``report.json``
    and ``hspnet_build.json`` (with ``splits`` and ``entries``), and the folder is swapped in. On any error the
    previous folder is left as it was. Returns the absolute path."""
    report = get_build_report(dataset_dict)
    path = check_output_folder(path, overwrite, [*inputs, *_report_inputs(report)])
    if embedded:
        check_image_paths(dataset_dict)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.isdir(path) else new_folder_mode(parent)
    temporary = _fresh_folder(parent, f".{name}.building-", mode)
    try:
        marker = dict(write(temporary, mode) or {})
        get_hierarchy(dataset_dict).save(os.path.join(temporary, "hierarchy.json"))
        with open(os.path.join(temporary, "report.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        marker.update(splits=list(dataset_dict), entries=sorted(os.listdir(temporary)) + [BUILD_MARKER])
        with open(os.path.join(temporary, BUILD_MARKER), "w", encoding="utf-8") as handle:
            json.dump(marker, handle, indent=1)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _swap_in(temporary, path)
    return path


def _swap_in(temporary: str, path: str) -> None:
    """Put the complete build ``temporary`` at ``path``; the previous folder there is removed only afterwards."""
    if not os.path.lexists(path):
        os.rename(temporary, path)
        return
    parent, name = os.path.split(path)
    previous = tempfile.mkdtemp(prefix=f".{name}.previous-", dir=parent)
    os.rmdir(previous)  # a free name next to ``path``
    os.rename(path, previous)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(previous, path)
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _shard_files(path: str) -> dict[str, list[str]] | None:
    """The shards of each split of a folder written by :func:`hspnet.data.shards.save_sharded_dataset` (from its
    ``hspnet_build.json``), or None for another folder."""
    marker = os.path.join(path, BUILD_MARKER)
    if not os.path.isfile(marker):
        return None
    try:
        info = read_json_file(marker, BUILD_MARKER)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != "shards" or not isinstance(info.get("shards"), dict):
        return None
    return {split: [os.path.join(path, *item["path"].split("/")) for item in entry["files"]]
            for split, entry in info["shards"].items()}


def load_prepared_dataset(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Read a dataset written by :func:`save_prepared_dataset` (either form) or by
    :func:`hspnet.data.shards.save_sharded_dataset` (read whole here; ``hspnet train --streaming true`` streams it);
    ``cache_dir`` is where Parquet is converted to Arrow (default: the Hugging Face datasets cache)."""
    import datasets

    from hspnet.data.core import attach_metadata

    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return datasets.load_from_disk(path)
    files = _shard_files(path) or {
        name[: -len(".parquet")]: os.path.join(path, name)
        for name in sorted(os.listdir(path))
        if name.endswith(".parquet")
    }
    if not files:
        raise FileNotFoundError(f"{path}: neither a save_to_disk folder nor Parquet split files")
    loaded = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_parquet(file, cache_dir=os.fspath(cache_dir) if cache_dir else None)
            for split, file in files.items()
        }
    )
    report = {}
    if os.path.lexists(os.path.join(path, "report.json")):
        report = read_json_file(os.path.join(path, "report.json"), "build report", error=DatasetFormatError)
    return attach_metadata(loaded, report.get("dataset", "custom"), get_hierarchy(loaded), report)
