"""Writing a prepared dataset somewhere other than the cache, and reading it back."""

from __future__ import annotations

import json
import os

from .core import get_build_report
from .hierarchy import get_hierarchy


def save_prepared_dataset(dataset_dict, path: str | os.PathLike, embed_images: bool = True) -> str:
    """Write a prepared ``DatasetDict`` to ``path``.

    ``embed_images=True``: ``save_to_disk`` (a self-contained copy: the image bytes are embedded, e.g. ~19 GB for
    COCO). ``embed_images=False``: one Parquet file per split holding the image PATHS (small, but only valid where
    the images are), plus ``hierarchy.json`` and ``report.json``. :func:`load_prepared_dataset` reads both.
    """
    path = os.fspath(path)
    if embed_images:
        dataset_dict.save_to_disk(path)
    else:
        os.makedirs(path, exist_ok=True)
        for split, dataset in dataset_dict.items():
            dataset.to_parquet(os.path.join(path, f"{split}.parquet"))
    get_hierarchy(dataset_dict).save(os.path.join(path, "hierarchy.json"))
    with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(get_build_report(dataset_dict), handle, indent=1)
    return path


def load_prepared_dataset(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Read a dataset written by :func:`save_prepared_dataset` (either form); ``cache_dir`` is where the Parquet
    form is converted to Arrow (default: the Hugging Face datasets cache)."""
    import datasets

    from .core import attach_metadata

    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return datasets.load_from_disk(path)
    files = {
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
    if os.path.isfile(os.path.join(path, "report.json")):
        with open(os.path.join(path, "report.json"), encoding="utf-8") as handle:
            report = json.load(handle)
    return attach_metadata(loaded, report.get("dataset", "custom"), get_hierarchy(loaded), report)
