"""Multi-label evaluation metrics: mAP (two definitions), CP/CR/CF1/OP/OR/OF1.

These functions are the primary metric API of the package (the ``evaluate``
module under ``metrics/hspnet_multilabel`` wraps them).

Inputs
------
``scores``: (N, C) array-like (numpy array, torch tensor on any device,
nested lists), one row per image. ``targets``: (N, C) multi-hot ground
truth with values in {0, 1} (anything else raises ``ValueError``).

mAP is computed from the ranking of the scores only, so it is the same for
logits and for sigmoid probabilities (the sigmoid is strictly increasing;
only probabilities that saturate to exactly 0.0 / 1.0 in floating point can
create extra ties). Threshold metrics need probabilities: pass probabilities,
or logits with ``from_logits=True``. Without ``from_logits`` a score outside
[0, 1] raises ``ValueError`` (it is almost certainly a logit).

Two mAP definitions
-------------------
``average_precision_ranked`` (``definition="ranked"``, the DEFAULT and the
one to report): the ASL / ML-GCN / released HSPNet definition. For each class
the images are sorted by score, descending (a stable sort: tied images keep
their input order, the lower index first); AP = mean over the positive images
of the precision at the rank of each positive. A class with no positive gets
AP = 0 and still counts in the mean. On ties this depends on the input order
(the reference code uses ``np.argsort(...)[::-1]``, whose tie order is
implementation-defined, so on tied scores its values can differ from ours and
from run to run); the reference code also divides by ``n_pos + 1e-8``, which
changes AP by less than 1e-8 relative.

``average_precision_tie_aware`` (``definition="tie_aware"``): the definition
of scikit-learn's ``average_precision_score`` (and torchmetrics with
``thresholds=None``): AP = sum over distinct score thresholds of
(recall increase) x (precision at that threshold), so tied images form one
group and the value does not depend on their order. A class with no positive
gets AP = 0 (scikit-learn also returns 0 there, with a warning), and counts in
the (macro) mean.

Without ties the two definitions agree (to rounding).

Threshold and top-k metrics (all in PERCENT, like mAP)
-------------------------------------------------------
Per class c: TP_c, FP_c, FN_c from the binary decisions.
CP = mean_c TP_c/(TP_c+FP_c), CR = mean_c TP_c/(TP_c+FN_c),
CF1 = 2*CP*CR/(CP+CR) (ML-GCN's definition),
mean_class_F1 = mean_c of the per-class F1 (the released HSPNet code's "F_C"),
OP = sum TP / sum (TP+FP), OR = sum TP / sum (TP+FN), OF1 = 2*OP*OR/(OP+OR).
Convention for 0/0: the value is 0 (a class that is never predicted has
precision 0, a class without positives has recall 0, and its F1 is 0; this is
the released HSPNet code's convention, which sets p_c, r_c, F1_c to 0 whenever
TP_c = 0). The threshold decision is ``prob > threshold`` (strict, as the
reference's ``gt(0.5)``).

Top-k (ML-GCN, k = 3): the k highest-scoring labels of each image are the
predicted positives (ties broken by label index, lower first). ML-GCN
additionally requires the score of such a label to be >= 0 (a logit, i.e.
probability >= 0.5): pass ``min_score=0.0`` with logits to get exactly that.

Distributed evaluation
----------------------
``MultiLabelMetricAccumulator`` stores the (N, C) scores and targets, a batch
at a time, and computes everything at the end. Under accelerate, give it the
batches AFTER ``accelerator.gather_for_metrics`` (or call
``add_from_accelerator``, which gathers): ``gather_for_metrics`` collects
every process's batch and drops the samples that the prepared dataloader
duplicated to even out the last batch, so every test image is counted once.
This needs the dataloader to be prepared by the same accelerator.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = [
    "MAP_DEFINITIONS",
    "average_precision_ranked",
    "average_precision_tie_aware",
    "mean_average_precision",
    "threshold_metrics",
    "topk_metrics",
    "compute_all_metrics",
    "MultiLabelMetricAccumulator",
]

MAP_DEFINITIONS = ("ranked", "tie_aware")


# ---------------------------------------------------------------------------
# input handling
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


def _check_scores(scores: Any) -> np.ndarray:
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be a 2-d (N, C) array, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if s.size and not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return s


def _check_targets(targets: Any, shape: Tuple[int, ...]) -> np.ndarray:
    t = _to_numpy(targets)
    if t.shape != shape:
        raise ValueError(f"targets must have the shape of scores {shape}, got {t.shape}")
    if t.size and not np.all((t == 0) | (t == 1)):
        raise ValueError("targets must be multi-hot with values in {0, 1}")
    return t.astype(bool)


def _prepare(scores: Any, targets: Any) -> Tuple[np.ndarray, np.ndarray]:
    s = _check_scores(scores)
    return s, _check_targets(targets, s.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _probabilities(scores: np.ndarray, from_logits: bool) -> np.ndarray:
    if from_logits:
        return _sigmoid(scores)
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            "threshold metrics need probabilities in [0, 1]; these scores look like logits: "
            "pass from_logits=True"
        )
    return scores


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _sorted_columns(s: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per column, sort descending by score (stable: ties keep input order)."""
    order = np.argsort(-s, axis=0, kind="stable")
    return np.take_along_axis(s, order, axis=0), np.take_along_axis(t, order, axis=0)


