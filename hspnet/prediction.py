"""Multi-label prediction on image files with a trained model: importable, tested functions behind
`scripts/predict.py`.

- :func:`collect_image_paths`: files, folders (searched recursively for :data:`IMAGE_EXTENSIONS`), never URLs;
- :func:`load_model`: a model folder or Hub id -> ``(model, image_processor)`` (the image processor saved with the
  model, loaded with ``AutoImageProcessor``; importing :mod:`hspnet` registers HSPNet with the ``Auto`` classes);
- :func:`predict_images`: batched inference (``torch.inference_mode``; an HSPNet model in eval mode caches its label
  embeddings, so each batch costs only the image tower) -> one :class:`Prediction` per image, with the labels whose
  sigmoid score is above a threshold and/or the top-k labels;
- :func:`format_table` / :func:`format_jsonl`: the two output formats;
- :func:`main`: the command line.

Errors a user can cause (missing path, URL, folder without images, unreadable or non-image file, missing model)
raise ``FileNotFoundError`` / ``ValueError`` subclasses whose one-line message names the path; the command line
prints that line and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from hspnet.cli_types import positive_int, probability, run_cli

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")
"""Extensions (case-insensitive) picked up when a FOLDER is searched; a file named explicitly is always tried."""
ON_ERROR = ("fail", "skip")
FORMATS = ("table", "jsonl")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class ImageReadError(ValueError):
    """A file that is not an image PIL can decode (e.g. a text file renamed ``.jpg``, a truncated file)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot read this file as an image ({reason})")


class ModelLoadError(OSError):
    """The model folder or Hub id cannot be loaded."""


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def is_url(text: str) -> bool:
    return bool(_URL.match(str(text)))


