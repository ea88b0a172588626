"""Per-label decision thresholds chosen on a fully labelled split (``hspnet calibrate``), and the F1 measures that
compare them with one global threshold. Pure numpy: scores and targets in, numbers out.

Decision rule: label ``c`` is predicted for an image when its probability is strictly above the threshold ``t_c``
(``score > t``, as every metric and ``hspnet predict``). F1 of a set of decisions: ``2 TP / (2 TP + FP + FN)``,
0 when that is 0/0 (the package's convention: no positive and nothing predicted gives 0).

The F1-optimal threshold of a label (:func:`f1_optimal_thresholds`)
---------------------------------------------------------------------
Let ``u_1 > u_2 > ... > u_m`` be the label's distinct scores on the split. Every threshold in ``[u_{j+1}, u_j)``
makes the same decisions (predict the images with score ``>= u_j``), so the candidates are one threshold per
distinct decision set:

- ``(u_j + u_{j+1}) / 2`` for ``j = 1..m`` (with ``u_{m+1} = 0``): predicts the images with score ``>= u_j``. The
  midpoint, not a score itself: it keeps the largest margin to the calibration scores on both sides, so a score that
  moves slightly (float32 vs float64, ONNX vs PyTorch, another machine) does not flip a decision. A lowest score of
  exactly 0 has no candidate of its own (``score > 0`` cannot predict it);
- ``(u_1 + 1) / 2``: predicts nothing (F1 0 when the label has a positive, so it is chosen only when nothing is).

The chosen threshold is the candidate of highest F1 (F1 values of equal ratios are equal floats: ties are exact).
Ties: the candidate closest to the default threshold ``default`` (0.5), and of two equally close the larger one.
Why: several thresholds are equally good on the calibration data only when it cannot tell them apart (typically
few positives); then the threshold moves away from the uncalibrated rule only as far as the data demands, and an
exact tie on distance goes to the more conservative threshold (fewer labels predicted, higher precision at the same
F1).

The fallback (:func:`calibrate_thresholds`)
-------------------------------------------
A label with fewer than ``min_positives`` positives on the split (default :data:`DEFAULT_MIN_POSITIVES` = 5) gets
the global threshold instead: the ONE threshold that maximises the micro F1 (``OF1``: TP, FP, FN summed over all
labels and images) on the same split, found by the same rule over all ``N x C`` scores at once. With fewer than 5
positives a label's F1-optimal threshold is decided by a handful of images (moving one positive across the
threshold changes its F1 by 20 points or more), so it is mostly noise; the global threshold pools every label's
evidence.

Reports (:func:`threshold_report`): macro F1 (the mean of the per-label F1 over the labels that have at least one
positive on the data measured; a label without a positive has F1 0 whatever its threshold, so it would only lower
both sides of a comparison alike; how many were left out is reported), sample F1 (per image ``2 |P & T| / (|P| +
|T|)``, 0 for an image with neither, averaged over the images) and micro F1. All F1 values are in percent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from hspnet.evaluation.average_precision import _blocks, _prepare, _safe_div

__all__ = [
    "CALIBRATED",
    "DEFAULT_MIN_POSITIVES",
    "FALLBACK",
    "Calibration",
    "calibrate_thresholds",
    "f1_optimal_thresholds",
    "macro_f1",
    "micro_f1",
    "micro_f1_optimal_threshold",
    "per_label_f1",
    "sample_f1",
    "threshold_report",
]

DEFAULT_MIN_POSITIVES = 5
CALIBRATED, FALLBACK = "calibrated", "fallback"


def _probabilities(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s, t = _prepare(scores, targets)
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("thresholds are chosen on probabilities in [0, 1]; these scores look like logits: apply the "
                         "sigmoid first")
    return s.astype(np.float64, copy=False), t


def _check_default(default: Any) -> float:
    if isinstance(default, bool) or not isinstance(default, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(default) and 0.0 <= default <= 1.0):
        raise ValueError(f"default must be a finite number in [0, 1], got {default!r}")
    return float(default)


def _thresholds_array(thresholds: Any, num_labels: int) -> np.ndarray:
    """A scalar or one threshold per label -> a (C,) float64 array of finite numbers in [0, 1]."""
    values = np.asarray(thresholds, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(num_labels, float(values))
    if values.shape != (num_labels,):
        raise ValueError(f"thresholds must be one number or one per label ({num_labels}), got shape {values.shape}")
    if not (np.isfinite(values).all() and (values >= 0).all() and (values <= 1).all()):
        raise ValueError("thresholds must be finite numbers in [0, 1]")
    return values


def _best_per_column(s: np.ndarray, t: np.ndarray, default: float) -> tuple[np.ndarray, np.ndarray]:
    """The rule of the module docstring for every column of ``s`` (N, c): ``(thresholds, F1)`` (F1 as a fraction)."""
    n, c = s.shape
    order = np.argsort(-s, axis=0, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=0)
    hits = np.cumsum(np.take_along_axis(t, order, axis=0), axis=0, dtype=np.float64)
    positives = hits[-1] if n else np.zeros(c)
    predicted = np.arange(1, n + 1, dtype=np.float64)[:, None]
    f1 = _safe_div(2.0 * hits, predicted + positives)  # 2 TP / (2 TP + FP + FN) = 2 TP / (predicted + positives)
    lower = np.vstack([s_sorted[1:], np.zeros((1, c))])  # the next lower distinct score at the end of a tie group
    candidate = (s_sorted[:-1] != s_sorted[1:]) if n > 1 else np.zeros((0, c), dtype=bool)
    candidate = np.vstack([candidate, np.ones((1, c), dtype=bool)]) & (s_sorted > 0.0)
    threshold = (s_sorted + lower) / 2.0
    threshold = np.where(threshold < s_sorted, threshold, lower)  # a midpoint rounded up onto u_j: take u_{j+1}
    # the "predict nothing" candidate: F1 0 (nothing predicted)
    threshold = np.vstack([threshold, ((s_sorted[0] if n else np.zeros(c)) + 1.0)[None] / 2.0])
    f1 = np.vstack([f1, np.zeros((1, c))])
    candidate = np.vstack([candidate, np.ones((1, c), dtype=bool)])
    f1 = np.where(candidate, f1, -1.0)
    best = f1.max(axis=0)
    tied = f1 == best
    distance = np.where(tied, np.abs(threshold - default), np.inf)
    closest = tied & (distance == distance.min(axis=0))
    chosen = np.where(closest, threshold, -np.inf).max(axis=0)
    return chosen, best


def f1_optimal_thresholds(probabilities: Any, targets: Any, default: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per label (column): the F1-optimal threshold of the module docstring and the F1 it gives (percent), as two
    (C,) float64 arrays. ``probabilities`` (N, C) in [0, 1], ``targets`` (N, C) multi-hot."""
    s, t = _probabilities(probabilities, targets)
    default = _check_default(default)
    n, c = s.shape
    thresholds, f1 = np.empty(c), np.empty(c)
    for a, b in _blocks(c, n, 64):
        thresholds[a:b], f1[a:b] = _best_per_column(s[:, a:b], t[:, a:b], default)
    return thresholds, 100.0 * f1


