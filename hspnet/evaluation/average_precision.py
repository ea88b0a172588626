"""Average precision: per-class AP and mAP, in two definitions, and the input checks of every metric.

These functions and those of :mod:`hspnet.evaluation.metrics` (the threshold / top-k family,
:func:`~hspnet.evaluation.metrics.compute_all_metrics`, the streaming accumulator) are the metric API of the package
(the ``evaluate`` module under ``metrics/hspnet_multilabel`` wraps them).

Inputs
------
``scores``: (N, C) array-like (numpy array, torch tensor on any device, nested lists), one row per image.
``targets``: (N, C) multi-hot ground truth with values in {0, 1} (anything else raises ``ValueError``).

Bad input raises ONE ``ValueError`` that names the argument: scores that are not a rectangular 2-d array of
numbers, NaN or infinite scores (with the position of the first), empty input (N = 0 or C = 0: there is nothing to
average, and a 0 would look like a result), targets of another shape or with values other than 0/1, an unknown
``definition``.

mAP is computed from the ranking of the scores only, so it is the same for logits and for sigmoid probabilities
(the sigmoid is strictly increasing; only probabilities that saturate to exactly 0.0 / 1.0 in floating point can
create extra ties).

Two mAP definitions
-------------------
``average_precision_ranked`` (``definition="ranked"``, the DEFAULT and the one to report): the ASL / ML-GCN /
released HSPNet definition. For each class the images are sorted by score, descending (a stable sort: tied images
keep their input order, the lower index first); AP = mean over the positive images of the precision at the rank of
each positive. A class with no positive gets AP = 0 and still counts in the mean. On ties this depends on the input
order (the reference code uses ``np.argsort(...)[::-1]``, whose tie order is implementation-defined, so on tied
scores its values can differ from ours and from run to run); the reference code also divides by ``n_pos + 1e-8``,
which changes AP by less than 1e-8 relative.

``average_precision_tie_aware`` (``definition="tie_aware"``): the definition of scikit-learn's
``average_precision_score`` (and torchmetrics with ``thresholds=None``): AP = sum over distinct score thresholds of
(recall increase) x (precision at that threshold), so tied images form one group and the value does not depend on
their order. A class with no positive gets AP = 0 (scikit-learn also returns 0 there, with a warning), and counts in
the (macro) mean.

Without ties the two definitions agree (to rounding).
"""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

__all__ = [
    "MAP_DEFINITIONS",
    "average_precision_ranked",
    "average_precision_tie_aware",
    "mean_average_precision",
]

MAP_DEFINITIONS = ("ranked", "tie_aware")


# ---------------------------------------------------------------------------
# input handling (shared with hspnet.evaluation.metrics)
# ---------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    try:  # torch is a hard dependency of the package, but keep this module importable without it
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            return x.cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def _as_array(x: Any, name: str) -> np.ndarray:
    try:
        a = _to_numpy(x)
    except (ValueError, TypeError) as error:  # ragged nested lists, unconvertible objects
        raise ValueError(f"{name} must be a rectangular (N, C) array of numbers: {error}") from None
    if a.dtype.kind not in "biuf":  # bool, int, unsigned, float: no strings, objects, complex
        raise ValueError(f"{name} must be a rectangular (N, C) array of numbers, got dtype {a.dtype}")
    return a


def _check_scores(scores: Any, name: str = "scores", *, allow_empty: bool = False) -> np.ndarray:
    s = _as_array(scores, name)
    if not allow_empty and s.size == 0:
        raise ValueError(f"{name} is empty (shape {s.shape}): nothing to evaluate, need N >= 1 samples and C >= 1 labels")
    if s.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (N, C) array, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    finite = np.isfinite(s)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise ValueError(f"{name} contain NaN or infinite values: {name}[{row}, {col}] = {s[row, col]}")
    return s


def _check_targets(targets: Any, shape: Tuple[int, ...], name: str = "targets") -> np.ndarray:
    t = _as_array(targets, name)
    if t.shape != shape:
        raise ValueError(f"{name} must have the shape of the scores {shape}, got {t.shape}")
    valid = (t == 0) | (t == 1)
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise ValueError(f"{name} must be multi-hot with values in {{0, 1}}: {name}[{row}, {col}] = {t[row, col]}")
    return t.astype(bool)


def _prepare(scores: Any, targets: Any) -> Tuple[np.ndarray, np.ndarray]:
    s = _check_scores(scores)
    return s, _check_targets(targets, s.shape)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


BLOCK_BYTES = 64 * 2**20
"""Working memory of one block of the metric computations: per-class AP runs over blocks of columns and the
threshold / top-k decisions over blocks of rows, so that the temporaries (sort orders, cumulative sums, ...) stay
about this size instead of growing to ~10-20 x the (N, C) scores at large N x C. The results are the same, to the
bit, for any block size."""


