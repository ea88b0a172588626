"""Multi-label decision metrics (CP/CR/CF1/OP/OR/OF1 at a threshold and for the top-k labels), every metric of a
report at once (:func:`compute_all_metrics`, with the mAP of :mod:`hspnet.evaluation.average_precision`) and their
streaming, distributed-safe accumulation (:class:`MultiLabelMetricAccumulator`).

Inputs are checked as :mod:`hspnet.evaluation.average_precision` describes; besides, bad options raise ONE
``ValueError`` naming them: ``threshold`` not a finite number in [0, 1] (it is compared with PROBABILITIES, also with
``from_logits=True``), ``k`` not an int >= 1, ``min_score`` not None or a finite number, ``from_logits`` not a bool.
``MultiLabelMetricAccumulator`` checks its options when it is built and every batch when it is added, so a bad batch
is reported at the batch, not at the end of the evaluation.

Threshold metrics need probabilities: pass probabilities, or logits with ``from_logits=True``. Without
``from_logits`` a score outside [0, 1] raises ``ValueError`` (it is almost certainly a logit).

Threshold and top-k metrics (all in PERCENT, like mAP)
-------------------------------------------------------
Per class c: TP_c, FP_c, FN_c from the binary decisions.
CP = mean_c TP_c/(TP_c+FP_c), CR = mean_c TP_c/(TP_c+FN_c),
CF1 = 2*CP*CR/(CP+CR) (ML-GCN's definition),
mean_class_F1 = mean_c of the per-class F1 (the released HSPNet code's "F_C"),
OP = sum TP / sum (TP+FP), OR = sum TP / sum (TP+FN), OF1 = 2*OP*OR/(OP+OR).
Convention for 0/0: the value is 0 (a class that is never predicted has precision 0, a class without positives has
recall 0, and its F1 is 0; this is the released HSPNet code's convention, which sets p_c, r_c, F1_c to 0 whenever
TP_c = 0). The threshold decision is ``prob > threshold`` (strict, as the reference's ``gt(0.5)``).

Top-k (ML-GCN, k = 3): the k highest-scoring labels of each image are the predicted positives (ties broken by label
index, lower first). ML-GCN additionally requires the score of such a label to be >= 0 (a logit, i.e. probability
>= 0.5): pass ``min_score=0.0`` with logits to get exactly that.

Fewer labels than k: :func:`compute_all_metrics` and ``MultiLabelMetricAccumulator`` use the effective
``k_eff = min(k, C)``, so a dataset with C = 1 or 2 labels evaluates with the default k = 3 (with C <= k every label
of every image is predicted: the top-k OR is 100 and OP the label prevalence). The keys keep the REQUESTED k
(``CP_top3``, ...), so the result has the same keys for every dataset and matches ``--top_k``; read them as "the (up
to) k best labels". A direct call of :func:`topk_metrics` with k > C still raises ``ValueError`` (there the caller
asked for exactly k).

Distributed evaluation
----------------------
``MultiLabelMetricAccumulator`` stores the (N, C) scores and targets, a batch at a time, and computes everything at
the end (memory: see its docstring). Under accelerate, give it the batches AFTER ``accelerator.gather_for_metrics``
(or call ``add_from_accelerator``, which gathers): ``gather_for_metrics`` collects every process's batch and drops
the samples that the prepared dataloader duplicated to even out the last batch, so every test image is counted once.
This needs the dataloader to be prepared by the same accelerator.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from hspnet.evaluation.average_precision import (
    _as_array,
    _blocks,
    _check_scores,
    _check_targets,
    _mean_ap,
    _prepare,
    _safe_div,
)

__all__ = [
    "threshold_metrics",
    "topk_metrics",
    "compute_all_metrics",
    "MultiLabelMetricAccumulator",
]


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------
def _check_threshold(threshold: Any, num_labels: Optional[int] = None) -> Any:
    """A finite number in [0, 1]; with ``num_labels``, also one such number per label (a (C,) float64 array)."""
    if num_labels is not None and isinstance(threshold, (list, tuple, np.ndarray)) and np.ndim(threshold) == 1:
        if len(threshold) != num_labels:
            raise ValueError(f"threshold must be one number or one per label ({num_labels}), got {len(threshold)}")
        return np.array([_check_threshold(value) for value in threshold], dtype=np.float64)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a finite number in [0, 1], got {threshold!r} ({type(threshold).__name__})")
    if not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(
            f"threshold must be a finite number in [0, 1] (it is compared with probabilities, also with "
            f"from_logits=True), got {threshold!r}"
        )
    return float(threshold)


def _check_k(k: Any, num_labels: Optional[int] = None) -> int:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r} ({type(k).__name__})")
    if num_labels is not None and k > num_labels:
        raise ValueError(f"k must be an int in [1, {num_labels}] (the number of labels), got {k!r}")
    return int(k)


def _check_min_score(min_score: Any, name: str = "min_score") -> Optional[float]:
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be None or a finite number, got {min_score!r} ({type(min_score).__name__})")
    if not np.isfinite(min_score):
        raise ValueError(f"{name} must be None or a finite number, got {min_score!r}")
    return float(min_score)


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _check_probability_range(scores: np.ndarray, from_logits: bool) -> None:
    if not from_logits and scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(
            "threshold metrics need probabilities in [0, 1]; these scores look like logits: "
            "pass from_logits=True"
        )


def _probabilities(scores: np.ndarray, from_logits: bool) -> np.ndarray:
    if from_logits:
        return _sigmoid(scores)
    _check_probability_range(scores, from_logits)
    return scores


# ---------------------------------------------------------------------------
# decision metrics
# ---------------------------------------------------------------------------
def _decision_counts(pred: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: TP, FP, FN (int64) of boolean predictions ``pred`` against targets ``t``."""
    tp = (pred & t).sum(axis=0, dtype=np.int64)
    predicted = pred.sum(axis=0, dtype=np.int64)
    positives = t.sum(axis=0, dtype=np.int64)
    return tp, predicted - tp, positives - tp