def micro_f1_optimal_threshold(probabilities: Any, targets: Any, default: float = 0.5) -> tuple[float, float]:
    """The ONE threshold for every label that maximises the micro F1 over all labels (the same rule on all ``N x C``
    scores at once) and that F1 (percent)."""
    s, t = _probabilities(probabilities, targets)
    threshold, f1 = _best_per_column(s.reshape(-1, 1), t.reshape(-1, 1), _check_default(default))
    return float(threshold[0]), 100.0 * float(f1[0])


def _counts(s: np.ndarray, t: np.ndarray, thresholds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: TP, predicted, positives of ``score > threshold``."""
    pred = s > _thresholds_array(thresholds, s.shape[1])[None, :]
    return (pred & t).sum(axis=0), pred.sum(axis=0), t.sum(axis=0)


def per_label_f1(probabilities: Any, targets: Any, thresholds: Any) -> np.ndarray:
    """(C,) F1 (percent) of each label at ``score > threshold`` (one threshold, or one per label)."""
    s, t = _probabilities(probabilities, targets)
    tp, predicted, positives = _counts(s, t, thresholds)
    return 100.0 * _safe_div(2.0 * tp, predicted + positives)


def macro_f1(probabilities: Any, targets: Any, thresholds: Any) -> tuple[float, int]:
    """``(macro F1 in percent, number of labels averaged)``: the mean per-label F1 over the labels with at least one
    positive (0.0 when none has one)."""
    s, t = _probabilities(probabilities, targets)
    tp, predicted, positives = _counts(s, t, thresholds)
    f1 = 100.0 * _safe_div(2.0 * tp, predicted + positives)
    counted = positives > 0
    return (float(f1[counted].mean()) if counted.any() else 0.0), int(counted.sum())


def micro_f1(probabilities: Any, targets: Any, thresholds: Any) -> float:
    """Micro F1 (percent): TP, FP and FN summed over every label and image."""
    s, t = _probabilities(probabilities, targets)
    tp, predicted, positives = _counts(s, t, thresholds)
    return 100.0 * float(_safe_div(2.0 * tp.sum(), predicted.sum() + positives.sum()))


def sample_f1(probabilities: Any, targets: Any, thresholds: Any) -> float:
    """Sample F1 (percent): per image ``2 |predicted & true| / (|predicted| + |true|)`` (0 when both are empty),
    averaged over the images."""
    s, t = _probabilities(probabilities, targets)
    pred = s > _thresholds_array(thresholds, s.shape[1])[None, :]
    per_image = _safe_div(2.0 * (pred & t).sum(axis=1), pred.sum(axis=1) + t.sum(axis=1))
    return 100.0 * float(per_image.mean())


def threshold_report(probabilities: Any, targets: Any, thresholds: Any) -> dict:
    """``macro_F1``, ``macro_F1_labels`` (how many labels it averages), ``sample_F1`` and ``micro_F1`` at the given
    thresholds (one, or one per label)."""
    macro, counted = macro_f1(probabilities, targets, thresholds)
    return {"macro_F1": macro, "macro_F1_labels": counted, "sample_F1": sample_f1(probabilities, targets, thresholds),
            "micro_F1": micro_f1(probabilities, targets, thresholds)}


@dataclass
class Calibration:
    """The thresholds :func:`calibrate_thresholds` chose, per label (in the column order of its input): the threshold,
    its source (``"calibrated"`` or ``"fallback"``), the number of positives, and the F1 (percent) at ``default`` and
    at the threshold; and the global (micro-F1-optimal) threshold given to the fallback labels."""

    thresholds: list[float]
    sources: list[str]
    positives: list[int]
    f1_default: list[float]
    f1_threshold: list[float]
    global_threshold: float
    global_micro_f1: float
    min_positives: int
    default: float

    def rows(self, labels: Sequence[str]) -> list[dict]:
        """One dict per label: ``label``, ``threshold``, ``source``, ``positives``, ``F1_at_default``,
        ``F1_at_threshold``."""
        if len(labels) != len(self.thresholds):
            raise ValueError(f"{len(labels)} label names for {len(self.thresholds)} thresholds")
        return [{"label": str(name), "threshold": self.thresholds[i], "source": self.sources[i],
                 "positives": self.positives[i], "F1_at_default": self.f1_default[i],
                 "F1_at_threshold": self.f1_threshold[i]} for i, name in enumerate(labels)]


def calibrate_thresholds(probabilities: Any, targets: Any, min_positives: int = DEFAULT_MIN_POSITIVES,
                         default: float = 0.5) -> Calibration:
    """Thresholds for every label (see the module docstring): the F1-optimal threshold of each label with at least
    ``min_positives`` positives, the micro-F1-optimal global threshold for the others. ``ValueError`` when the
    targets hold no positive at all (nothing to calibrate on)."""
    if isinstance(min_positives, bool) or not isinstance(min_positives, (int, np.integer)) or min_positives < 1:
        raise ValueError(f"min_positives must be an integer >= 1, got {min_positives!r}")
    default = _check_default(default)
    s, t = _probabilities(probabilities, targets)
    positives = t.sum(axis=0)
    if not positives.any():
        raise ValueError("the targets hold no positive label: there is nothing to calibrate thresholds on")
    own, _ = f1_optimal_thresholds(s, t, default)
    global_threshold, global_f1 = micro_f1_optimal_threshold(s, t, default)
    enough = positives >= int(min_positives)
    thresholds = np.where(enough, own, global_threshold)
    return Calibration(
        thresholds=[float(v) for v in thresholds],
        sources=[CALIBRATED if ok else FALLBACK for ok in enough],
        positives=[int(p) for p in positives],
        f1_default=[float(v) for v in per_label_f1(s, t, default)],
        f1_threshold=[float(v) for v in per_label_f1(s, t, thresholds)],
        global_threshold=global_threshold,
        global_micro_f1=global_f1,
        min_positives=int(min_positives),
        default=default,
    )
