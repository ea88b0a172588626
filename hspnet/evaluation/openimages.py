"""The Open Images evaluation protocol: mAP on verified labels only.

Open Images verifies some image-class pairs (present or absent) and leaves the rest unknown. The protocol of the
multi-label literature on Open Images (ASL, ML-Decoder, CSL) therefore computes each class's AP over the images whose
pair with that class was verified, and averages over the classes that have at least one verified positive:

* ``targets`` (N, C): 1 = verified positive, 0 = verified negative, -1 = unknown (never counted: neither a positive
  nor a negative, and not in the ranking either);
* AP of class c: the project's AP (:mod:`hspnet.evaluation.average_precision`, ``"ranked"`` by default, or
  ``"tie_aware"``) on the rows whose target for c is 0 or 1; the same value as that function on those rows alone;
* mAP: the mean, in percent, over the classes with at least one verified positive; the others (no positive, or no
  verified pair at all) are left out and counted (``num_classes_without_positive``).

A class with verified positives but no verified negative has AP 100 %. Threshold metrics are not part of the
protocol. Build the targets of a prepared split with :func:`openimages_targets` (its ``labels`` are the verified
positives, its ``negative_labels`` the verified negatives), then call :func:`openimages_map` or
:func:`openimages_metrics`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from hspnet.evaluation.average_precision import MAP_DEFINITIONS, _as_array, _check_scores, _per_column

__all__ = [
    "UNKNOWN",
    "has_verified_negatives",
    "openimages_average_precision",
    "openimages_map",
    "openimages_metrics",
    "openimages_targets",
]

UNKNOWN = -1


def _check_targets(targets: Any, shape: tuple[int, ...]) -> np.ndarray:
    t = _as_array(targets, "targets")
    if t.shape != shape:
        raise ValueError(f"targets must have the shape of the scores {shape}, got {t.shape}")
    valid = (t == 1) | (t == 0) | (t == UNKNOWN)
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise ValueError(f"targets must hold 1 (verified positive), 0 (verified negative) or -1 (unknown): "
                         f"targets[{row}, {col}] = {t[row, col]}")
    return t.astype(np.int8)


def _verified_columns(s: np.ndarray, t: np.ndarray, tie_aware: bool) -> np.ndarray:
    """Per-class AP of a block of columns, counting only the verified rows of each column (NaN: no positive)."""
    n = s.shape[0]
    order = np.argsort(-s, axis=0, kind="stable")
    t_sorted = np.take_along_axis(t, order, axis=0)
    positive = t_sorted == 1
    verified = t_sorted != UNKNOWN
    hits = np.cumsum(positive, axis=0, dtype=np.float64)
    seen = np.cumsum(verified, axis=0, dtype=np.float64)
    precision = np.divide(hits, seen, out=np.zeros_like(hits), where=seen > 0)
    if tie_aware:  # the precision at the end of each run of equal scores (unknown rows inside a run change nothing)
        s_sorted = np.take_along_axis(s, order, axis=0)
        group_end = np.ones(s.shape, dtype=bool)
        group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
        end_index = np.where(group_end, np.arange(n)[:, None], n)
        group_of = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
        precision = np.take_along_axis(precision, group_of, axis=0)
    n_pos = positive.sum(axis=0)
    total = (precision * positive).sum(axis=0)
    out = np.full(s.shape[1], np.nan)
    np.divide(total, n_pos, out=out, where=n_pos > 0)
    return out


def openimages_average_precision(scores: Any, targets: Any, definition: str = "ranked") -> np.ndarray:
    """Per-class AP on verified pairs only (module docstring): a float64 (C,) array in [0, 1], NaN for a class without
    a verified positive. ``scores`` (N, C) (logits or probabilities: AP depends on the ranking only); ``targets`` (N,
    C) in {1, 0, -1}. Bad input raises one ``ValueError`` naming the argument."""
    if definition not in MAP_DEFINITIONS:
        raise ValueError(f"definition must be one of {MAP_DEFINITIONS}, got {definition!r}")
    s = _check_scores(scores)
    t = _check_targets(targets, s.shape)
    tie_aware = definition == "tie_aware"
    return _per_column(lambda a, b: _verified_columns(a, b, tie_aware), s, t)


def openimages_map(scores: Any, targets: Any, definition: str = "ranked") -> float:
    """The Open Images mAP in percent: the mean of :func:`openimages_average_precision` over the classes with at least
    one verified positive. ``ValueError`` when no class has one (there is nothing to average)."""
    ap = openimages_average_precision(scores, targets, definition)
    evaluated = ~np.isnan(ap)
    if not evaluated.any():
        raise ValueError("no class has a verified positive (targets == 1): the Open Images mAP is undefined")
    return float(100.0 * ap[evaluated].mean())


def openimages_metrics(scores: Any, targets: Any, label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything to report with an Open Images number: ``mAP`` (ranked) and ``mAP_tie_aware`` in percent, the class
    counts (``num_classes``, ``num_classes_evaluated``, ``num_classes_without_positive``), the pairs
    (``num_positive_pairs``, ``num_negative_pairs``, ``num_unknown_pairs``), ``num_samples``, the ``protocol`` in
    words and, with ``label_names``, ``per_class_AP`` (percent, evaluated classes only)."""
    s = _check_scores(scores)
    t = _check_targets(targets, s.shape)
    ranked = _per_column(lambda a, b: _verified_columns(a, b, False), s, t)
    tie_aware = _per_column(lambda a, b: _verified_columns(a, b, True), s, t)
    evaluated = ~np.isnan(ranked)
    if not evaluated.any():
        raise ValueError("no class has a verified positive (targets == 1): the Open Images mAP is undefined")
    out: dict[str, Any] = {
        "mAP": float(100.0 * ranked[evaluated].mean()),
        "mAP_tie_aware": float(100.0 * tie_aware[evaluated].mean()),
        "num_samples": int(s.shape[0]),
        "num_classes": int(s.shape[1]),
        "num_classes_evaluated": int(evaluated.sum()),
        "num_classes_without_positive": int((~evaluated).sum()),
        "num_positive_pairs": int((t == 1).sum()),
        "num_negative_pairs": int((t == 0).sum()),
        "num_unknown_pairs": int((t == UNKNOWN).sum()),
        "protocol": "Open Images: per-class AP over verified pairs only (unknown pairs excluded), mean over the "
                    "classes with at least one verified positive",
    }
    if label_names is not None:
        names = list(label_names)
        if len(names) != s.shape[1]:
            raise ValueError(f"{len(names)} label names for {s.shape[1]} score columns")
        out["per_class_AP"] = {name: float(100.0 * ap) for name, ap, keep in zip(names, ranked, evaluated) if keep}
    return out