def _blocks(total: int, other: int, bytes_per_element: int) -> List[Tuple[int, int]]:
    """``[(start, stop), ...]`` over ``total`` columns (or rows) of an array whose other side is ``other`` long, so
    that one block's temporaries take about :data:`BLOCK_BYTES`."""
    step = max(1, BLOCK_BYTES // max(1, other * bytes_per_element))
    return [(start, min(total, start + step)) for start in range(0, total, step)] or [(0, 0)]


def _sorted_columns(s: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per column, sort descending by score (stable: ties keep input order)."""
    order = np.argsort(-s, axis=0, kind="stable")
    return np.take_along_axis(s, order, axis=0), np.take_along_axis(t, order, axis=0)


def _ap_ranked_block(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    n = s.shape[0]
    _, t_sorted = _sorted_columns(s, t)
    hits = np.cumsum(t_sorted, axis=0, dtype=np.float64)
    precision_at_rank = hits / np.arange(1, n + 1, dtype=np.float64)[:, None]
    n_pos = t.sum(axis=0)
    return _safe_div((precision_at_rank * t_sorted).sum(axis=0), n_pos)


def _ap_tie_aware_block(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    n, c = s.shape
    s_sorted, t_sorted = _sorted_columns(s, t)
    hits = np.cumsum(t_sorted, axis=0, dtype=np.float64)
    precision = hits / np.arange(1, n + 1, dtype=np.float64)[:, None]
    # index of the last element of each run of equal scores
    group_end = np.ones((n, c), dtype=bool)
    group_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    end_index = np.where(group_end, np.arange(n)[:, None], n)
    # for every position, the end of its group = the next group end at or after it
    group_of = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision_at_group = np.take_along_axis(precision, group_of, axis=0)
    # each positive contributes (1/n_pos) * precision at the end of its tie group
    n_pos = t.sum(axis=0)
    return _safe_div((precision_at_group * t_sorted).sum(axis=0), n_pos)


def _per_column(function, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``function`` (a per-class computation on ``(N, c)`` blocks) over blocks of columns, concatenated. Blocks have
    at least 2 columns (unless C = 1): numpy sums a one-column array along axis 0 in another order (pairwise) than
    a wider one (row by row), so this keeps the sums, and the results, identical to one block of all columns."""
    n, c = s.shape
    blocks = _blocks(c, n, 96)
    if len(blocks) > 1:
        step = max(2, blocks[0][1] - blocks[0][0])
        blocks = [(a, min(c, a + step)) for a in range(0, c, step)]
        if blocks[-1][1] - blocks[-1][0] == 1:  # a last single column joins the block before it
            blocks[-2:] = [(blocks[-2][0], c)]
    return np.concatenate([function(s[:, a:b], t[:, a:b]) for a, b in blocks])


# ---------------------------------------------------------------------------
# average precision
# ---------------------------------------------------------------------------
def average_precision_ranked(scores: Any, targets: Any) -> np.ndarray:
    """Per-class AP, ASL / HSPNet definition (rank order, stable sort).

    Returns a float64 array of shape (C,) with values in [0, 1]; classes
    without positives give 0. See the module docstring for tie handling.
    """
    s, t = _prepare(scores, targets)
    return _per_column(_ap_ranked_block, s, t)


def average_precision_tie_aware(scores: Any, targets: Any) -> np.ndarray:
    """Per-class AP, scikit-learn's ``average_precision_score`` definition.

    AP = sum over distinct thresholds of (R_k - R_{k-1}) * P_k. Tied scores
    form one group, so the result does not depend on the order of tied
    images. Returns a float64 array of shape (C,) in [0, 1]; classes without
    positives give 0 (as scikit-learn). The macro average is ``.mean()``.
    """
    s, t = _prepare(scores, targets)
    return _per_column(_ap_tie_aware_block, s, t)


def _mean_ap(s: np.ndarray, t: np.ndarray, definition: str) -> float:
    """:func:`mean_average_precision` on checked arrays."""
    if definition == "ranked":
        ap = _per_column(_ap_ranked_block, s, t)
    elif definition == "tie_aware":
        ap = _per_column(_ap_tie_aware_block, s, t)
    else:
        raise ValueError(f"definition must be one of {MAP_DEFINITIONS}, got {definition!r}")
    return float(100.0 * ap.mean())


def mean_average_precision(scores: Any, targets: Any, definition: str = "ranked") -> float:
    """mAP in percent (100 * mean over ALL classes of the per-class AP).

    ``definition``: "ranked" (default, the ASL / HSPNet one that the paper
    reports) or "tie_aware" (scikit-learn's). Classes without positives
    count with AP 0 in both.
    """
    if definition not in MAP_DEFINITIONS:
        raise ValueError(f"definition must be one of {MAP_DEFINITIONS}, got {definition!r}")
    s, t = _prepare(scores, targets)
    return _mean_ap(s, t, definition)
