"""From dataset rows to model batches: the one preprocessing of training, evaluation and the Trainer adapter.

- :func:`read_dataset_image`: one value of an image column as the 8-bit RGB image the model sees, read exactly as
  `hspnet predict` reads a file (:mod:`hspnet.utils.images`); :func:`undecoded`: a split whose image files are read so;
- :func:`make_transform` / :func:`collate`: images -> `pixel_values`, label lists -> multi-hot targets (in the
  model's label order when a permutation is given, :func:`label_permutation`), stacked into batches;
- :func:`use_verified_negatives`: whether training targets carry the verified negatives (-1);
- :func:`eval_dataloader`: both put together for one split; :func:`add_index_column`: the row number ROLE needs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from hspnet.utils.images import MAX_IMAGE_PIXELS, ImageReadError, open_image, to_rgb
from hspnet.utils.validation import check_positive_int


def add_index_column(dataset):
    """Add `index` (the row number), needed by ROLE and for traceability."""
    if "index" in dataset.column_names:
        return dataset
    return dataset.add_column("index", list(range(len(dataset))))


def label_permutation(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> list[int]:
    """For each dataset label index, the model's index of the same name. Raises ``ValueError`` listing the
    differences when the two label sets are not the same."""
    model_labels, dataset_labels = list(model_labels), list(dataset_labels)
    if set(model_labels) != set(dataset_labels) or len(model_labels) != len(dataset_labels):
        in_model, in_data = set(model_labels), set(dataset_labels)
        only_model = [name for name in model_labels if name not in in_data]
        only_data = [name for name in dataset_labels if name not in in_model]
        raise ValueError(
            f"the model's {len(model_labels)} labels are not the dataset's {len(dataset_labels)}: only in the model "
            f"{only_model[:5]}{'...' if len(only_model) > 5 else ''}, only in the dataset "
            f"{only_data[:5]}{'...' if len(only_data) > 5 else ''}"
        )
    index = {name: i for i, name in enumerate(model_labels)}
    return [index[name] for name in dataset_labels]


EMBEDDED_IMAGE = "<an image embedded in the dataset>"

UNREADABLE_HINT = ("leave unreadable images out of the dataset with `hspnet prepare --check_images open "
                   "--on_missing_image skip` (dataset options check_images='open', on_missing_image='skip')")
"""What an error about a dataset's image adds (training and evaluation read every image; this has no option to
raise the pixel limit, so an image over it must be made smaller or left out)."""


def read_dataset_image(value: Any, max_pixels: int | None = MAX_IMAGE_PIXELS):
    """One value of a dataset's image column as the 8-bit RGB ``PIL.Image`` the model sees, read exactly as
    ``predict.py`` reads a file: a local path (or ``{"path": ..., "bytes": None}``, the undecoded ``datasets.Image``
    value) through :func:`hspnet.utils.images.open_image`; embedded bytes decoded and passed to
    :func:`hspnet.utils.images.to_rgb` (EXIF orientation, 16-bit and float images scaled), with the same decompression-bomb
    limit; an already decoded ``PIL.Image`` through :func:`hspnet.utils.images.to_rgb`. Raises
    :class:`hspnet.utils.images.ImageReadError` naming the file."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    if not isinstance(value, dict):
        raise ValueError("expected an image (a path, a PIL image or a datasets Image value), got "
                         f"{type(value).__name__}")
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        return open_image(data, max_pixels=max_pixels, name=path or EMBEDDED_IMAGE)
    if not path:
        raise ValueError("a dataset image has neither bytes nor a path")
    if "://" in path or "::" in path:  # a remote file (hf://, https://...): datasets' own reader
        import datasets

        return to_rgb(datasets.Image().decode_example(value))
    return open_image(path, max_pixels=max_pixels)


def undecoded(data):
    """``data`` with its image column left undecoded, so that :func:`read_dataset_image` reads the files."""
    import datasets

    feature = data.features.get("image")
    if isinstance(feature, datasets.Image) and feature.decode:
        return data.cast_column("image", datasets.Image(decode=False))
    return data


