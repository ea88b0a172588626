"""Datasets for single-positive multi-label learning, as Hugging Face ``datasets.DatasetDict`` objects.

Loaders (each returns ``train`` [, ``validation``], ``test``):

* :func:`load_coco`, :func:`load_voc`, :func:`load_nuswide`, :func:`load_cub`: the four benchmarks from their
  official layouts (optionally with the HSPNet authors' single-positive lists);
* :func:`load_openimages`: Open Images V6 / V7 image-level labels from the official files, with the human-verified
  negatives as a ``negative_labels`` column and the class MIDs as the hierarchy's ``label_ids``;
* :func:`load_image_folder` (images + ``metadata.csv`` / ``metadata.jsonl``) and :func:`load_custom_dataset` (any
  HF dataset with an image column and a multi-label column);
* :func:`load_demo_dataset`: procedurally drawn coloured shapes, no download.

Schema of every split: ``image`` (``Image()``, stored as a path), ``image_id`` (string: the file path relative to
the image folder), ``labels`` (``List(ClassLabel)``: all positives) and, in ``train`` / ``validation``,
``observed_labels`` (``List(ClassLabel)`` with exactly one element: the single observed positive). The label
hierarchy travels with the features; read it with :func:`get_hierarchy`.
"""

from hspnet.data.clustering import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_PROMPT_TEMPLATE,
    auto_hierarchy,
    cluster_label_embeddings,
    default_num_groups,
    label_text_embeddings,
)
from hspnet.data.coco import load_coco
from hspnet.data.core import BuildOptions, Record, get_build_report, select_single_positive, validation_image_ids
from hspnet.data.cub import load_cub
from hspnet.data.custom import load_image_folder
from hspnet.data.demo import demo_hierarchy, draw_demo_image, generate_demo_images, load_demo_dataset
from hspnet.data.errors import DatasetFormatError, ImageError, MissingFileError
from hspnet.data.export import load_prepared_dataset, save_prepared_dataset
from hspnet.data.hf_dataset import load_custom_dataset
from hspnet.data.hierarchy import (
    BUILTIN_HIERARCHIES,
    Hierarchy,
    builtin_hierarchy,
    get_hierarchy,
    load_hierarchy_file,
)
from hspnet.data.nuswide import load_nuswide
from hspnet.data.openimages import load_openimages
from hspnet.data.stats import dataset_statistics, format_statistics
from hspnet.data.text_files import read_label_list, read_observed_labels
from hspnet.data.voc import load_voc

BENCHMARK_LOADERS = {
    "coco": load_coco,
    "voc": load_voc,
    "nuswide": load_nuswide,
    "cub": load_cub,
    "openimages": load_openimages,
}


def prepare_dataset(name: str, root=None, options: BuildOptions | None = None, **kwargs):
    """One entry point: ``name`` in ``coco``, ``voc``, ``nuswide``, ``cub``, ``openimages`` (``root`` required),
    ``folder`` (``root`` = image folder), ``demo`` (no root). ``options`` (a :class:`BuildOptions`) and ``kwargs`` go
    to the loader: its own arguments and :class:`BuildOptions` fields (which override ``options``); an option the
    loader does not take is a ``TypeError`` that names it."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    aliases = {
        "coco2014": "coco",
        "mscoco": "coco",
        "voc2012": "voc",
        "pascal": "voc",
        "nus": "nuswide",
        "cub200": "cub",
        "cub2002011": "cub",
        "oi": "openimages",
        "oid": "openimages",
        "custom": "folder",
        "imagefolder": "folder",
    }
    key = aliases.get(key, key)
    if key == "demo":
        return load_demo_dataset(options, **kwargs)
    if key not in BENCHMARK_LOADERS and key != "folder":
        raise ValueError(f"Unknown dataset {name!r}; choose coco, voc, nuswide, cub, openimages, folder or demo.")
    if root is None:
        raise MissingFileError(f"the {name} dataset needs a root folder")
    if key == "folder":
        return load_image_folder(root, options, **kwargs)
    return BENCHMARK_LOADERS[key](root, options, **kwargs)


def open_dataset(dataset: str, root=None, options: dict | None = None, cache_dir=None):
    """The ``DatasetDict`` named by ``dataset``: a folder written by ``save_prepared_dataset`` /
    ``datasets_scripts/prepare.py --output``, or a name for :func:`prepare_dataset` (``root`` and ``options`` go to
    its loader). Options a loader does not take, and paths that do not exist, raise errors that say so.

    What training and evaluation read: the ``image`` column of every split is left undecoded (``{"path", "bytes"}``
    values, :func:`hspnet.data.batches.undecoded`), so that each image is read by
    :func:`hspnet.data.batches.read_dataset_image` as ``hspnet predict`` reads a file (fully decoded, at most
    :data:`hspnet.utils.images.MAX_IMAGE_PIXELS` pixels, an unreadable image named in one line), never by the
    ``datasets`` decoder (whose errors, e.g. PIL's ``DecompressionBombError``, name no file)."""
    import os

    import datasets

    options = dict(options or {})
    if cache_dir and "cache_dir" not in options:
        options["cache_dir"] = cache_dir
    if os.path.isdir(dataset) and root is None:
        data = load_prepared_dataset(dataset, cache_dir=cache_dir)
    elif os.sep in dataset or dataset.startswith("."):
        raise FileNotFoundError(f"{dataset}: no such prepared dataset folder")
    else:
        try:
            data = prepare_dataset(dataset, root, **options)
        except TypeError as error:  # an option the loader does not take
            raise ValueError(f"dataset options {options} do not fit the {dataset!r} loader: {error}") from None
    for split in list(data):  # as hspnet.data.batches.undecoded does (which imports this package)
        feature = data[split].features.get("image")
        if isinstance(feature, datasets.Image) and feature.decode:
            data[split] = data[split].cast_column("image", datasets.Image(decode=False))
    return data


def to_multi_hot(label_lists, num_labels: int):
    """``[[2, 5], [0]]`` -> a float32 ``(len, num_labels)`` multi-hot ``numpy`` array."""
    import numpy as np

    out = np.zeros((len(label_lists), num_labels), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        out[row, list(labels)] = 1.0
    return out


__all__ = [
    "BENCHMARK_LOADERS",
    "open_dataset",
    "BUILTIN_HIERARCHIES",
    "BuildOptions",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_PROMPT_TEMPLATE",
    "DatasetFormatError",
    "Hierarchy",
    "ImageError",
    "MissingFileError",
    "Record",
    "auto_hierarchy",
    "builtin_hierarchy",
    "cluster_label_embeddings",
    "dataset_statistics",
    "default_num_groups",
    "label_text_embeddings",
    "demo_hierarchy",
    "draw_demo_image",
    "format_statistics",
    "generate_demo_images",
    "get_build_report",
    "get_hierarchy",
    "load_coco",
    "load_cub",
    "load_custom_dataset",
    "load_demo_dataset",
    "load_hierarchy_file",
    "load_image_folder",
    "load_nuswide",
    "load_openimages",
    "load_prepared_dataset",
    "load_voc",
    "prepare_dataset",
    "read_label_list",
    "read_observed_labels",
    "save_prepared_dataset",
    "select_single_positive",
    "to_multi_hot",
    "validation_image_ids",
]