# ---------------------------------------------------------------------------
# average precision
# ---------------------------------------------------------------------------
def average_precision_ranked(scores: Any, targets: Any) -> np.ndarray:
    """Per-class AP, ASL / HSPNet definition (rank order, stable sort).

    Returns a float64 array of shape (C,) with values in [0, 1]; classes
    without positives give 0. See the module docstring for tie handling.
    """
    s, t = _prepare(scores, targets)
    n, c = s.shape
    if n == 0:
        return np.zeros(c, dtype=np.float64)
    _, t_sorted = _sorted_columns(s, t)
    hits = np.cumsum(t_sorted, axis=0, dtype=np.float64)
    precision_at_rank = hits / np.arange(1, n + 1, dtype=np.float64)[:, None]
    n_pos = t.sum(axis=0)
    return _safe_div((precision_at_rank * t_sorted).sum(axis=0), n_pos)


def average_precision_tie_aware(scores: Any, targets: Any) -> np.ndarray:
    """Per-class AP, scikit-learn's ``average_precision_score`` definition.

    AP = sum over distinct thresholds of (R_k - R_{k-1}) * P_k. Tied scores
    form one group, so the result does not depend on the order of tied
    images. Returns a float64 array of shape (C,) in [0, 1]; classes without
    positives give 0 (as scikit-learn). The macro average is ``.mean()``.
    """
    s, t = _prepare(scores, targets)
    n, c = s.shape
    if n == 0:
        return np.zeros(c, dtype=np.float64)
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


def mean_average_precision(scores: Any, targets: Any, definition: str = "ranked") -> float:
    """mAP in percent (100 * mean over ALL classes of the per-class AP).

    ``definition``: "ranked" (default, the ASL / HSPNet one that the paper
    reports) or "tie_aware" (scikit-learn's). Classes without positives
    count with AP 0 in both.
    """
    if definition == "ranked":
        ap = average_precision_ranked(scores, targets)
    elif definition == "tie_aware":
        ap = average_precision_tie_aware(scores, targets)
    else:
        raise ValueError(f"definition must be one of {MAP_DEFINITIONS}, got {definition!r}")
    return float(100.0 * ap.mean()) if ap.size else 0.0


