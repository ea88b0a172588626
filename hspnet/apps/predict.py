"""Multi-label prediction on image files with a trained model (`hspnet predict`, `scripts/predict.py`).

- :func:`collect_image_paths`: files, folders (searched recursively for :data:`IMAGE_EXTENSIONS`), never URLs;
  FIFOs, devices, sockets and broken links inside a folder are skipped with a warning (never opened, so never a hang);
- the model comes from :func:`hspnet.models.loading.load_model`, the one model loader of the package: a model folder
  or Hub id -> ``(model, image_processor)``, the folder checked file by file first, weights that do not fit
  ``config.json`` or hold NaN / inf refused instead of being silently re-initialised;
- :func:`predict_images`: batched inference (``torch.inference_mode``; an HSPNet model in eval mode caches its label
  embeddings, so each batch costs only the image tower) -> one :class:`Prediction` per image, with the labels whose
  sigmoid score is above a threshold (one, or one per label: by default the model's calibrated ``label_thresholds``,
  :mod:`hspnet.models.thresholds`) and/or the top-k labels. Images are read by :func:`hspnet.utils.images.open_image`,
  as in training and evaluation: EXIF orientation applied, 16-bit and float images scaled to 8 bits, fully decoded
  (a truncated file fails here), decompression bombs refused;
- :func:`format_table` / :func:`format_jsonl`: the two output formats, written atomically
  (:func:`hspnet.utils.files.write_output`);
- the command line is `hspnet.cli.predict`.

Errors a user can cause (missing path, URL, folder without images, unreadable or non-image file, missing or broken
model, bad argument) raise ``OSError`` / ``ValueError`` subclasses whose one-line message names the path or the
argument; the command line prints that line and exits with status 1 (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from hspnet.apps.defaults import ON_ERROR, PREDICT_FORMATS
from hspnet.hub.transfer import model_files
from hspnet.models.loading import label_names, load_model, scores_from_logits
from hspnet.models.thresholds import DEFAULT_THRESHOLD, describe_thresholds, label_thresholds, stored_label_thresholds
from hspnet.utils.errors import one_line
from hspnet.utils.files import refuse_inputs_as_output, special_kind, write_output
from hspnet.utils.images import MAX_IMAGE_PIXELS, ImageReadError, open_image
from hspnet.utils.validation import check_positive_int, check_probability

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")
"""Extensions (case-insensitive) picked up when a FOLDER is searched; a file named explicitly is always tried."""
FORMATS = PREDICT_FORMATS
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _path_list(paths: Any, name: str) -> list[str]:
    """A list of paths; a single path (``str`` / ``PathLike``) is one item, not a sequence of characters."""
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    if isinstance(paths, bytes) or not isinstance(paths, Iterable):
        raise ValueError(f"{name} must be a path or a list of paths, got {type(paths).__name__}")
    items = list(paths)
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"{name} must hold paths (str or os.PathLike), got {item!r}")
    return [os.fspath(item) for item in items]


def is_url(text: str) -> bool:
    return bool(_URL.match(str(text)))


def collect_image_paths(inputs: Iterable[str | os.PathLike] | str | os.PathLike,
                        extensions: Sequence[str] = IMAGE_EXTENSIONS,
                        skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Expand files and folders into a list of image files, in the given order, folders sorted recursively,
    duplicates removed.

    A file named explicitly is kept whatever its extension or kind (it fails later, naming it, if it is not a readable
    image, e.g. a FIFO). A folder contributes the regular files whose extension is in ``extensions``
    (case-insensitive; hidden files and folders skipped, symbolic links to folders not followed). Entries of a folder
    that match an extension but are FIFOs, sockets, devices or broken links are never opened: each is skipped with a
    ``warning:`` line on stderr and appended as ``(path, reason)`` to ``skipped`` when a list is given; so are
    sub-folders that cannot be listed. Raises ``ValueError`` for a URL (``http://``, ``https://``, any
    ``scheme://``) or a folder without images, ``FileNotFoundError`` for a path that does not exist, naming the input.
    """
    inputs = _path_list(inputs, "inputs")
    if isinstance(extensions, str):
        extensions = (extensions,)
    if not extensions or not all(isinstance(ext, str) and ext for ext in extensions):
        raise ValueError(f"extensions must be a non-empty list of file name endings such as '.jpg', got {extensions!r}")
    if not inputs:
        raise ValueError("no image given: pass image files or folders")
    lowered = tuple(ext.lower() for ext in extensions)
    found: list[str] = []

    def skip(path: str, reason: str) -> None:
        print(f"warning: skipping {path}: {reason}", file=sys.stderr)
        if skipped is not None:
            skipped.append((path, reason))

    for item in inputs:
        if is_url(item):
            raise ValueError(f"{item}: URLs are not supported; download the image and pass the local file")
        if not os.path.lexists(item):
            raise FileNotFoundError(f"{item}: no such file or folder")
        if not os.path.exists(item):
            raise FileNotFoundError(f"{item}: a broken symbolic link (its target does not exist)")
        if not os.path.isdir(item):
            found.append(item)
            continue

        def listing_failed(error: OSError, top: str = item) -> None:
            where = error.filename or top
            if os.path.normpath(where) == os.path.normpath(top):
                raise PermissionError(f"{top}: cannot list this folder ({error.strerror or one_line(error)})")
            skip(where, f"cannot list this folder ({error.strerror or one_line(error)})")

        images = []
        for root, dirs, files in os.walk(item, onerror=listing_failed):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.lower().endswith(lowered):
                    continue
                path = os.path.join(root, name)
                try:
                    kind = special_kind(os.stat(path).st_mode)  # follows links; never opens the file
                except FileNotFoundError:
                    kind = "a broken symbolic link"
                except OSError as error:
                    kind = f"cannot check it ({error.strerror or one_line(error)})"
                if kind is not None:
                    skip(path, f"{kind}, not an image file")
                    continue
                images.append(path)
        if not images:
            raise ValueError(f"{item}: folder contains no image files (looked for {', '.join(lowered)})")
        found.extend(images)
    return list(dict.fromkeys(found))


