"""A demo page for a trained model (Gradio; ready for a Hugging Face Space): ``hspnet demo --model FOLDER_OR_HUB_ID``.

On the page: upload or drop one or more images; every label's score is shown as a bar, grouped by the model's hierarchy
(``config.group_names`` / ``config.label_to_group``, one section per group); a threshold slider and a top-k control
decide which labels are highlighted (the rule of ``hspnet predict``: with both, at most k labels, each above the
threshold); a text box adds labels the model was not trained on (scored without retraining, shown in their own section:
:mod:`hspnet.apps.demo.added_labels`); for a model with calibrated thresholds (``config.label_thresholds``, ``hspnet
calibrate``) a "calibrated thresholds" checkbox, on by default, gives each label its own threshold instead of the
slider's (0.5 for a label without one), each bar marking its label's threshold; example images (for a model with the
labels of the built-in demo data: a few demo test images); and a summary of the model card (labels, groups, base CLIP,
dataset, test metrics).

Inference goes through the same code as ``hspnet predict`` (:func:`hspnet.models.loading.load_model` and
:func:`hspnet.apps.predict.predict_images`: images read by :func:`hspnet.utils.images.open_image`, EXIF orientation,
16-bit images, decompression bombs refused; an HSPNet model in eval mode computes its label embeddings once). A file
that cannot be used (not an image, truncated, too many pixels, too many bytes) gets a message on the page, never a
traceback. Moving the threshold or top-k re-draws the page from the stored scores without running the model again.

Everything but :func:`build_demo` / :func:`launch_demo` works without gradio (the data and HTML
functions are tested without a browser); gradio is imported only there, and a missing gradio is a one-line error
naming ``pip install -e ".[demo]"``. ``import hspnet`` never imports this module.

The command line is :mod:`hspnet.cli.demo`; ``--write_space DIR`` writes a folder a Hugging Face Space runs
as is (:func:`hspnet.apps.demo.space.write_space`). The model's label groups and card summary are
:mod:`hspnet.apps.demo.summary`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

from hspnet.apps.defaults import (
    DEMO_DEFAULT_THRESHOLD as DEFAULT_THRESHOLD,
    DEMO_MAX_EXAMPLES as MAX_EXAMPLES,
    DEMO_MAX_IMAGES as MAX_IMAGES,
    DEMO_MAX_UPLOAD_MB as MAX_UPLOAD_MB,
    GRADIO_INSTALL_HINT,
)
from hspnet.apps.demo.summary import LabelGroups, read_model_summary, summary_markdown
from hspnet.utils.errors import one_line
from hspnet.utils.images import MAX_IMAGE_PIXELS

DIGITS = 3
"""Scores are shown with this many decimals."""
NUM_DEMO_EXAMPLES = 6
THUMBNAIL_SIZE = 96
SPACE_MARKER = ".hspnet-space"
"""A file ``--write_space`` puts in the folders it writes; ``--overwrite`` replaces only folders that have it."""


class GradioMissingError(ImportError):
    """gradio (the ``demo`` extra) is not installed."""


def gradio_available() -> bool:
    """Whether gradio can be imported, without importing it (that takes seconds)."""
    import importlib.util

    if "gradio" in sys.modules:
        return sys.modules["gradio"] is not None
    try:
        return importlib.util.find_spec("gradio") is not None
    except (ImportError, ValueError):
        return False


def import_gradio():
    """The ``gradio`` module, or :class:`GradioMissingError` with a one-line message saying how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise GradioMissingError(
            f"the demo needs gradio, which is not installed ({one_line(error)}): {GRADIO_INSTALL_HINT}"
        ) from error
    return gradio


def _top_k_or_none(top_k: Any) -> int | None:
    """The top-k control's value as :func:`select_labels` takes it: 0 / None / empty = no limit."""
    if top_k in (None, ""):
        return None
    number = float(top_k)
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise ValueError(f"top-k must be a whole number >= 0 (0: no limit), got {top_k!r}")
    return int(number) or None