# ---------------------------------------------------------------------------
# decision metrics
# ---------------------------------------------------------------------------
def _decision_metrics(pred: np.ndarray, t: np.ndarray) -> Dict[str, float]:
    tp = (pred & t).sum(axis=0).astype(np.float64)
    fp = (pred & ~t).sum(axis=0).astype(np.float64)
    fn = (~pred & t).sum(axis=0).astype(np.float64)
    p_c = _safe_div(tp, tp + fp)
    r_c = _safe_div(tp, tp + fn)
    f_c = _safe_div(2 * p_c * r_c, p_c + r_c)
    cp = 100.0 * float(p_c.mean()) if p_c.size else 0.0
    cr = 100.0 * float(r_c.mean()) if r_c.size else 0.0
    op = 100.0 * float(_safe_div(tp.sum(), (tp + fp).sum()))
    o_r = 100.0 * float(_safe_div(tp.sum(), (tp + fn).sum()))
    return {
        "CP": cp,
        "CR": cr,
        "CF1": float(_safe_div(2 * cp * cr, cp + cr)),
        "mean_class_F1": 100.0 * float(f_c.mean()) if f_c.size else 0.0,
        "OP": op,
        "OR": o_r,
        "OF1": float(_safe_div(2 * op * o_r, op + o_r)),
    }


def threshold_metrics(
    scores: Any, targets: Any, threshold: float = 0.5, *, from_logits: bool = False
) -> Dict[str, float]:
    """CP, CR, CF1, mean_class_F1, OP, OR, OF1 (percent) at ``prob > threshold``.

    ``scores`` are probabilities, or logits with ``from_logits=True`` (the
    sigmoid is applied first). CF1 is ML-GCN's 2*CP*CR/(CP+CR);
    mean_class_F1 is the mean of per-class F1 (the released HSPNet "F_C").
    0/0 counts as 0.
    """
    s, t = _prepare(scores, targets)
    probs = _probabilities(s, from_logits)
    return _decision_metrics(probs > threshold, t)


def topk_metrics(
    scores: Any, targets: Any, k: int = 3, *, min_score: Optional[float] = None
) -> Dict[str, float]:
    """The same metrics (percent) with the top-``k`` labels of each image as predictions.

    Ties are broken by label index (lower first). ``min_score``: if given, a
    top-k label only counts as predicted when its score is >= min_score
    (ML-GCN's top-3 evaluation uses logits with min_score=0.0). Works on
    logits or probabilities alike when ``min_score`` is None.
    """
    s, t = _prepare(scores, targets)
    n, c = s.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an int in [1, {c}], got {k!r}")
    pred = np.zeros((n, c), dtype=bool)
    if n:
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        np.put_along_axis(pred, top, True, axis=1)
    if min_score is not None:
        pred &= s >= min_score
    return _decision_metrics(pred, t)


def compute_all_metrics(
    scores: Any,
    targets: Any,
    *,
    from_logits: bool = False,
    threshold: float = 0.5,
    k: int = 3,
    topk_min_score: Optional[float] = None,
) -> Dict[str, float]:
    """Everything for a report, as a flat dict of floats (percent).

    Keys: ``mAP`` (ranked definition, the one to report), ``mAP_tie_aware``,
    ``CP CR CF1 mean_class_F1 OP OR OF1`` at ``threshold``, the same with the
    suffix ``_top{k}``, and ``num_samples``.
    """
    s, t = _prepare(scores, targets)
    probs = _probabilities(s, from_logits)  # validates the range before any work
    out: Dict[str, float] = {
        "mAP": mean_average_precision(s, t, "ranked"),
        "mAP_tie_aware": mean_average_precision(s, t, "tie_aware"),
    }
    out.update(_decision_metrics(probs > threshold, t))
    for key, value in topk_metrics(s, t, k, min_score=topk_min_score).items():
        out[f"{key}_top{k}"] = value
    out["num_samples"] = int(s.shape[0])
    return out