def _metrics_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> Dict[str, float]:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
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


def _decision_metrics(pred: np.ndarray, t: np.ndarray) -> Dict[str, float]:
    return _metrics_from_counts(*_decision_counts(pred, t))


def _per_row_counts(decide, s: np.ndarray, t: np.ndarray) -> Dict[str, float]:
    """The decision metrics of ``decide(score rows) -> boolean rows``, computed over blocks of rows (the counts add
    up exactly), so that no (N, C) temporary beyond the inputs is held at once."""
    n, c = s.shape
    tp, fp, fn = (np.zeros(c, dtype=np.int64) for _ in range(3))
    for a, b in _blocks(n, c, 40):
        counts = _decision_counts(decide(s[a:b]), t[a:b])
        tp += counts[0]
        fp += counts[1]
        fn += counts[2]
    return _metrics_from_counts(tp, fp, fn)


def _above_threshold(from_logits: bool, threshold: float):
    return lambda rows: _probabilities(rows, from_logits) > threshold


def _top_k(k: int, min_score: Optional[float]):
    """Rows of scores -> the boolean mask of each row's ``k`` best labels (ties: lower label index first, exactly as
    a stable descending sort), optionally only those with score >= ``min_score``. O(C) per row (a partition, not a
    sort)."""

    def decide(rows: np.ndarray) -> np.ndarray:
        c = rows.shape[1]
        if k >= c:
            pred = np.ones(rows.shape, dtype=bool)
        else:
            negated = -rows
            kth = np.partition(negated, k - 1, axis=1)[:, k - 1 : k]  # minus the k-th best score of each row
            better = negated < kth
            tied = negated == kth
            room = k - better.sum(axis=1, keepdims=True)  # how many of the tied labels fit, lowest index first
            pred = better | (tied & (np.cumsum(tied, axis=1) <= room))
        if min_score is not None:
            pred &= rows >= min_score
        return pred

    return decide