def selected_labels(scores: Sequence[float], names: Sequence[str], threshold: float | Sequence[float] | None,
                    top_k: int | None) -> list[int]:
    """Indices of the highlighted labels, by decreasing score: :func:`hspnet.apps.predict.select_labels` (``score >
    threshold``, one threshold or one per label, at most ``top_k``; ``top_k`` 0 or None: no limit; neither: none)."""
    from hspnet.apps.predict import select_labels

    top_k = _top_k_or_none(top_k)
    if top_k is not None:
        top_k = min(top_k, len(names))
    if threshold is None and top_k is None:
        return []
    chosen = select_labels(scores, [str(i) for i in range(len(names))], threshold, top_k)
    return [int(index) for index, _ in chosen]


def grouped_scores(scores: Sequence[float], label_groups: LabelGroups, threshold: float | None = DEFAULT_THRESHOLD,
                   top_k: int | None = None) -> list[dict]:
    """The page's data for one image: ``[{"group", "labels": [{"index", "label", "score", "selected", "threshold"},
    ...], "num_selected", "best"}, ...]``, one entry per group in the model's order, each group's labels by decreasing
    score (ties: label order). ``threshold``: one for every label, or a list with one per label (calibrated)."""
    if len(scores) != label_groups.num_labels:
        raise ValueError(f"{len(scores)} scores for {label_groups.num_labels} labels")
    chosen = set(selected_labels(scores, label_groups.names, threshold, top_k))
    per_label = isinstance(threshold, (list, tuple))
    if per_label and len(threshold) != label_groups.num_labels:
        raise ValueError(f"{len(threshold)} thresholds for {label_groups.num_labels} labels")
    out = []
    for group, members in label_groups.groups:
        ordered = sorted(members, key=lambda i: (-float(scores[i]), i))
        labels = [{"index": i, "label": label_groups.names[i], "score": float(scores[i]), "selected": i in chosen,
                   "threshold": None if threshold is None else float(threshold[i] if per_label else threshold)}
                  for i in ordered]
        out.append({"group": group, "labels": labels, "num_selected": sum(item["selected"] for item in labels),
                    "best": max(item["score"] for item in labels)})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------

CSS = """
.hsp-results { display: flex; flex-direction: column; gap: 14px; }
.hsp-image { border: 1px solid var(--border-color-primary, #ddd); border-radius: 8px; padding: 10px 12px; }
.hsp-head { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
.hsp-head img { width: 72px; height: 72px; object-fit: contain; border-radius: 4px; background: #222;
                image-rendering: pixelated; }
.hsp-file { font-weight: 600; word-break: break-all; }
.hsp-chosen { font-size: 0.92em; }
.hsp-groups { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 6px 18px; }
.hsp-group summary { font-weight: 600; cursor: pointer; margin: 4px 0; }
.hsp-row { display: grid; grid-template-columns: minmax(90px, 42%) 1fr 3.6em; gap: 6px; align-items: center;
           font-size: 0.9em; padding: 1px 0; }
.hsp-name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.hsp-bar { position: relative; height: 12px; background: var(--background-fill-secondary, #eee); border-radius: 3px; }
.hsp-fill { position: absolute; left: 0; top: 0; bottom: 0; background: #9aa4b1; border-radius: 3px; }
.hsp-mark { position: absolute; top: -2px; bottom: -2px; width: 2px; background: #e8590c; }
.hsp-score { text-align: right; font-variant-numeric: tabular-nums; }
.hsp-on .hsp-name, .hsp-on .hsp-score { font-weight: 700; }
.hsp-on .hsp-fill { background: #2f9e44; }
.hsp-error { border-color: #e03131; background: rgba(224, 49, 49, 0.07); }
.hsp-message { color: #c92a2a; }
.hsp-empty { opacity: 0.75; }
"""