# ---------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------
class MultiLabelMetricAccumulator:
    """Collect (N, C) scores and targets batch by batch, then compute the metrics.

    Memory: exactly the scores (float32, or float64 if the first batch is
    float64) and targets (uint8) of the samples added, in buffers that grow
    by doubling (amortised O(1) per sample, at most 2x the final size).

    ``from_logits`` / ``threshold`` / ``k`` / ``topk_min_score`` are passed
    to :func:`compute_all_metrics`.

    Distributed use (accelerate)::

        acc = MultiLabelMetricAccumulator(num_labels, from_logits=True)
        for batch in eval_dataloader:          # prepared by `accelerator`
            logits = model(**batch).logits
            acc.add_from_accelerator(accelerator, logits, batch["labels"])
        metrics = acc.compute()                # identical on every process

    ``add_from_accelerator`` calls ``accelerator.gather_for_metrics``, which
    drops the duplicated samples of an uneven last batch. Calling ``add``
    directly with per-process tensors under multiple processes would give
    per-process metrics instead.
    """

    def __init__(
        self,
        num_labels: int,
        *,
        from_logits: bool = False,
        threshold: float = 0.5,
        k: int = 3,
        topk_min_score: Optional[float] = None,
        initial_capacity: int = 1024,
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = int(num_labels)
        self.from_logits = from_logits
        self.threshold = threshold
        self.k = k
        self.topk_min_score = topk_min_score
        self._initial_capacity = max(1, int(initial_capacity))
        self.reset()

    def reset(self) -> None:
        self._scores: Optional[np.ndarray] = None
        self._targets: Optional[np.ndarray] = None
        self._n = 0

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def scores(self) -> np.ndarray:
        """The (N, C) scores added so far (a view, do not modify)."""
        if self._scores is None:
            return np.zeros((0, self.num_labels), dtype=np.float32)
        return self._scores[: self._n]

    @property
    def targets(self) -> np.ndarray:
        """The (N, C) targets added so far (uint8, a view)."""
        if self._targets is None:
            return np.zeros((0, self.num_labels), dtype=np.uint8)
        return self._targets[: self._n]

    def _grow(self, needed: int, dtype: np.dtype) -> None:
        if self._scores is None:
            cap = max(self._initial_capacity, needed)
            self._scores = np.empty((cap, self.num_labels), dtype=dtype)
            self._targets = np.empty((cap, self.num_labels), dtype=np.uint8)
            return
        cap = self._scores.shape[0]
        if needed <= cap:
            return
        while cap < needed:
            cap *= 2
        new_s = np.empty((cap, self.num_labels), dtype=self._scores.dtype)
        new_t = np.empty((cap, self.num_labels), dtype=np.uint8)
        new_s[: self._n] = self._scores[: self._n]
        new_t[: self._n] = self._targets[: self._n]
        self._scores, self._targets = new_s, new_t

    def add(self, scores: Any, targets: Any) -> None:
        """Add a batch: scores (B, C) and multi-hot targets (B, C)."""
        s = _to_numpy(scores)
        t = _to_numpy(targets)
        if s.ndim != 2 or s.shape[1] != self.num_labels:
            raise ValueError(f"scores must be (B, {self.num_labels}), got {s.shape}")
        if t.shape != s.shape:
            raise ValueError(f"targets must have shape {s.shape}, got {t.shape}")
        if t.size and not np.all((t == 0) | (t == 1)):
            raise ValueError("targets must be multi-hot with values in {0, 1}")
        b = s.shape[0]
        dtype = np.float64 if s.dtype == np.float64 else np.float32
        self._grow(self._n + b, np.dtype(dtype))
        self._scores[self._n : self._n + b] = s
        self._targets[self._n : self._n + b] = t
        self._n += b

    def add_from_accelerator(self, accelerator: Any, logits: Any, targets: Any) -> None:
        """Gather ``(logits, targets)`` across processes with
        ``accelerator.gather_for_metrics`` (dropping the duplicated tail
        samples of an uneven split) and add the result. Both must be tensors
        on ``accelerator.device``; ``logits`` are whatever this accumulator's
        ``from_logits`` says (logits if True, probabilities if False)."""
        gathered_scores, gathered_targets = accelerator.gather_for_metrics((logits, targets))
        self.add(gathered_scores, gathered_targets)

    def compute(self) -> Dict[str, float]:
        """:func:`compute_all_metrics` over everything added."""
        return compute_all_metrics(
            self.scores,
            self.targets,
            from_logits=self.from_logits,
            threshold=self.threshold,
            k=self.k,
            topk_min_score=self.topk_min_score,
        )