def load_image(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS):
    """Open ``path`` as an 8-bit RGB ``PIL.Image``: :func:`hspnet.utils.images.open_image` (fully decoded, EXIF orientation
    applied, 16-bit / float images scaled, decompression bombs refused), or raise :class:`ImageReadError` naming it."""
    return open_image(path, max_pixels=max_pixels)


# ---------------------------------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The result for one image: ``labels`` = ``[(name, score), ...]`` by decreasing score; ``scores`` = every
    label's score (in label order) when requested; ``error`` = why the image was skipped (``on_error="skip"``)."""

    path: str
    labels: list[tuple[str, float]] = field(default_factory=list)
    scores: dict[str, float] | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"path": self.path}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["labels"] = [name for name, _ in self.labels]
        out["predictions"] = [{"label": name, "score": score} for name, score in self.labels]
        if self.scores is not None:
            out["scores"] = self.scores
        return out


def _check_selection(threshold: Any, top_k: Any) -> tuple[float | list[float] | None, int | None]:
    """``threshold``: None, one number in [0, 1], or one such number per label (a list, e.g.
    :func:`hspnet.models.thresholds.label_thresholds`)."""
    if isinstance(threshold, (list, tuple)) or (hasattr(threshold, "tolist") and getattr(threshold, "ndim", 0) == 1):
        threshold = [check_probability(value, f"threshold[{i}]", allow_none=False)
                     for i, value in enumerate(list(threshold))]
    else:
        threshold = check_probability(threshold, "threshold")
    top_k = check_positive_int(top_k, "top_k", allow_none=True)
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    return threshold, top_k