def format_score(score: float, digits: int = DIGITS) -> str:
    return f"{float(score):.{digits}f}"


def render_image_result(result: dict, label_groups: LabelGroups, threshold: float | None = DEFAULT_THRESHOLD,
                        top_k: int | None = None, digits: int = DIGITS) -> str:
    """One image's card (HTML): its thumbnail and name, the highlighted labels, then one section per group with a bar
    per label (the label's threshold marked on its bar: the one threshold, or each label's own when ``threshold`` is a
    list of per-label thresholds). A result with ``error`` is a card with the message."""
    name = html.escape(str(result.get("name", "")))
    if result.get("error") is not None:
        message = html.escape(str(result["error"]))
        return (f'<div class="hsp-image hsp-error" data-file="{name}"><div class="hsp-head">'
                f'<span class="hsp-file">{name}</span></div><div class="hsp-message">{message}</div></div>')
    scores = result["scores"]
    groups = grouped_scores(scores, label_groups, threshold, top_k)
    chosen = selected_labels(scores, label_groups.names, threshold, top_k)
    if chosen:
        chosen_text = ", ".join(f"{html.escape(label_groups.names[i])} ({format_score(scores[i], digits)})"
                                for i in chosen)
    else:
        its = "its" if isinstance(threshold, (list, tuple)) else "the"
        chosen_text = f'<span class="hsp-empty">no label above {its} threshold</span>'
    thumb = result.get("thumbnail")
    head = f'<img src="{html.escape(thumb)}" alt="">' if thumb else ""
    parts = [f'<div class="hsp-image" data-file="{name}"><div class="hsp-head">{head}<div>'
             f'<div class="hsp-file">{name}</div><div class="hsp-chosen">{chosen_text}</div></div></div>'
             '<div class="hsp-groups">']
    for group in groups:
        count = f" ({group['num_selected']})" if group["num_selected"] else ""
        parts.append(f'<details class="hsp-group" open data-group="{html.escape(group["group"])}">'
                     f'<summary>{html.escape(group["group"])}{count}</summary>')
        for item in group["labels"]:
            label = html.escape(item["label"])
            score = item["score"]
            width = min(max(score, 0.0), 1.0) * 100
            mark = "" if item["threshold"] is None else (
                f'<span class="hsp-mark" style="left:{100 * item["threshold"]:.1f}%" '
                f'data-threshold="{item["threshold"]!r}"></span>')
            parts.append(
                f'<div class="hsp-row{" hsp-on" if item["selected"] else ""}" data-label="{label}" '
                f'data-score="{score!r}" title="{label}: {score:.6f}"><span class="hsp-name">{label}</span>'
                f'<span class="hsp-bar"><span class="hsp-fill" style="width:{width:.1f}%"></span>{mark}</span>'
                f'<span class="hsp-score">{format_score(score, digits)}</span></div>'
            )
        parts.append("</details>")
    if result.get("added"):
        from hspnet.apps.demo.added_labels import render_added_labels

        one = DEFAULT_THRESHOLD if isinstance(threshold, (list, tuple)) or threshold is None else float(threshold)
        parts.append(render_added_labels(result["added"], one, digits))
    parts.append("</div></div>")
    return "".join(parts)


def render_results(results: Sequence[dict] | None, label_groups: LabelGroups, threshold: float | None =
                   DEFAULT_THRESHOLD, top_k: int | None = None, digits: int = DIGITS) -> str:
    """All images' cards (HTML), or a hint when nothing was uploaded."""
    if not results:
        return '<div class="hsp-results hsp-empty">Upload or drop images, or click an example.</div>'
    cards = "".join(render_image_result(r, label_groups, threshold, top_k, digits) for r in results)
    return f'<div class="hsp-results">{cards}</div>'


