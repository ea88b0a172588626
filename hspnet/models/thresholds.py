"""A model's decision thresholds: the one reading of ``config.label_thresholds`` (written by ``hspnet calibrate``) for
every user of a model (``hspnet predict``, ``hspnet evaluate``, the demo page, the ONNX export) and for the output of
transformers' ``pipeline("image-classification")``.

``config.label_thresholds`` is ``None`` (no calibration) or a list with one entry per label, in ``id2label`` order:
a number in [0, 1] (the calibrated threshold of that label) or ``None`` (no calibrated threshold: the default
applies). A label is positive when its sigmoid score is strictly above its threshold, as everywhere in the package.

- :func:`stored_label_thresholds`: the stored list, checked (``None`` when the model has no calibration);
- :func:`label_thresholds`: the effective threshold of every label, the calibrated one where there is one and
  ``default`` (0.5) elsewhere;
- :func:`apply_label_thresholds`: what transformers' image-classification pipeline returned, kept to the labels
  above their thresholds (the pipeline itself has no threshold option: it returns the ``top_k`` best scores).

This module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any, Sequence

from hspnet.utils.validation import check_probability

DEFAULT_THRESHOLD = 0.5
"""The threshold of a label without a calibrated one (and of a model without calibration)."""
FIELD = "label_thresholds"
"""The name of the field in ``config.json``."""


def _config(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def _num_labels(config: Any) -> int | None:
    if isinstance(config, dict):
        id2label = config.get("id2label")
        return len(id2label) if id2label else None
    id2label = getattr(config, "id2label", None)
    return len(id2label) if id2label else getattr(config, "num_labels", None)


def check_label_thresholds(values: Any, num_labels: int | None = None,
                           name: str = FIELD) -> list[float | None] | None:
    """``values`` checked: ``None``, or a list of ``num_labels`` entries, each ``None`` or a finite number in [0, 1];
    ``ValueError`` naming ``name`` otherwise."""
    if values is None:
        return None
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name} must be a list with one threshold (or null) per label, got {values!r}")
    if num_labels is not None and len(values) != num_labels:
        raise ValueError(f"{name} has {len(values)} entries but the model has {num_labels} labels; give one threshold "
                         "(or null) per label")
    return [None if v is None else check_probability(v, f"{name}[{i}]", allow_none=False) for i, v in enumerate(values)]


def stored_label_thresholds(model_or_config: Any) -> list[float | None] | None:
    """The model's ``config.label_thresholds`` (a model, a config or a ``config.json`` dict), checked against its
    number of labels; ``None`` when it has none, or when every entry is ``None``."""
    config = _config(model_or_config)
    values = config.get(FIELD) if isinstance(config, dict) else getattr(config, FIELD, None)
    values = check_label_thresholds(values, _num_labels(config), f"the model's config.json {FIELD}")
    if values is None or all(v is None for v in values):
        return None
    return values


def label_thresholds(model_or_config: Any, default: float = DEFAULT_THRESHOLD) -> list[float]:
    """The effective threshold of every label of a model (or config, or ``config.json`` dict), in ``id2label`` order:
    its calibrated threshold where ``config.label_thresholds`` has one, ``default`` elsewhere (every label when the
    model has no calibration). ``ValueError`` when the stored list does not fit the labels or holds a bad value."""
    default = check_probability(default, "default", allow_none=False)
    stored = stored_label_thresholds(model_or_config)
    if stored is None:
        count = _num_labels(_config(model_or_config))
        if count is None:
            raise ValueError("the model's config names no labels (id2label)")
        return [default] * count
    return [default if v is None else v for v in stored]


def describe_thresholds(model_or_config: Any, default: float = DEFAULT_THRESHOLD) -> str:
    """One phrase saying which thresholds a model's labels get: ``"the calibrated thresholds of config.json
    (label_thresholds) for 10 of 12 labels, 0.5 for the others"``, or ``"0.5 (no calibrated thresholds)"``."""
    stored = stored_label_thresholds(model_or_config)
    if stored is None:
        return f"{default:g} (no calibrated thresholds)"
    known = sum(v is not None for v in stored)
    if known == len(stored):
        return f"the calibrated thresholds of config.json ({FIELD}) for all {known} labels"
    return f"the calibrated thresholds of config.json ({FIELD}) for {known} of {len(stored)} labels, {default:g} for " \
           "the others"


def apply_label_thresholds(outputs: Sequence[Any], model_or_config: Any,
                           default: float = DEFAULT_THRESHOLD) -> list:
    """The output of ``pipeline("image-classification")`` (for one image: ``[{"label", "score"}, ...]``; for several:
    a list of those) kept to the labels whose score is above their threshold (:func:`label_thresholds`), in the
    pipeline's order. Call the pipeline with ``top_k=model.config.num_labels``: it returns only its ``top_k`` best
    labels (5 by default, also when ``top_k=None`` is passed), and a label it did not return cannot be kept.

        classifier = pipeline("image-classification", model="outputs/demo")
        apply_label_thresholds(classifier("photo.jpg", top_k=classifier.model.config.num_labels), classifier.model)
    """
    config = _config(model_or_config)
    id2label = config.get("id2label") if isinstance(config, dict) else getattr(config, "id2label", None)
    if not id2label:
        raise ValueError("the model's config names no labels (id2label)")
    thresholds = label_thresholds(config, default)
    by_name = {str(id2label[key]): thresholds[int(key)] for key in id2label}

    def keep(items):
        kept = []
        for item in items:
            if not isinstance(item, dict) or "label" not in item or "score" not in item:
                raise ValueError(f"expected the pipeline's [{{'label', 'score'}}, ...], got {item!r}"[:200])
            if item["label"] not in by_name:
                raise ValueError(f"the pipeline returned the label {item['label']!r}, which the model does not have")
            if float(item["score"]) > by_name[item["label"]]:
                kept.append(item)
        return kept

    outputs = list(outputs)
    if outputs and all(isinstance(item, (list, tuple)) for item in outputs):
        return [keep(items) for items in outputs]
    return keep(outputs)


__all__ = [
    "DEFAULT_THRESHOLD",
    "FIELD",
    "apply_label_thresholds",
    "check_label_thresholds",
    "describe_thresholds",
    "label_thresholds",
    "stored_label_thresholds",
]