def select_labels(scores: Sequence[float], names: Sequence[str], threshold: float | None = 0.5,
                  top_k: int | None = None) -> list[tuple[str, float]]:
    """The labels to report for one image, by decreasing score (ties: lower label index first).

    ``threshold`` only: every label with ``score > threshold`` (strict, as the metrics); a list gives each label its
    own threshold (``score[i] > threshold[i]``). ``top_k`` only: the ``k`` best labels whatever their score. Both: at
    most ``k`` labels, each above its threshold. ``ValueError`` for a threshold outside ``[0, 1]`` (or NaN), a
    ``top_k`` < 1, scores, names (or thresholds) of different lengths, or a NaN score.
    """
    threshold, top_k = _check_selection(threshold, top_k)
    if len(scores) != len(names):
        raise ValueError(f"{len(scores)} scores for {len(names)} label names")
    if isinstance(threshold, list) and len(threshold) != len(names):
        raise ValueError(f"{len(threshold)} thresholds for {len(names)} label names")
    above = (lambda i: values[i] > threshold[i]) if isinstance(threshold, list) else (  # noqa: E731
        lambda i: values[i] > threshold)
    values = [float(score) for score in scores]
    if not all(math.isfinite(value) for value in values):
        raise ValueError("the scores hold NaN or infinite values")
    key = lambda i: (-values[i], i)  # noqa: E731
    if top_k is not None:
        order = heapq.nsmallest(top_k, range(len(names)), key=key)  # O(C log k): cheap with 10,000 labels
        if threshold is not None:
            order = [i for i in order if above(i)]
    else:
        order = sorted((i for i in range(len(names)) if above(i)), key=key)
    return [(names[i], values[i]) for i in order]


def select_label_rows(probabilities, names: Sequence[str], threshold: float | None = 0.5,
                      top_k: int | None = None) -> list[list[tuple[str, float]]]:
    """:func:`select_labels` for each row of a ``(B, C)`` tensor of finite scores, with the same result (scores as
    Python floats of the tensor's values, ties by lower label index), without turning the B x C scores into Python
    objects: a stable descending sort per row in torch, then only the selected labels are read. Per-label thresholds
    are compared in float64 (a calibrated threshold lies between two float32 scores; see docs/thresholds.md)."""
    import torch

    threshold, top_k = _check_selection(threshold, top_k)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(names):
        raise ValueError(f"{tuple(probabilities.shape)} scores for {len(names)} label names")
    if isinstance(threshold, list) and len(threshold) != len(names):
        raise ValueError(f"{len(threshold)} thresholds for {len(names)} label names")
    values, order = torch.sort(probabilities.detach().cpu(), dim=1, descending=True, stable=True)
    if top_k is not None:
        values, order = values[:, :top_k], order[:, :top_k]
    if isinstance(threshold, list):  # each label its own threshold: the kept labels are no longer a prefix
        keep = values.double() > torch.tensor(threshold, dtype=torch.float64)[order]
        rows = []
        for row in range(values.shape[0]):
            kept = keep[row].nonzero().flatten()
            indices, scores = order[row, kept].tolist(), values[row, kept].tolist()
            rows.append([(names[i], score) for i, score in zip(indices, scores)])
        return rows
    keep = values > threshold if threshold is not None else torch.ones_like(values, dtype=torch.bool)
    counts = keep.sum(dim=1).tolist()  # the kept labels of a row are a prefix of its sorted scores
    rows = []
    for row, count in enumerate(counts):
        indices, scores = order[row, :count].tolist(), values[row, :count].tolist()
        rows.append([(names[i], score) for i, score in zip(indices, scores)])
    return rows


def _as_read_error(path: str, error: BaseException) -> ImageReadError:
    if isinstance(error, ImageReadError):
        return error
    if isinstance(error, FileNotFoundError):
        return ImageReadError(path, "no such file (removed after the inputs were listed?)")
    return ImageReadError(path, getattr(error, "strerror", None) or one_line(error))


def skip_reason(error: str | BaseException) -> str:
    """The kind of a skipped image, for the summary: ``"decompression bomb"``, ``"not a regular file"`` or
    ``"unreadable"``."""
    text = str(error)
    if "decompression bomb" in text:
        return "decompression bomb"
    if re.search(r"\((a FIFO|a socket|a device|a folder|not a regular file)[,)]", text):
        return "not a regular file"
    return "unreadable"