def status_message(results: Sequence[dict] | None, extra: Sequence[str] = ()) -> str:
    """One line (markdown) for the page: how many images were scored and how many files could not be used."""
    if not results:
        return " ".join(extra)
    failed = sum(1 for r in results if r.get("error") is not None)
    scored = len(results) - failed
    text = f"{scored} image{'s' if scored != 1 else ''} scored"
    if failed:
        text += f"; **{failed} file{'s' if failed != 1 else ''} could not be used** (see below)"
    return " ".join([text + "."] + list(extra))


# ---------------------------------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------------------------------


def is_demo_model(label_groups: LabelGroups) -> bool:
    """Whether the model has the labels of the built-in demo data (then its images make good examples)."""
    from hspnet.data.demo import demo_hierarchy

    return list(label_groups.names) == list(demo_hierarchy().labels)


def write_demo_examples(folder: str | os.PathLike, count: int = NUM_DEMO_EXAMPLES, seed: int = 0) -> list[str]:
    """Draw ``count`` images of the demo data's test split (``draw_demo_image(seed, "test", i)``) into ``folder`` as
    ``demo-test-NNNNN.png``; returns the paths."""
    from hspnet.data.demo import draw_demo_image

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ = draw_demo_image(seed, "test", index)
        path = os.path.join(folder, f"demo-test-{index:05d}.png")
        image.save(path)
        paths.append(path)
    return paths


def collect_examples(inputs: Sequence[str | os.PathLike], limit: int = MAX_EXAMPLES) -> list[str]:
    """Image files named or found in folders (:func:`hspnet.apps.predict.collect_image_paths`), the first ``limit``."""
    from hspnet.apps.predict import collect_image_paths

    return collect_image_paths(list(inputs))[:limit]


# ---------------------------------------------------------------------------------------------------------------------
# Inference on uploads
# ---------------------------------------------------------------------------------------------------------------------


def _thumbnail(path: str, max_pixels: int | None) -> str | None:
    """A small JPEG data URI of an image that was read successfully (None if it cannot be made)."""
    from hspnet.apps.predict import load_image

    try:
        image = load_image(path, max_pixels=max_pixels)
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _size(size: int) -> str:
    """``"2.5 MB"``, ``"300 KB"``, ``"12 bytes"``."""
    if size >= 2**20:
        return f"{size / 2**20:.1f} MB"
    return f"{size / 2**10:.0f} KB" if size >= 2**10 else f"{size} bytes"