def threshold_metrics(
    scores: Any, targets: Any, threshold: float = 0.5, *, from_logits: bool = False
) -> Dict[str, float]:
    """CP, CR, CF1, mean_class_F1, OP, OR, OF1 (percent) at ``prob > threshold`` (one threshold, or a sequence of
    one per label: label c is predicted when ``prob[:, c] > threshold[c]``).

    ``scores`` are probabilities, or logits with ``from_logits=True`` (the
    sigmoid is applied first). CF1 is ML-GCN's 2*CP*CR/(CP+CR);
    mean_class_F1 is the mean of per-class F1 (the released HSPNet "F_C").
    0/0 counts as 0.
    """
    s, t = _prepare(scores, targets)
    threshold = _check_threshold(threshold, s.shape[1])
    from_logits = _check_flag(from_logits, "from_logits")
    _check_probability_range(s, from_logits)
    return _per_row_counts(_above_threshold(from_logits, threshold), s, t)


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
    k = _check_k(k, c)
    min_score = _check_min_score(min_score)
    return _per_row_counts(_top_k(k, min_score), s, t)


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
    ``CP CR CF1 mean_class_F1 OP OR OF1`` at ``threshold`` (one, or one per
    label as in :func:`threshold_metrics`), the same with the
    suffix ``_top{k}``, and ``num_samples``.

    ``k`` (an int >= 1) is clamped to the number of labels C: the top-k
    metrics use the ``min(k, C)`` best labels of each image, and the keys
    keep the requested ``k`` in their suffix (see the module docstring).
    """
    s, t = _prepare(scores, targets)
    k = _check_k(k)
    threshold = _check_threshold(threshold, s.shape[1])
    topk_min_score = _check_min_score(topk_min_score, "topk_min_score")
    from_logits = _check_flag(from_logits, "from_logits")
    _check_probability_range(s, from_logits)  # before any work
    out: Dict[str, float] = {
        "mAP": _mean_ap(s, t, "ranked"),
        "mAP_tie_aware": _mean_ap(s, t, "tie_aware"),
    }
    out.update(_per_row_counts(_above_threshold(from_logits, threshold), s, t))
    k_eff = min(int(k), s.shape[1])
    for key, value in _per_row_counts(_top_k(k_eff, topk_min_score), s, t).items():
        out[f"{key}_top{int(k)}"] = value
    out["num_samples"] = int(s.shape[0])
    return out


# ---------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------
_UNSET: Any = object()


class MultiLabelMetricAccumulator:
    """Collect (N, C) scores and targets batch by batch, then compute the metrics.

    ``from_logits`` / ``threshold`` / ``k`` / ``topk_min_score`` are the
    defaults passed to :func:`compute_all_metrics` (``k`` is clamped to
    ``num_labels``, keys keep the requested k); :meth:`compute` can override
    each of them, so one pass over the data serves any threshold or k.

    Memory: the scores (float32, or float64 if the first batch is float64)
    and targets (uint8) of the samples added, and nothing proportional to
    more than that except transiently:

    * ``capacity=N`` (the expected number of samples, e.g.
      ``len(dataloader.dataset)``): one (N, C) buffer pair is allocated at the
      first :meth:`add` and filled in place, so at most N x C is ever held. If
      more than N samples arrive, the extra batches are kept as separate
      blocks (exactly their size) and merged into one array on the first read
      (:attr:`scores`, :attr:`targets`, :meth:`compute`); fewer than N leave
      the buffer partly unused (the views are trimmed).
    * no capacity: every batch is copied into its own block (exactly its
      size, so N x C in total), and the blocks are concatenated into one
      (N, C) array on the first read; during that concatenation 2 x N x C is
      held transiently, afterwards N x C again.

    Reads return views of the stored arrays (no copy once merged); adding
    after a read starts new blocks, merged again at the next read.

    Distributed use (accelerate)::

        acc = MultiLabelMetricAccumulator(num_labels, from_logits=True,
                                          capacity=len(eval_dataloader.dataset))
        for batch in eval_dataloader:          # prepared by `accelerator`
            logits = model(**batch).logits
            acc.add_from_accelerator(accelerator, logits, batch["labels"])
        metrics = acc.compute()                # identical on every process

    ``add_from_accelerator`` calls ``accelerator.gather_for_metrics``, which
    drops the duplicated samples of an uneven last batch (so every process
    ends with the full N samples of the dataset: ``capacity`` is the dataset
    size, not the per-process share). Calling ``add`` directly with
    per-process tensors under multiple processes would give per-process
    metrics instead.
    """

    def __init__(
        self,
        num_labels: int,
        *,
        from_logits: bool = False,
        threshold: float = 0.5,
        k: int = 3,
        topk_min_score: Optional[float] = None,
        capacity: Optional[int] = None,
    ) -> None:
        if isinstance(num_labels, (bool, np.bool_)) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be an int >= 1, got {num_labels!r}")
        if capacity is not None and (
            isinstance(capacity, (bool, np.bool_)) or not isinstance(capacity, (int, np.integer)) or capacity < 0
        ):
            raise ValueError(f"capacity must be None or an int >= 0, got {capacity!r}")
        self.num_labels = int(num_labels)
        self.from_logits = _check_flag(from_logits, "from_logits")
        self.threshold = _check_threshold(threshold)
        self.k = _check_k(k)
        self.topk_min_score = _check_min_score(topk_min_score, "topk_min_score")
        self.expected_samples = None if capacity is None else int(capacity)
        self.reset()

    def reset(self) -> None:
        """Forget every sample (and free the buffers)."""
        # blocks of (scores, targets); only the LAST block may be partly filled (the preallocated one)
        self._blocks: List[Tuple[np.ndarray, np.ndarray]] = []
        self._last_fill = 0  # rows of the last block in use
        self._dtype: Optional[np.dtype] = None
        self._n = 0

    @property
    def num_samples(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        """Rows currently allocated for the scores (and as many for the targets):
        0 before the first :meth:`add`; then the constructor's ``capacity`` (or
        ``num_samples`` if more were added), or ``num_samples`` without one."""
        return sum(block[0].shape[0] for block in self._blocks)

    def _merged(self) -> Tuple[np.ndarray, np.ndarray]:
        if not self._blocks:
            dtype = self._dtype or np.dtype(np.float32)
            return np.zeros((0, self.num_labels), dtype=dtype), np.zeros((0, self.num_labels), dtype=np.uint8)
        if len(self._blocks) > 1:
            filled = [(s, t) for s, t in self._blocks[:-1]]
            last_s, last_t = self._blocks[-1]
            filled.append((last_s[: self._last_fill], last_t[: self._last_fill]))
            merged = (np.concatenate([s for s, _ in filled]), np.concatenate([t for _, t in filled]))
            self._blocks = [merged]
            self._last_fill = merged[0].shape[0]
        s, t = self._blocks[0]
        return s[: self._n], t[: self._n]

    @property
    def scores(self) -> np.ndarray:
        """The (N, C) scores added so far (a view, do not modify)."""
        return self._merged()[0]

    @property
    def targets(self) -> np.ndarray:
        """The (N, C) targets added so far (uint8, a view)."""
        return self._merged()[1]

    def add(self, scores: Any, targets: Any) -> None:
        """Add a batch: scores (B, C) and multi-hot targets (B, C). The data are copied."""
        s = _as_array(scores, "scores")
        if s.ndim != 2 or s.shape[1] != self.num_labels:
            raise ValueError(f"scores must be (B, {self.num_labels}) (num_labels={self.num_labels}), got {s.shape}")
        s = _check_scores(s, allow_empty=True)  # finite; an empty batch is allowed (and ignored)
        t = _check_targets(targets, s.shape)
        if self._dtype is None:
            self._dtype = np.dtype(np.float64 if s.dtype == np.float64 else np.float32)
            if self.expected_samples:
                self._blocks.append(
                    (
                        np.empty((self.expected_samples, self.num_labels), dtype=self._dtype),
                        np.empty((self.expected_samples, self.num_labels), dtype=np.uint8),
                    )
                )
                self._last_fill = 0
        b = s.shape[0]
        if b == 0:
            return
        start = 0
        if self._blocks:  # fill the free rows of the last block first (the preallocated buffer)
            last_s, last_t = self._blocks[-1]
            room = min(last_s.shape[0] - self._last_fill, b)
            if room > 0:
                last_s[self._last_fill : self._last_fill + room] = s[:room]
                last_t[self._last_fill : self._last_fill + room] = t[:room]
                self._last_fill += room
                start = room
        if start < b:  # the rest as a new block of exactly its size
            self._blocks.append((s[start:].astype(self._dtype, copy=True), t[start:].astype(np.uint8, copy=True)))
            self._last_fill = b - start
        self._n += b

    def add_from_accelerator(self, accelerator: Any, logits: Any, targets: Any) -> None:
        """Gather ``(logits, targets)`` across processes with
        ``accelerator.gather_for_metrics`` (dropping the duplicated tail
        samples of an uneven split) and add the result. Both must be tensors
        on ``accelerator.device``; ``logits`` are whatever this accumulator's
        ``from_logits`` says (logits if True, probabilities if False)."""
        gathered_scores, gathered_targets = accelerator.gather_for_metrics((logits, targets))
        self.add(gathered_scores, gathered_targets)

    def compute(
        self,
        *,
        threshold: Optional[float] = None,
        k: Optional[int] = None,
        topk_min_score: Optional[float] = _UNSET,
        from_logits: Optional[bool] = None,
    ) -> Dict[str, float]:
        """:func:`compute_all_metrics` over everything added.

        Each argument left out (``None``; for ``topk_min_score``, not passed)
        takes the constructor's value, so ``acc.compute(threshold=0.4, k=2)``
        needs no second pass over the data. ``k`` is clamped to
        ``num_labels`` (the keys keep the requested k). Raises ``ValueError``
        if no sample was added.
        """
        if self._n == 0:
            raise ValueError(
                "MultiLabelMetricAccumulator.compute: no samples were added (every batch was empty, or add() was "
                "never called); there is nothing to evaluate"
            )
        return compute_all_metrics(
            self.scores,
            self.targets,
            from_logits=self.from_logits if from_logits is None else from_logits,
            threshold=self.threshold if threshold is None else threshold,
            k=self.k if k is None else k,
            topk_min_score=self.topk_min_score if topk_min_score is _UNSET else topk_min_score,
        )