def predict_images(
    model,
    image_processor,
    paths: Sequence[str],
    *,
    batch_size: int = 32,
    threshold: float | None = 0.5,
    top_k: int | None = None,
    on_error: str = "fail",
    all_scores: bool = False,
    progress: bool = True,
    device: Any = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[Prediction]:
    """Predict labels for each image of ``paths`` (already expanded by :func:`collect_image_paths`).

    Images are read by :func:`load_image` (:func:`hspnet.utils.images.open_image`: EXIF orientation, 16-bit and float
    images, full decode, at most ``max_pixels`` pixels, ``None``: PIL's own limit only). Batched (``batch_size``
    images per forward), under ``torch.inference_mode()``, with a tqdm progress bar on stderr (``progress``).
    ``threshold`` / ``top_k``: see :func:`select_labels` (``threshold`` may be one per label, e.g.
    :func:`hspnet.models.thresholds.label_thresholds` of the model). ``on_error``: ``"fail"`` (default) raises
    :class:`ImageReadError` at the first unreadable image; ``"skip"`` returns a :class:`Prediction` with ``error``
    set for it, warns on stderr and goes on. ``all_scores``: also return every label's score. ``device``: where to
    run (default: the model's device). Every argument is checked first (``ValueError`` naming it).
    """
    import torch
    from tqdm.auto import tqdm

    paths = _path_list(paths, "paths")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    max_pixels = check_positive_int(max_pixels, "max_pixels", allow_none=True)
    threshold, top_k = _check_selection(threshold, top_k)
    names = label_names(model)
    if isinstance(threshold, list) and len(threshold) != len(names):
        raise ValueError(f"{len(threshold)} thresholds for the model's {len(names)} labels")
    if top_k is not None and top_k > len(names):
        raise ValueError(f"top_k must be in [1, {len(names)}] (the model has {len(names)} labels), got {top_k}")
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    model_device = next(model.parameters()).device
    model_dtype = next(model.parameters()).dtype

    results: list[Prediction] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    try:
        with torch.inference_mode():
            for start in range(0, len(paths), batch_size):
                batch_paths = list(paths[start : start + batch_size])
                images, kept, slots = [], [], []
                for path in batch_paths:
                    try:
                        image = load_image(path, max_pixels=max_pixels)
                    except (ImageReadError, OSError) as error:
                        read_error = _as_read_error(path, error)
                        if on_error == "fail":
                            raise read_error from (None if read_error is error else error)
                        print(f"warning: skipping {read_error}", file=sys.stderr)
                        slots.append(Prediction(path=path, error=str(read_error)))
                        continue
                    images.append(image)
                    kept.append(path)
                    slots.append(None)
                batch_results = iter([])
                if images:
                    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
                    logits = model(pixel_values=pixel_values.to(model_device, model_dtype)).logits
                    if logits.ndim != 2 or logits.shape[-1] != len(names):
                        raise ValueError(f"the model returns scores of shape {tuple(logits.shape)} for {len(images)} "
                                         f"image(s) but its config names {len(names)} labels (id2label)")
                    probabilities = scores_from_logits(model, logits)
                    finite = torch.isfinite(probabilities).all(dim=-1).tolist()
                    if not all(finite):
                        bad = kept[finite.index(False)]
                        raise ValueError(f"{bad}: the model gave NaN or infinite scores for this image (broken "
                                         "weights, or an overflow in reduced precision)")
                    selected = select_label_rows(probabilities, names, threshold, top_k)
                    all_rows = probabilities.cpu().tolist() if all_scores else [None] * len(kept)
                    batch_results = iter(
                        Prediction(path=path, labels=labels, scores=dict(zip(names, row)) if all_scores else None)
                        for path, labels, row in zip(kept, selected, all_rows)
                    )
                results.extend(slot if slot is not None else next(batch_results) for slot in slots)
                bar.update(len(batch_paths))
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def _threshold_of(threshold: float | dict[str, float] | None):
    """``name -> the threshold the label was selected with`` (None: no threshold) from one threshold or a per-label
    ``{name: threshold}`` dict."""
    if isinstance(threshold, dict):
        return lambda name: threshold[name]
    threshold = check_probability(threshold, "threshold")
    return lambda name: threshold


def format_jsonl(predictions: Iterable[Prediction], threshold: float | dict[str, float] | None = None,
                 label_ids: dict[str, str] | None = None) -> str:
    """One JSON object per line: ``{"path", "labels": [names], "predictions": [{"label", "id"?, "score",
    "threshold"?}], "scores"?}`` or ``{"path", "error"}`` for a skipped image. ``threshold``: the one the labels were
    selected with, or ``{label: threshold}`` for per-label thresholds: each prediction then says its threshold.
    ``label_ids``: ``{label: the dataset's id}`` (a model's ``config.label_ids``, e.g. Open Images MIDs): each
    prediction of a label that has one says it as ``id``."""
    of = _threshold_of(threshold)
    lines = []
    for p in predictions:
        record = p.to_dict()
        if label_ids and "predictions" in record:
            record["predictions"] = [{"label": item["label"], "id": label_ids[item["label"]], **item}
                                     if label_ids.get(item["label"]) is not None else item
                                     for item in record["predictions"]]
        if threshold is not None:
            for item in record.get("predictions", []):
                item["threshold"] = of(item["label"])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def format_table(predictions: Sequence[Prediction], threshold: float | dict[str, float] | None = None,
                 top_k: int | None = None, digits: int = 3) -> str:
    """A plain-text table: one row per image, its labels with scores (``label (0.934)``) by decreasing score; with
    per-label thresholds (``threshold`` a ``{label: threshold}`` dict) each label with its threshold (``label (0.934 >
    0.420)``)."""
    per_label = threshold if isinstance(threshold, dict) else None
    threshold = None if per_label is not None else check_probability(threshold, "threshold")
    top_k = check_positive_int(top_k, "top_k", allow_none=True)
    digits = check_positive_int(digits, "digits", minimum=0)
    rule = []
    if top_k is not None:
        rule.append(f"top {top_k}")
    if threshold is not None:
        rule.append(f"score > {threshold:g}")
    if per_label is not None:
        rule.append("score > the label's threshold")
    header = ("image", f"labels ({', '.join(rule)})" if rule else "labels")
    rows = []
    for p in predictions:
        if p.error is not None:
            text = f"SKIPPED: {p.error}"
        elif p.labels:
            text = ", ".join(f"{name} ({score:.{digits}f}" + (f" > {per_label[name]:.{digits}f})" if per_label else ")")
                             for name, score in p.labels)
        else:
            text = "(no label)"
        rows.append((p.path, text))
    width = max([len(header[0])] + [len(path) for path, _ in rows])
    lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * len(header[1])}"]
    lines += [f"{path:<{width}}  {text}" for path, text in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def _model_inputs(model: str) -> list[str]:
    """The files of a local model folder that ``--output`` must not replace: its model files
    (:func:`hspnet.hub.transfer.model_files`) and the run's results beside them."""
    if not os.path.isdir(model):
        return []
    return [os.path.join(model, name) for name in model_files(model, exclude=())]


def _check_output_path(output: str) -> None:
    """Fail before any work when ``--output`` cannot be a file: a folder, or a path below a file."""
    if os.path.isdir(output):
        raise IsADirectoryError(f"{output}: --output is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{output}: cannot write --output there, {parent} is not a folder")


def _skip_counts(predictions: Sequence[Prediction]) -> str:
    """``"1 decompression bomb, 2 unreadable"``: the skipped images counted by :func:`skip_reason`."""
    counts: dict[str, int] = {}
    for p in predictions:
        if p.error is not None:
            kind = skip_reason(p.error)
            counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def summarize_skipped(predictions: Sequence[Prediction], ignored: Sequence[tuple[str, str]] = ()) -> str | None:
    """One line counting the images skipped (by kind) and the special files ignored in folders; None if none."""
    failed = [p for p in predictions if p.error is not None]
    if not failed and not ignored:
        return None
    parts = [f"{len(predictions) - len(failed)} of {len(predictions)} image(s) predicted"]
    if failed:
        parts.append(f"{len(failed)} skipped ({_skip_counts(failed)})")
    if ignored:
        parts.append(f"{len(ignored)} special file(s) in folders ignored (FIFO, socket, device, broken link)")
    return "; ".join(parts) + " (see the warnings above)"


def run_prediction(args: argparse.Namespace) -> list[Prediction]:
    """The command line's work: returns the predictions after writing them to ``args.output`` or stdout. Nothing
    the user gave is modified; ``--output`` is written atomically and never replaces an input image or model file.

    Thresholds: ``--threshold X`` for every label; neither ``--threshold`` nor ``--top_k``: the model's calibrated
    thresholds (``config.label_thresholds``, 0.5 for a label without one; 0.5 for every label of a model without
    calibration); ``--top_k`` alone: no threshold."""
    threshold = args.threshold
    use_stored = threshold is None and args.top_k is None
    if use_stored:
        threshold = DEFAULT_THRESHOLD
    output = args.output if args.output not in (None, "", "-") else None
    max_pixels = getattr(args, "max_image_pixels", MAX_IMAGE_PIXELS)
    ignored: list[tuple[str, str]] = []
    paths = collect_image_paths(args.images, skipped=ignored)
    device = resolve_device(args.device)
    if output:
        _check_output_path(output)
        refuse_inputs_as_output(output, paths, "--output")
        refuse_inputs_as_output(output, _model_inputs(args.model), "--output (a file of the model)")
    label_file = getattr(args, "labels", None) or getattr(args, "add_labels", None)
    if label_file is not None:
        from hspnet.apps.label_sets import read_label_set_file

        entries = read_label_set_file(label_file)  # before the model loads: a bad file fails at once
    model, processor = load_model(args.model, device=device, trust_remote_code=args.trust_remote_code)
    if label_file is not None:
        from hspnet.apps.label_sets import change_model_labels, describe_label_change

        result = change_model_labels(model, entries, extend=getattr(args, "labels", None) is None, source=label_file)
        print(f"labels: {len(result.labels)} ({len(result.new_labels)} new, not trained on) from {label_file}",
              file=sys.stderr)
        for line in describe_label_change(result):
            print(f"  {line}", file=sys.stderr)
    if args.torch_compile:
        import torch

        model = torch.compile(model)  # attribute access (config, device) reaches the model
    shown = threshold
    if use_stored and stored_label_thresholds(model) is not None:
        threshold = label_thresholds(model, DEFAULT_THRESHOLD)
        shown = dict(zip(label_names(model), threshold))
        print(f"thresholds: {describe_thresholds(model, DEFAULT_THRESHOLD)} (--threshold X: one for all labels)",
              file=sys.stderr)
    predictions = predict_images(
        model, processor, paths, batch_size=args.batch_size, threshold=threshold, top_k=args.top_k,
        on_error=args.on_error, all_scores=args.all_scores, progress=not args.no_progress, max_pixels=max_pixels,
    )
    ids = getattr(getattr(model, "config", None), "label_ids", None)  # e.g. Open Images MIDs, one per label
    ids = dict(zip(label_names(model), ids)) if ids else None
    text = (format_jsonl(predictions, shown, ids) if args.format == "jsonl"
            else format_table(predictions, shown, args.top_k))
    if output:
        write_output(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    summary = summarize_skipped(predictions, ignored)
    if predictions and all(p.error is not None for p in predictions):
        kinds = _skip_counts(predictions)
        raise ValueError(f"none of the {len(predictions)} image(s) could be read ({kinds}; see the warnings above)")
    if summary:
        print(f"summary: {summary}", file=sys.stderr)
    return predictions


__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "ON_ERROR",
    "Prediction",
    "collect_image_paths",
    "format_jsonl",
    "format_table",
    "is_url",
    "load_image",
    "predict_images",
    "resolve_device",
    "run_prediction",
    "select_label_rows",
    "select_labels",
    "skip_reason",
    "summarize_skipped",
]