def has_verified_negatives(split) -> bool:
    """Whether a prepared split carries known negatives (a ``negative_labels`` column, as Open Images has), so that
    :func:`openimages_targets` and the Open Images protocol apply."""
    return "negative_labels" in getattr(split, "column_names", ())


def openimages_targets(split, num_labels: int, permutation: Sequence[int] | None = None) -> np.ndarray:
    """The (N, C) int8 targets of a prepared split in row order: 1 for its ``labels``, 0 for its ``negative_labels``,
    -1 elsewhere; columns in the model's order when ``permutation[dataset_index] = model_index`` is given (as
    :func:`hspnet.data.batches.label_permutation` returns). A pair both positive and negative is a ``ValueError``
    naming the row."""
    if not has_verified_negatives(split):
        raise ValueError(f"this split has no 'negative_labels' column (columns: {list(split.column_names)}): it "
                         "carries no verified negatives, so the Open Images protocol does not apply")
    columns = split.select_columns(["labels", "negative_labels"])
    positives, negatives = columns["labels"], columns["negative_labels"]
    out = np.full((len(positives), int(num_labels)), UNKNOWN, dtype=np.int8)
    mapping = None if permutation is None else np.asarray(permutation, dtype=np.int64)
    for row, (pos, neg) in enumerate(zip(positives, negatives)):
        pos = np.asarray(pos, dtype=np.int64)
        neg = np.asarray(neg, dtype=np.int64)
        if mapping is not None:
            pos, neg = mapping[pos], mapping[neg]
        if np.intersect1d(pos, neg).size:
            raise ValueError(f"row {row}: label(s) {np.intersect1d(pos, neg).tolist()} are both positive and negative")
        out[row, neg] = 0
        out[row, pos] = 1
    return out