def use_verified_negatives(config, train_set) -> bool:
    """`config.use_verified_negatives`, checked against the training split: raises a one-line `ValueError` when the
    option is on and the split has no `negative_labels` column (verified negatives, as Open Images has)."""
    if not getattr(config, "use_verified_negatives", False):
        return False
    if "negative_labels" not in train_set.column_names:
        raise ValueError(f"use_verified_negatives is on but the training split has no 'negative_labels' column "
                         f"(columns: {list(train_set.column_names)}): only a dataset with verified negatives "
                         "(openimages) has them; turn the option off")
    return True


def make_transform(image_processor, num_labels: int, permutation: list[int] | None = None,
                   max_pixels: int | None = MAX_IMAGE_PIXELS, verified_negatives: bool = False):
    """A `datasets` `with_transform` function, the one preprocessing of training, evaluation and the Trainer:
    images -> `pixel_values` `(B, 3, H, W)`, label lists (`labels`, `observed_labels`) -> `(B, C)` multi-hot
    targets, in the model's label order when `permutation[dataset_index] = model_index` is given; `index` is kept.
    With `verified_negatives`, rows with `observed_labels` and `negative_labels` also get `observed_targets`: the
    observed multi-hot with -1 at the verified negatives (the training targets of the losses that take them).

    Each image is read by :func:`read_dataset_image`, as `hspnet predict` reads a file: EXIF orientation applied,
    16-bit / 32-bit / float images scaled to 8 bits (`convert("RGB")` alone would clip them to white or black), then
    RGB; an image file (a dataset whose image column is cast by :func:`undecoded`) is fully decoded and bounded by
    `max_pixels`, an unreadable one named."""
    from hspnet.data import to_multi_hot

    num_labels = check_positive_int(num_labels, "num_labels")

    def multi_hot(rows) -> torch.Tensor:
        if permutation is not None:
            rows = [[permutation[i] for i in row] for row in rows]
        return torch.from_numpy(to_multi_hot(rows, num_labels))

    def read(batch: dict, row: int):
        value = batch["image"][row]
        try:
            return read_dataset_image(value, max_pixels)
        except ImageReadError as error:  # named (an embedded image also by its row) and with what to do
            name = error.path
            if isinstance(value, dict) and value.get("bytes") is not None:  # its path is at most a file name
                file = value.get("path") or "an image"
                if batch.get("image_id") is not None:
                    name = f"{file} (image_id {batch['image_id'][row]!r}, embedded in the dataset)"
                elif batch.get("index") is not None:
                    name = f"{file} (dataset row {batch['index'][row]}, embedded in the dataset)"
            raise ImageReadError(name, error.reason, hint=error.hint or UNREADABLE_HINT) from None

    def transform(batch: dict) -> dict:
        images = [read(batch, row) for row in range(len(batch["image"]))]
        out = {"pixel_values": image_processor(images=images, return_tensors="pt")["pixel_values"]}
        out["labels"] = multi_hot(batch["labels"])
        if "observed_labels" in batch:
            out["observed_labels"] = multi_hot(batch["observed_labels"])
            if verified_negatives and "negative_labels" in batch:  # an observed positive stays 1
                negative = (multi_hot(batch["negative_labels"]) > 0) & (out["observed_labels"] == 0)
                out["observed_targets"] = torch.where(negative, -1.0, out["observed_labels"])
        if "index" in batch:
            out["index"] = torch.as_tensor(batch["index"], dtype=torch.long)
        return out

    return transform


def collate(examples: list[dict]) -> dict:
    """Stack the examples of :func:`make_transform` into a batch: every key of the first example, `(B, ...)`."""
    return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in examples[0]}


def eval_dataloader(data, image_processor, num_labels: int, batch_size: int, permutation: list[int] | None = None,
                    num_workers: int = 0, max_pixels: int | None = MAX_IMAGE_PIXELS):
    """The `DataLoader` of an evaluation over one split: its image files read as `hspnet predict` reads them
    (:func:`undecoded`, :func:`make_transform`), batches of `pixel_values` `(B, 3, H, W)` and `labels` `(B, C)` in the
    model's label order, in dataset order (not shuffled). Give it to `accelerator.prepare` before
    :func:`evaluate_model`."""
    from torch.utils.data import DataLoader

    data = undecoded(data).select_columns(["image", "labels"])
    transform = make_transform(image_processor, num_labels, permutation, max_pixels)
    return DataLoader(data.with_transform(transform), batch_size=batch_size, collate_fn=collate,
                      num_workers=num_workers)
