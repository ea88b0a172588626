"""The common back end of every loader: records -> checks -> single positives -> splits -> cached ``DatasetDict``.

A loader parses its raw layout into :class:`Record` lists (one per official split, ``train`` and ``test``) and a
:class:`~hspnet.data.hierarchy.Hierarchy`; :func:`build_dataset_dict` does the rest:

1. images listed twice (within or across splits) are an error; missing / unreadable images are an error or are
   skipped (``on_missing_image``), and are always counted and listed in the build report;
2. images without any positive label are excluded (counted in the report);
3. every training image gets ONE observed positive: generated (uniformly among its positives, from a hash of
   ``(seed, image_id)``, so the choice of an image never depends on the order, the other images or the number of
   workers) or read from an authors' list (``observed_labels_file``);
4. with ``validation_fraction > 0`` a seeded share of the training images becomes the ``validation`` split (the
   images whose hash ``(seed, "validation", image_id)`` is smallest);
5. the splits are written with ``Dataset.from_generator`` under a fingerprint of the annotation files' CONTENTS,
   the loader options and this schema version, so a changed file or option never returns stale rows.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import inspect
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any

from hspnet.data.errors import DatasetFormatError, ImageError, check_input_file
from hspnet.data.hierarchy import Hierarchy, label_feature
from hspnet.data.text_files import read_observed_labels
from hspnet.utils.files import read_json_file, special_kind

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: label strings split by one explicit separator; truncated annotation files refused
ON_MISSING_IMAGE = ("error", "skip")
CHECK_IMAGES = ("exists", "open", "none")
TRAIN, VALIDATION, TEST = "train", "validation", "test"
_EXAMPLES = 20


@dataclass
class Record:
    """One image: ``image_id`` is its path relative to the image folder (the key the authors' lists use; for a
    Hugging Face dataset, the id column or ``split/row``), ``path`` its absolute path, ``labels`` its positive label
    indices, ``where`` its origin (file and line) for messages."""

    image_id: str
    path: str | None
    labels: list[int]
    where: str | None = None
    row: int | None = None  # for Hugging Face datasets: the row in the source split (``path`` is then None)
    source_split: str | None = None
    negatives: list[int] | None = None  # known (verified) negative label indices, for loaders that have them


@dataclass
class BuildOptions:
    """Options shared by every loader (see :func:`build_dataset_dict`); each loader takes one (``options=``) or its
    fields as keywords (``load_voc(root, seed=1)``), see :meth:`resolve`.

    Args:
        seed: seed of the single-positive choice and of the validation split.
        validation_fraction: share of the training images held out as ``validation`` (Cole et al.: 0.2); 0 gives
            the authors' protocol (train on all training images, evaluate on the test split).
        observed_labels_file: the authors' single-positive list (e.g. ``coco_train_singlelabel.txt``, lines
            ``COCO_train2014_...jpg,52``): use its single positives (and its image set) instead of generating them.
        on_missing_image: ``"error"`` (default) or ``"skip"`` for missing / unreadable images (always reported).
        check_images: ``"exists"`` (default), ``"open"`` (also decodes each image) or ``"none"``.
        num_proc: threads for the image checks (results do not depend on it).
        cache_dir: datasets cache folder (default: the Hugging Face datasets cache).
        force_rebuild: ignore the cache (e.g. after adding images).
    """

    seed: int = 0
    validation_fraction: float = 0.2
    observed_labels_file: str | os.PathLike | None = None
    on_missing_image: str = "error"
    check_images: str = "exists"
    num_proc: int = 1
    cache_dir: str | os.PathLike | None = None
    force_rebuild: bool = False

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")
        fraction = float(self.validation_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}.")
        self.validation_fraction = fraction
        if self.on_missing_image not in ON_MISSING_IMAGE:
            raise ValueError(f"on_missing_image must be one of {ON_MISSING_IMAGE}, got {self.on_missing_image!r}.")
        if self.check_images not in CHECK_IMAGES:
            raise ValueError(f"check_images must be one of {CHECK_IMAGES}, got {self.check_images!r}.")
        if int(self.num_proc) < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc!r}.")
        self.num_proc = int(self.num_proc)
        if self.observed_labels_file is not None:
            self.observed_labels_file = os.path.abspath(os.fspath(self.observed_labels_file))
            check_input_file(self.observed_labels_file, "observed-labels file")

    @classmethod
    def resolve(
        cls, loader: Callable, options: "BuildOptions | None", overrides: dict[str, Any], **defaults: Any
    ) -> "BuildOptions":
        """The options of one ``loader`` call: ``options`` (default: ``BuildOptions(**defaults)``, ``defaults`` being
        the loader's own defaults, e.g. NUS-WIDE skips missing images) with the keyword ``overrides`` applied.

        An override that is not a field is a ``TypeError`` naming the loader, the option and what it takes."""
        names = [f.name for f in fields(cls)]
        unknown = [name for name in overrides if name not in names]
        if unknown:
            named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            own = [p.name for p in inspect.signature(loader).parameters.values() if p.kind in named]
            own = [name for name in own if name != "options"]
            close = difflib.get_close_matches(unknown[0], own + names, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"{loader.__name__}() got an unexpected option {unknown[0]!r}{hint}; it takes {', '.join(own)} and the "
                f"build options {', '.join(names)}"
            )
        if options is None:
            return cls(**{**defaults, **overrides})
        if not isinstance(options, cls):
            raise TypeError(f"{loader.__name__}(): options must be a BuildOptions, got {type(options).__name__}")
        return replace(options, **overrides) if overrides else options

    @property
    def protocol(self) -> str:
        return "heldout" if self.validation_fraction > 0 else "authors"

    def fingerprint_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "observed_labels_file": hash_files([self.observed_labels_file]) if self.observed_labels_file else None,
            "on_missing_image": self.on_missing_image,
            "check_images": self.check_images,
        }


@dataclass
class ParsedSource:
    """What a loader's parser returns: the hierarchy, ``{"train": [...], "test": [...]}`` and report notes."""

    hierarchy: Hierarchy
    splits: dict[str, list[Record]]
    report: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# Hashing, single positives, validation split


def stable_hash(*parts: Any) -> int:
    """A 64-bit hash of ``parts`` that is the same on every machine, process and Python run."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def select_single_positive(labels: Sequence[int], seed: int, key: str) -> int:
    """The observed positive of one image: uniform among ``labels``, fixed by ``(seed, key)`` alone."""
    positives = sorted(set(int(label) for label in labels))
    if not positives:
        raise ValueError(f"Image {key!r} has no positive label to observe.")
    return positives[stable_hash(seed, "single-positive", key) % len(positives)]


def validation_image_ids(image_ids: Sequence[str], fraction: float, seed: int, purpose: str = "validation") -> set[str]:
    """The ``round(fraction * n)`` (at least 1) image ids with the smallest ``hash(seed, purpose, id)``: the held-out
    share depends only on the ids and the seed, not on their order."""
    ids = list(image_ids)
    if fraction <= 0:
        return set()
    count = max(1, int(round(fraction * len(ids))))
    if count >= len(ids):
        raise DatasetFormatError(f"only {len(ids)} image(s): too few to hold out a {purpose} fraction of {fraction}")
    ranked = sorted(ids, key=lambda image_id: (stable_hash(seed, purpose, image_id), image_id))
    return set(ranked[:count])


def hash_files(paths: Iterable[str | os.PathLike], chunk_size: int = 1 << 20) -> str:
    """A digest of the names and CONTENTS of ``paths`` (a missing file hashes as missing; a FIFO, device or folder
    is never opened, it hashes as such)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        path = os.fspath(path)
        digest.update(path.encode("utf-8", "surrogateescape") + b"\0")
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                digest.update(b"<not a regular file>\3")
                continue
            with open(path, "rb") as handle:
                while True:
                    chunk = handle.read(chunk_size)
                    if not chunk:
                        break
                    digest.update(chunk)
            digest.update(b"\1")
        except OSError:
            digest.update(b"<missing>\2")
    return digest.hexdigest()


def fingerprint(name: str, files: Iterable[str | os.PathLike], options: dict[str, Any]) -> str:
    payload = json.dumps(
        {"schema": SCHEMA_VERSION, "dataset": name, "files": hash_files(files), "options": options},
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Image checks


def _image_problem(path: str, mode: str) -> str | None:
    """None if the image is fine; ``"missing"`` or a reason it cannot be read.

    ``"exists"``: the path must be a regular file (a FIFO, device or folder is a problem, and is never opened, so
    it cannot block the build). ``"open"``: also decodes the WHOLE image with :func:`hspnet.utils.images.open_image`
    (truncated files, files that are not images and decompression bombs are problems). The file is only read.
    """
    try:
        mode_bits = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as error:
        return f"cannot access it ({error.strerror or error})"
    kind = special_kind(mode_bits)
    if kind is not None:
        return f"{kind}, not a regular file"
    if mode != "open":
        return None
    from hspnet.utils.images import ImageReadError, open_image

    try:
        open_image(path)
    except ImageReadError as error:
        return error.reason
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except Exception as error:  # anything else a decoder raises (MemoryError included) is a reason, not a crash
        return f"{type(error).__name__}: {' '.join(str(error).split())}"
    return None


def check_image_files(paths: Sequence[str], mode: str = "exists", num_proc: int = 1) -> list[str | None]:
    """For each path: None (fine), ``"missing"`` or why it cannot be used (see :func:`_image_problem`): ``mode`` is
    ``"exists"`` (a regular file), ``"open"`` (also fully decoded) or ``"none"`` (no check)."""
    if mode == "none":
        return [None] * len(paths)
    if num_proc > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=num_proc) as pool:
            return list(pool.map(lambda path: _image_problem(path, mode), paths, chunksize=64))
    return [_image_problem(path, mode) for path in paths]


# --------------------------------------------------------------------------------------------------------------
# Finalising: checks, single positives, splits


@dataclass
class Prepared:
    """The final splits: records per split, the observed positive of each train/validation image, the report."""

    hierarchy: Hierarchy
    records: dict[str, list[Record]]
    observed: dict[str, int]
    report: dict[str, Any]

    def rows(self, split: str, with_negatives: bool = False) -> Iterable[dict[str, Any]]:
        for record in self.records[split]:
            row = {"image": record.path, "image_id": record.image_id, "labels": sorted(record.labels)}
            if split != TEST:
                row["observed_labels"] = [self.observed[record.image_id]]
            if with_negatives:
                row["negative_labels"] = sorted(record.negatives or ())
            yield row


def _examples(items: Sequence, limit: int = _EXAMPLES) -> list:
    return list(items[:limit])


def finalize(name: str, parsed: ParsedSource, options: BuildOptions) -> Prepared:
    """Checks, exclusions, single positives and splits (see the module docstring); returns rows and a report."""
    hierarchy = parsed.hierarchy
    num_labels = hierarchy.num_labels
    report: dict[str, Any] = {
        "dataset": name,
        "seed": options.seed,
        "protocol": options.protocol,
        "validation_fraction": options.validation_fraction,
        "observed_labels": (
            f"from file {options.observed_labels_file}"
            if options.observed_labels_file
            else f"generated: one positive per image, uniform, seed {options.seed}"
        ),
    }
    report.update(parsed.report)
    splits = {split: list(records) for split, records in parsed.splits.items()}
    if TRAIN not in splits or TEST not in splits:
        raise ValueError(f"{name}: the parser must return 'train' and 'test' splits, got {sorted(splits)}.")

    # 1. duplicates
    seen: dict[str, tuple[str, str | None]] = {}
    for split, records in splits.items():
        for record in records:
            for label in (*record.labels, *(record.negatives or ())):
                if not 0 <= label < num_labels:
                    raise DatasetFormatError(
                        f"label index {label} of image {record.image_id!r} is out of range (0..{num_labels - 1})",
                        file=record.where,
                    )
            key = os.path.normpath(record.path) if record.path is not None else f"id:{record.image_id}"
            if key in seen:
                other_split, other_where = seen[key]
                raise DatasetFormatError(
                    f"image {record.image_id!r} is listed twice ({other_split}"
                    + (f" at {other_where}" if other_where else "")
                    + f" and {split}"
                    + (f" at {record.where}" if record.where else "")
                    + ")"
                )
            seen[key] = (split, record.where)

    # 2. images
    excluded: dict[str, int] = {}
    all_records = [
        (split, record) for split, records in splits.items() for record in records if record.path is not None
    ]
    problems = check_image_files([record.path for _, record in all_records], options.check_images, options.num_proc)
    missing = [(split, record) for (split, record), problem in zip(all_records, problems) if problem == "missing"]
    unreadable = [
        (split, record, problem)
        for (split, record), problem in zip(all_records, problems)
        if problem is not None and problem != "missing"
    ]
    if missing or unreadable:
        by_split: dict[str, int] = {}
        for split, *_ in missing + unreadable:
            by_split[split] = by_split.get(split, 0) + 1
        report["missing_images"] = {"count": len(missing), "examples": _examples([r.path for _, r in missing])}
        report["unreadable_images"] = {
            "count": len(unreadable),
            "examples": _examples([[r.path, why] for _, r, why in unreadable]),
        }
        report["bad_images_by_split"] = by_split
        summary = f"{len(missing)} missing and {len(unreadable)} unreadable image(s)"
        if options.on_missing_image == "error":
            lines = [f"missing: {r.path}" for _, r in missing[:10]]
            lines += [f"unreadable: {r.path} ({why})" for _, r, why in unreadable[: max(0, 10 - len(lines))]]
            raise ImageError(
                f"{name}: {summary} (by split: {by_split}): "
                + "; ".join(lines)
                + ("; ..." if len(missing) + len(unreadable) > 10 else "")
                + ". Pass on_missing_image='skip' (CLI: --on_missing_image skip) to leave them out (they are counted).",
                missing=[r.path for _, r in missing],
                unreadable=[(r.path, why) for _, r, why in unreadable],
            )
        logger.warning("%s: skipping %s (by split: %s)", name, summary, by_split)
        bad = {id(record) for _, record in missing} | {id(record) for _, record, _ in unreadable}
        for split in splits:
            splits[split] = [record for record in splits[split] if id(record) not in bad]
        excluded["missing_or_unreadable_images"] = len(bad)

    # 3. images without a positive label
    for split in list(splits):
        kept = [record for record in splits[split] if record.labels]
        if len(kept) != len(splits[split]):
            excluded[f"{split}_without_positive"] = len(splits[split]) - len(kept)
            logger.info(
                "%s: %d %s image(s) have no positive label and are excluded",
                name,
                excluded[f"{split}_without_positive"],
                split,
            )
        splits[split] = kept

    # 4. observed positives
    train = splits[TRAIN]
    observed: dict[str, int] = {}
    if options.observed_labels_file:
        listed = read_observed_labels(options.observed_labels_file, num_labels)
        by_id = {record.image_id: record for record in train}
        matched = [key for key in listed if key in by_id]
        if not matched:
            raise DatasetFormatError(
                f"none of the {len(listed)} entries matches a training image (keys look like "
                f"{next(iter(listed), '?')!r}; training image ids look like {train[0].image_id if train else '?'!r})",
                file=options.observed_labels_file,
            )
        unmatched = [key for key in listed if key not in by_id]
        not_listed = [record for record in train if record.image_id not in listed]
        not_positive = [key for key in matched if listed[key][0] not in by_id[key].labels]
        report["observed_list"] = {
            "file": options.observed_labels_file,
            "entries": len(listed),
            "matched": len(matched),
            "entries_without_training_image": len(unmatched),
            "entries_without_training_image_examples": _examples(unmatched),
            "training_images_not_listed": len(not_listed),
            "observed_label_not_among_positives": len(not_positive),
            "observed_label_not_among_positives_examples": _examples(
                [f"{key} (line {listed[key][1]})" for key in not_positive]
            ),
        }
        if unmatched:
            logger.warning(
                "%s: %d entries of %s have no training image", name, len(unmatched), options.observed_labels_file
            )
        if not_positive:
            logger.warning(
                "%s: for %d image(s) the listed observed label is not among the annotated positives (kept as listed)",
                name,
                len(not_positive),
            )
        if not_listed:
            excluded["train_not_in_observed_list"] = len(not_listed)
        train = [record for record in train if record.image_id in listed]
        observed = {record.image_id: listed[record.image_id][0] for record in train}
    else:
        observed = {
            record.image_id: select_single_positive(record.labels, options.seed, record.image_id) for record in train
        }

    # 5. splits
    for split, records in ((TRAIN, train), (TEST, splits[TEST])):
        if not records:
            raise DatasetFormatError(f"{name}: the {split} split is empty (exclusions: {excluded or 'none'})")
    held_out = validation_image_ids([record.image_id for record in train], options.validation_fraction, options.seed)
    final: dict[str, list[Record]] = {TRAIN: [r for r in train if r.image_id not in held_out]}
    if held_out:
        final[VALIDATION] = [r for r in train if r.image_id in held_out]
    final[TEST] = splits[TEST]
    for split, records in final.items():
        if not records:
            raise DatasetFormatError(f"{name}: the {split} split is empty (exclusions: {excluded or 'none'})")

    report["excluded"] = excluded
    report["num_images"] = {split: len(records) for split, records in final.items()}
    return Prepared(hierarchy=hierarchy, records=final, observed=observed, report=report)


# --------------------------------------------------------------------------------------------------------------
# Building the DatasetDict with a never-stale cache


def make_features(hierarchy: Hierarchy, with_observed: bool, with_negatives: bool = False):
    """``image``, ``image_id``, ``labels`` [, ``observed_labels``] [, ``negative_labels``: the known negatives]."""
    from datasets import Features, Image, List, Value

    label = label_feature(hierarchy)
    features = {"image": Image(), "image_id": Value("string"), "labels": List(label)}
    if with_observed:
        features["observed_labels"] = List(label)
    if with_negatives:
        features["negative_labels"] = List(label)
    return Features(features)


class _Lazy:
    """Runs the parse + finalise step at most once, and only if some split is not cached."""

    def __init__(self, compute: Callable[[], Prepared]):
        self._compute = compute
        self._value: Prepared | None = None

    def get(self) -> Prepared:
        if self._value is None:
            self._value = self._compute()
        return self._value


class _SplitRows:
    def __init__(self, lazy: _Lazy, split: str, with_negatives: bool = False):
        self.lazy, self.split, self.with_negatives = lazy, split, with_negatives

    def __iter__(self):
        return iter(self.lazy.get().rows(self.split, self.with_negatives))


def _generate_rows(rows):
    yield from rows


def hierarchy_option_key(hierarchy) -> Any:
    """A JSON-able cache-key part for a ``hierarchy=`` argument (file paths are keyed by their contents)."""
    if hierarchy is None:
        return None
    if isinstance(hierarchy, Hierarchy):
        return hierarchy.to_dict()
    if isinstance(hierarchy, (str, os.PathLike)):
        return {"file": os.path.abspath(os.fspath(hierarchy)), "digest": hash_files([hierarchy])}
    return json.loads(json.dumps(hierarchy, sort_keys=True, default=str))


def cache_root(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return os.path.abspath(os.fspath(cache_dir))
    import datasets

    return os.path.abspath(os.path.expanduser(str(datasets.config.HF_DATASETS_CACHE)))


def build_dataset_dict(
    name: str,
    parse: Callable[[], ParsedSource],
    options: BuildOptions,
    *,
    annotation_files: Iterable[str | os.PathLike] = (),
    loader_options: dict[str, Any] | None = None,
    negative_labels: bool = False,
):
    """Parse (unless cached), finalise and write the splits; returns a ``datasets.DatasetDict``.

    The cache key is a digest of ``annotation_files`` (their contents), ``loader_options``, the common options
    (seed, validation fraction / protocol, observed-labels file contents, image policy) and the schema version.
    ``negative_labels``: every split also gets a ``negative_labels`` column, each record's ``negatives`` (the known
    negatives of a dataset that has verified absent labels, e.g. Open Images).
    """
    from datasets import Dataset, DatasetDict

    root = cache_root(options.cache_dir)
    key = fingerprint(name, annotation_files, {"loader": loader_options or {}, "common": options.fingerprint_dict(),
                                               **({"negative_labels": True} if negative_labels else {})})
    dataset_key = f"hspnet-{name}-{key}"
    manifest_path = os.path.join(root, "hspnet_manifests", f"{dataset_key}.json")
    if options.force_rebuild:
        for path in glob.glob(os.path.join(root, "generator", f"*fingerprint={dataset_key}-*")):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)

    lazy = _Lazy(lambda: finalize(name, parse(), options))
    manifest = None
    if os.path.isfile(manifest_path):
        try:
            manifest = read_json_file(manifest_path, "dataset manifest")
            hierarchy = Hierarchy.from_dict(manifest["hierarchy"])
            split_names = list(manifest["splits"])
            report = manifest["report"]
        except (OSError, ValueError, KeyError, TypeError):
            manifest = None
    if manifest is None:
        prepared = lazy.get()
        hierarchy, split_names, report = prepared.hierarchy, list(prepared.records), prepared.report

    splits = {}
    for split in split_names:
        dataset = Dataset.from_generator(
            _generate_rows,
            gen_kwargs={"rows": _SplitRows(lazy, split, negative_labels)},
            features=make_features(hierarchy, with_observed=split != TEST, with_negatives=negative_labels),
            cache_dir=root,
            fingerprint=f"{dataset_key}-{split}",
            split=split,
        )
        splits[split] = dataset
    if manifest is None:
        os.makedirs(os.path.dirname(manifest_path), exist_ok=True)
        temporary = f"{manifest_path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump({"hierarchy": hierarchy.to_dict(), "splits": split_names, "report": report}, handle)
        os.replace(temporary, manifest_path)
    return attach_metadata(DatasetDict(splits), name, hierarchy, report, key)


def attach_metadata(dataset_dict, name: str, hierarchy: Hierarchy, report: dict[str, Any], key: str | None = None):
    """Write the hierarchy and the build report into each split's ``info.description`` (JSON)."""
    for split, dataset in dataset_dict.items():
        payload = {
            "hspnet": {
                "dataset": name,
                "split": split,
                "schema_version": SCHEMA_VERSION,
                "fingerprint": key,
                "hierarchy": hierarchy.to_dict(),
                "report": report,
            }
        }
        dataset.info.description = json.dumps(payload)
    return dataset_dict


def get_build_report(dataset) -> dict[str, Any]:
    """The build report (exclusions, missing images, observed-list matching, ...) of a prepared dataset."""
    from datasets import DatasetDict

    candidates = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    for split in candidates:
        description = getattr(getattr(split, "info", None), "description", None)
        if description:
            try:
                return json.loads(description)["hspnet"]["report"]
            except (ValueError, KeyError, TypeError):
                continue
    return {}