def collect_image_paths(inputs: Iterable[str | os.PathLike], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Expand files and folders into a list of image files, in the given order, folders sorted recursively,
    duplicates removed.

    A file named explicitly is kept whatever its extension (it fails later if it is not an image); a folder
    contributes the files whose extension is in ``extensions`` (case-insensitive; hidden files and folders skipped).
    Raises ``ValueError`` for a URL (``http://``, ``https://``, any ``scheme://``) or a folder without images,
    ``FileNotFoundError`` for a path that does not exist, naming the input.
    """
    inputs = [os.fspath(item) for item in inputs]
    if not inputs:
        raise ValueError("no image given: pass image files or folders")
    lowered = tuple(ext.lower() for ext in extensions)
    found: list[str] = []
    for item in inputs:
        if is_url(item):
            raise ValueError(f"{item}: URLs are not supported; download the image and pass the local file")
        if not os.path.exists(item):
            raise FileNotFoundError(f"{item}: no such file or folder")
        if os.path.isdir(item):
            images = []
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                images.extend(
                    os.path.join(root, name)
                    for name in sorted(files)
                    if not name.startswith(".") and name.lower().endswith(lowered)
                )
            if not images:
                raise ValueError(f"{item}: folder contains no image files (looked for {', '.join(lowered)})")
            found.extend(images)
        else:
            found.append(item)
    return list(dict.fromkeys(found))


def load_image(path: str):
    """Open ``path`` as an RGB ``PIL.Image`` (fully decoded), or raise :class:`ImageReadError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as error:  # truncated / corrupt files, PIL's decoders
        raise ImageReadError(path, _one_line(error) or type(error).__name__) from None


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def _one_line(error: BaseException | str) -> str:
    return " ".join(str(error).split())


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") != 1
        or os.sep != "/" and os.sep in name
    )


def load_model(model_name_or_path: str, device: Any = None, trust_remote_code: bool = False):
    """``(model, image_processor)`` from a model folder or Hub id, in eval mode on ``device``.

    The model is loaded with ``AutoModelForImageClassification`` (HSPNet is registered by importing :mod:`hspnet`;
    other image classifiers work too) and the image processor is the one saved with it (``AutoImageProcessor``);
    an HSPNet folder without one falls back to CLIP preprocessing at the tower's resolution. Raises
    :class:`ModelLoadError` (an ``OSError``) naming the model when it cannot be loaded.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hspnet  # noqa: F401  (registers HSPNet with the Auto classes)

    name = os.fspath(model_name_or_path)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelLoadError(f"{name}: not a model folder (no config.json)")
    elif os.path.exists(name):
        raise ModelLoadError(f"{name}: the model must be a folder (or a Hub id), not a file")
    elif _looks_like_path(name):
        raise ModelLoadError(f"{name}: model folder does not exist")
    try:
        model = AutoModelForImageClassification.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        where = "model folder" if os.path.isdir(name) else "no such local folder, and the Hub model"
        raise ModelLoadError(f"{name}: {where} could not be loaded ({_one_line(error)[:300]})") from None
    try:
        processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if getattr(model.config, "model_type", None) != "hspnet":
            reason = _one_line(error)[:200]
            raise ModelLoadError(f"{name}: no image processor saved with the model ({reason})") from None
        from hspnet.modeling_hspnet import default_image_processor

        processor = default_image_processor(model.config)
    if device is not None:
        model.to(torch.device(device))
    return model.eval(), processor


def label_names(model) -> list[str]:
    """The model's label names in index order."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def scores_from_logits(model, logits):
    """Per-label probabilities: sigmoid for multi-label models (HSPNet), softmax for single-label classifiers."""
    import torch

    if getattr(model.config, "problem_type", None) == "single_label_classification":
        return torch.softmax(logits.float(), dim=-1)
    return torch.sigmoid(logits.float())


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


def select_labels(scores: Sequence[float], names: Sequence[str], threshold: float | None = 0.5,
                  top_k: int | None = None) -> list[tuple[str, float]]:
    """The labels to report for one image, by decreasing score (ties: lower label index first).

    ``threshold`` only: every label with ``score > threshold`` (strict, as the metrics). ``top_k`` only: the ``k``
    best labels whatever their score. Both: at most ``k`` labels, each above the threshold.
    """
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    order = sorted(range(len(names)), key=lambda i: (-float(scores[i]), i))
    if top_k is not None:
        order = order[:top_k]
    if threshold is not None:
        order = [i for i in order if float(scores[i]) > threshold]
    return [(names[i], float(scores[i])) for i in order]


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
) -> list[Prediction]:
    """Predict labels for each image of ``paths`` (already expanded by :func:`collect_image_paths`).

    Batched (``batch_size`` images per forward), under ``torch.inference_mode()``, with a tqdm progress bar on
    stderr (``progress``). ``threshold`` / ``top_k``: see :func:`select_labels`. ``on_error``: ``"fail"`` (default)
    raises :class:`ImageReadError` at the first unreadable image; ``"skip"`` returns a :class:`Prediction` with
    ``error`` set for it, warns on stderr and goes on. ``all_scores``: also return every label's score.
    ``device``: where to run (default: the model's device).
    """
    import torch
    from tqdm.auto import tqdm

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    names = label_names(model)
    if top_k is not None and not 1 <= top_k <= len(names):
        raise ValueError(f"top_k must be in [1, {len(names)}] (the model has {len(names)} labels), got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    if threshold is None and top_k is None:
        raise ValueError("give a threshold, a top_k, or both")
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    model_device = next(model.parameters()).device
    model_dtype = next(model.parameters()).dtype

    results: list[Prediction] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch_paths = list(paths[start : start + batch_size])
            images, kept, slots = [], [], []
            for path in batch_paths:
                try:
                    image = load_image(path)
                except ImageReadError as error:
                    if on_error == "fail":
                        bar.close()
                        raise
                    print(f"warning: skipping {error}", file=sys.stderr)
                    slots.append(Prediction(path=path, error=str(error)))
                    continue
                images.append(image)
                kept.append(path)
                slots.append(None)
            batch_results = iter([])
            if images:
                pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
                logits = model(pixel_values=pixel_values.to(model_device, model_dtype)).logits
                probabilities = scores_from_logits(model, logits).cpu().tolist()
                batch_results = iter(
                    Prediction(
                        path=path,
                        labels=select_labels(row, names, threshold, top_k),
                        scores=dict(zip(names, row)) if all_scores else None,
                    )
                    for path, row in zip(kept, probabilities)
                )
            results.extend(slot if slot is not None else next(batch_results) for slot in slots)
            bar.update(len(batch_paths))
    bar.close()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def format_jsonl(predictions: Iterable[Prediction]) -> str:
    """One JSON object per line: ``{"path", "labels": [names], "predictions": [{"label", "score"}], "scores"?}``
    or ``{"path", "error"}`` for a skipped image."""
    return "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in predictions)


def format_table(predictions: Sequence[Prediction], threshold: float | None = None, top_k: int | None = None,
                 digits: int = 3) -> str:
    """A plain-text table: one row per image, its labels with scores (``label (0.934)``) by decreasing score."""
    rule = []
    if top_k is not None:
        rule.append(f"top {top_k}")
    if threshold is not None:
        rule.append(f"score > {threshold:g}")
    header = ("image", f"labels ({', '.join(rule)})" if rule else "labels")
    rows = []
    for p in predictions:
        if p.error is not None:
            text = f"SKIPPED: {p.error}"
        elif p.labels:
            text = ", ".join(f"{name} ({score:.{digits}f})" for name, score in p.labels)
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


def build_argument_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Predict labels for image files or folders (searched recursively) with a trained HSPNet model "
        "(or any multi-label image classifier). Local paths only, no URLs.",
    )
    parser.add_argument("images", nargs="+", help="image files and/or folders")
    parser.add_argument("--model", required=True, help="model folder (e.g. outputs/demo) or Hub id")
    parser.add_argument("--threshold", type=probability, default=None,
                        help="report labels with sigmoid score > THRESHOLD (default 0.5; with --top_k: no threshold "
                        "unless given)")
    parser.add_argument("--top_k", type=positive_int, default=None,
                        help="report the K best labels of each image (with --threshold: at most K above it)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("--output", default=None, help="write the results to this file (default: stdout)")
    parser.add_argument("--batch_size", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if "
                        "available, else cpu)")
    parser.add_argument("--on_error", choices=ON_ERROR, default="fail",
                        help="an unreadable / non-image file: fail (default; exit 1 naming it) or skip (warn, report "
                        "it as skipped, go on)")
    parser.add_argument("--all_scores", action="store_true", help="jsonl: also write every label's score")
    parser.add_argument("--trust_remote_code", action="store_true", help="for Hub models that need their own code")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def resolve_device(device: str | None):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:0)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return resolved


def run_prediction(args: argparse.Namespace) -> list[Prediction]:
    """The command line's work: returns the predictions after writing them to ``args.output`` or stdout."""
    threshold = args.threshold
    if threshold is None and args.top_k is None:
        threshold = 0.5
    paths = collect_image_paths(args.images)
    device = resolve_device(args.device)
    if args.output and os.path.isdir(args.output):
        raise IsADirectoryError(f"{args.output}: --output is a folder; give a file name")
    model, processor = load_model(args.model, device=device, trust_remote_code=args.trust_remote_code)
    predictions = predict_images(
        model, processor, paths, batch_size=args.batch_size, threshold=threshold, top_k=args.top_k,
        on_error=args.on_error, all_scores=args.all_scores, progress=not args.no_progress,
    )
    text = format_jsonl(predictions) if args.format == "jsonl" else format_table(predictions, threshold, args.top_k)
    if args.output:
        parent = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(parent, exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if predictions and all(p.error is not None for p in predictions):
        raise ValueError(f"none of the {len(predictions)} image(s) could be read")
    return predictions


def main(argv: list[str] | None = None, prog: str | None = "predict.py") -> int:
    """Entry point of `scripts/predict.py`: 0 on success, 1 with a one-line ``error:`` message on bad input."""
    return run_cli(build_argument_parser(prog), run_prediction, argv)


__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ModelLoadError",
    "ON_ERROR",
    "Prediction",
    "build_argument_parser",
    "collect_image_paths",
    "format_jsonl",
    "format_table",
    "is_url",
    "label_names",
    "load_image",
    "load_model",
    "main",
    "predict_images",
    "resolve_device",
    "run_prediction",
    "scores_from_logits",
    "select_labels",
]