def _upload_path(item: Any) -> str:
    """The path of one upload as gradio hands it over (a path string, or an object / dict with a path)."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return item["path"]
    path = getattr(item, "path", None) or getattr(item, "name", None)
    if isinstance(path, str):
        return path
    raise ValueError(f"not an uploaded file: {item!r}"[:200])


@dataclass
class DemoModel:
    """A loaded model with what the page needs: its label groups, its summary and the upload limits."""

    model: Any
    processor: Any
    label_groups: LabelGroups
    summary: dict = field(default_factory=dict)
    max_image_pixels: int | None = MAX_IMAGE_PIXELS
    max_upload_bytes: int = MAX_UPLOAD_MB * 1024 * 1024
    max_images: int = MAX_IMAGES
    batch_size: int = 8
    added: Any = None
    """The :class:`~hspnet.apps.demo.added_labels.AddedLabels` of the page's typed labels (made on first use)."""
    label_thresholds: list[float] | None = None
    """Each label's threshold when the model has calibrated ones (:func:`hspnet.models.thresholds.label_thresholds`),
    else None."""

    @classmethod
    def load(cls, model_name_or_path: str | os.PathLike, device: Any = None, trust_remote_code: bool = False,
             **limits) -> "DemoModel":
        """:func:`hspnet.models.loading.load_model` (``ModelLoadError`` naming the model when it cannot be loaded), the
        label groups of its config and the summary of its model card."""
        from hspnet.apps.predict import resolve_device
        from hspnet.models.loading import load_model

        name = os.fspath(model_name_or_path)
        if device is None or isinstance(device, str):
            device = resolve_device(device)
        from hspnet.models.thresholds import label_thresholds, stored_label_thresholds

        model, processor = load_model(name, device=device, trust_remote_code=trust_remote_code)
        limits.setdefault("label_thresholds",
                          label_thresholds(model) if stored_label_thresholds(model) is not None else None)
        return cls(model, processor, LabelGroups.from_config(model.config),
                   read_model_summary(name, model.config), **limits)

    def predict_files(self, files: Sequence[Any] | None, added_labels: str | None = None
                      ) -> tuple[list[dict], list[str]]:
        """Score uploaded files: ``([{"name", "scores": [...], "added"?: [...]} or {"name", "error"}, ...],
        [notes])``, one result per file in upload order (at most ``max_images``; a note says how many were left out).
        Never raises for a bad file: a file too large, not an image, truncated or with too many pixels gets an
        ``error`` naming it; a model failure (e.g. NaN scores) is a note. ``added_labels``: labels typed on the page
        (:func:`hspnet.apps.label_sets.parse_label_lines`), scored apart (:mod:`hspnet.apps.demo.added_labels`): each
        scored result gets ``"added": [{"label", "group", "how", "score"}]``, and a note says each label's group (a
        bad label is a note, the trained labels are scored all the same)."""
        from hspnet.apps.predict import predict_images

        items = list(files or [])
        notes = []
        if len(items) > self.max_images:
            notes.append(f"Only the first {self.max_images} of {len(items)} files were scored.")
            items = items[: self.max_images]
        results: list[dict] = []
        readable: list[tuple[int, str]] = []
        for item in items:
            try:
                path = _upload_path(item)
            except ValueError as error:
                results.append({"name": "?", "error": one_line(error)})
                continue
            name = os.path.basename(path)
            results.append({"name": name})
            try:
                size = os.stat(path).st_size
            except OSError as error:
                results[-1]["error"] = f"{name}: cannot read the upload ({error.strerror or one_line(error)})"
                continue
            if size > self.max_upload_bytes:
                results[-1]["error"] = (f"{name}: {_size(size)}, more than the {_size(self.max_upload_bytes)} allowed "
                                        "per file")
                continue
            readable.append((len(results) - 1, path))
        if readable:
            try:
                predictions = predict_images(
                    self.model, self.processor, [path for _, path in readable], batch_size=self.batch_size,
                    threshold=None, top_k=self.label_groups.num_labels, on_error="skip", all_scores=True,
                    progress=False, max_pixels=self.max_image_pixels,
                )
            except (OSError, ValueError, RuntimeError) as error:  # e.g. NaN scores, out of memory
                message = one_line(error)
                for slot, path in readable:
                    message = message.replace(path, os.path.basename(path))
                notes.append(f"The model could not score these images: {message}")
                for slot, _ in readable:
                    results[slot]["error"] = "not scored (see the message above)"
                return results, notes
            for (slot, path), prediction in zip(readable, predictions):
                if prediction.error is not None:
                    results[slot]["error"] = prediction.error.replace(path, results[slot]["name"])
                else:
                    results[slot]["scores"] = [float(prediction.scores[n]) for n in self.label_groups.names]
                    results[slot]["thumbnail"] = _thumbnail(path, self.max_image_pixels)
            scored = [(slot, path) for slot, path in readable if results[slot].get("error") is None]
            if added_labels and scored:
                notes.extend(self._score_added(added_labels, scored, results))
        return results, notes

    def _score_added(self, text: str, scored: list[tuple[int, str]], results: list[dict]) -> list[str]:
        """Score the labels typed in ``text`` for the scored files (``(result slot, path)``) into ``results``; the
        notes to show (each label's group, or why the labels could not be used)."""
        from hspnet.apps.demo.added_labels import AddedLabels
        from hspnet.apps.predict import load_image

        if self.added is None:
            self.added = AddedLabels(self.model)
        try:
            plan = self.added.plan(text)
            if plan is None:
                return []
            entries, label_embeds, result = plan
            by_name = {a.label: a for a in result.assignments}
            for start in range(0, len(scored), self.batch_size):
                chunk = scored[start:start + self.batch_size]
                images = [load_image(path, self.max_image_pixels) for _, path in chunk]
                pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
                for (slot, _), row in zip(chunk, self.added.scores(pixels, label_embeds)):
                    results[slot]["added"] = [{"label": name, "group": by_name[name].group_name,
                                               "how": by_name[name].how, "score": float(score)}
                                              for (name, _), score in zip(entries, row)]
        except (OSError, ValueError, RuntimeError) as error:
            return [f"The added labels were not scored: {one_line(error)}"]
        lines = "; ".join(AddedLabels.describe(result))
        return [f"Added labels (not trained on): {lines}."]


# ---------------------------------------------------------------------------------------------------------------------
# The page (gradio)
# ---------------------------------------------------------------------------------------------------------------------


def _example_folder() -> str:
    """A fresh folder under the system's temp folder (gradio serves files from there whatever the working
    directory), removed when the process exits normally."""
    import atexit

    folder = tempfile.mkdtemp(prefix="hspnet-demo-examples-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _copy_examples(paths: Sequence[str]) -> list[str]:
    """Copies of the example images in an :func:`_example_folder` (names made unique)."""
    if not paths:
        return []
    folder = _example_folder()
    copies, used = [], set()
    for index, path in enumerate(paths):
        name = os.path.basename(path)
        if name in used or name.startswith("."):
            name = f"{index:02d}-{name.lstrip('.')}"
        used.add(name)
        target = os.path.join(folder, name)
        shutil.copyfile(path, target)
        copies.append(target)
    return copies


def build_demo(model: "DemoModel | str | os.PathLike", examples: Sequence[str | os.PathLike] | None = None, *,
               title: str | None = None, threshold: float = DEFAULT_THRESHOLD, top_k: int | None = None,
               device: Any = None, trust_remote_code: bool = False, demo_examples: bool = True,
               model_name: str | None = None):
    """The Gradio page (a ``gradio.Blocks``, not launched) for ``model`` (a :class:`DemoModel`, a model folder or a
    Hub id). ``examples``: image files / folders shown as examples; ``None``: for a model with the demo data's labels
    (and ``demo_examples``), a few demo test images, else none. ``model_name``: the name shown in the summary
    (default: the folder's name or the Hub id). Start it with :func:`launch_demo`."""
    gr = import_gradio()
    if not isinstance(model, DemoModel):
        model = DemoModel.load(model, device=device, trust_remote_code=trust_remote_code)
    groups = model.label_groups
    if model_name:
        model.summary = dict(model.summary, name=str(model_name))
    if examples is None:
        example_paths = (write_demo_examples(_example_folder())
                         if demo_examples and is_demo_model(groups) else [])
    else:
        example_paths = _copy_examples(collect_examples(examples)) if examples else []
    if top_k is not None and not 0 <= int(top_k) <= groups.num_labels:
        raise ValueError(f"top_k must be in [0, {groups.num_labels}] (0: no limit), got {top_k}")
    heading = title or f"HSPNet: multi-label classification ({groups.num_labels} labels)"
    calibrated = model.label_thresholds
    from hspnet.models.loading import hspnet_base_model

    is_hspnet = hspnet_base_model(model.model) is not None  # labels can be added to HSPNet models only

    def chosen_threshold(threshold_value, use_calibrated):
        return calibrated if calibrated is not None and use_calibrated else threshold_value

    def score_uploads(files, added_text, threshold_value, top_k_value, use_calibrated=False):
        results, notes = model.predict_files(files, added_text)
        page = render_results(results, groups, chosen_threshold(threshold_value, use_calibrated), top_k_value)
        return results, page, status_message(results, notes)

    def redraw(results, threshold_value, top_k_value, use_calibrated=False):
        return render_results(results, groups, chosen_threshold(threshold_value, use_calibrated), top_k_value)

    with gr.Blocks(title=heading, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {html.escape(heading)}")
        with gr.Accordion("About this model", open=True):
            gr.Markdown(summary_markdown(model.summary), elem_id="hsp-summary")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(label="Images: drop or click to upload (several at once)", file_count="multiple",
                                elem_id="hsp-upload")
                calibrated_box = None
                if calibrated is not None:
                    calibrated_box = gr.Checkbox(
                        value=True, label="Calibrated thresholds", elem_id="hsp-calibrated",
                        info="each label's own threshold, stored with the model (hspnet calibrate; the orange marks); "
                        "untick to use the slider's one threshold")
                threshold_slider = gr.Slider(0.0, 1.0, value=threshold, step=0.01, label="Threshold",
                                             info="labels with a score above it are highlighted" + (
                                                 " (when 'Calibrated thresholds' is off)" if calibrated else ""),
                                             elem_id="hsp-threshold")
                top_k_slider = gr.Slider(0, groups.num_labels, value=int(top_k or 0), step=1, label="Top-k",
                                         info="at most this many highlighted labels per image (0: no limit)",
                                         elem_id="hsp-topk")
                added_box = gr.Textbox(label="Add labels (not trained on)", lines=1, elem_id="hsp-add-labels",
                                       placeholder="e.g. zebra, red car: vehicle (Enter to score)",
                                       info="scored without retraining, shown apart; 'label: group' picks the group, "
                                       "else the nearest by CLIP text similarity",
                                       visible=is_hspnet)
                if example_paths:
                    gallery = gr.Gallery(example_paths, label="Examples: click one", columns=3,
                                         allow_preview=False, interactive=False, object_fit="contain", height=270,
                                         buttons=[],
                                         elem_id="hsp-examples")

                    def pick(event):
                        return [example_paths[event.index]]

                    pick.__annotations__ = {"event": gr.SelectData}  # gradio passes the selection by this type
                    gallery.select(pick, None, files)
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="hsp-status")
                results_html = gr.HTML(render_results([], groups), css_template=CSS, elem_id="hsp-results")
        state = gr.State([])
        controls = [threshold_slider, top_k_slider] + ([calibrated_box] if calibrated_box is not None else [])
        files.change(score_uploads, [files, added_box, *controls], [state, results_html, status])
        added_box.submit(score_uploads, [files, added_box, *controls], [state, results_html, status])
        for control in controls:
            control.change(redraw, [state, *controls], results_html, show_progress="hidden")
    blocks.hspnet_max_upload_bytes = model.max_upload_bytes
    return blocks


def launch_demo(blocks, host: str | None = None, port: int | None = None, share: bool = False, **kwargs):
    """Start the page: ``host`` None = gradio's default (``GRADIO_SERVER_NAME``, else 127.0.0.1; a Space sets
    0.0.0.0), ``port`` None = ``GRADIO_SERVER_PORT`` or the first free port from 7860. Uploads larger than the
    model's limit are refused by the server too. Other keywords go to ``Blocks.launch``."""
    limit = getattr(blocks, "hspnet_max_upload_bytes", MAX_UPLOAD_MB * 1024 * 1024)
    kwargs.setdefault("max_file_size", limit)
    return blocks.launch(server_name=host, server_port=port, share=share, **kwargs)


__all__ = [
    "CSS",
    "DemoModel",
    "GradioMissingError",
    "build_demo",
    "grouped_scores",
    "gradio_available",
    "import_gradio",
    "is_demo_model",
    "launch_demo",
    "render_image_result",
    "render_results",
    "selected_labels",
    "status_message",
    "write_demo_examples",
]
