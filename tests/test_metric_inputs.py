"""What the metrics refuse: bad input raises ONE ValueError naming the argument.

Expected behaviour, from the definitions (docs/method.md, section 6): mAP ranks scores, so a NaN score has no rank;
an empty input has no mean (a 0 would look like a terrible result); the decision threshold is applied to
probabilities, so it lives in [0, 1] (6.3); top-k predicts k >= 1 labels (6.4).
"""

import numpy as np
import pytest
import torch

from hspnet.evaluation.average_precision import (
    average_precision_ranked,
    average_precision_tie_aware,
    mean_average_precision,
)
from hspnet.evaluation.metrics import (
    MultiLabelMetricAccumulator,
    compute_all_metrics,
    threshold_metrics,
    topk_metrics,
)
from tests.helpers import REPO, one_line

NAN, INF = float("nan"), float("inf")


PROBS = np.array([[0.9, 0.6, 0.2], [0.4, 0.5, 0.7], [0.8, 0.3, 0.1]])


TARGETS = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0]])


FUNCTIONS = {
    "mean_average_precision": mean_average_precision,
    "average_precision_ranked": average_precision_ranked,
    "average_precision_tie_aware": average_precision_tie_aware,
    "threshold_metrics": threshold_metrics,
    "topk_metrics": lambda s, t: topk_metrics(s, t, k=2),
    "compute_all_metrics": compute_all_metrics,
}


def test_map_input_validation():
    with pytest.raises(ValueError, match="definition"):
        mean_average_precision([[0.1]], [[1]], definition="sklearn")
    with pytest.raises(ValueError, match="0, 1"):
        mean_average_precision([[0.1, 0.2]], [[1, -1]])
    with pytest.raises(ValueError, match="shape"):
        mean_average_precision([[0.1, 0.2]], [[1]])
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision([[float("nan"), 0.2]], [[1, 0]])
    # torch input, bf16 included
    s = torch.tensor([[2.0, -1.0], [0.5, 1.0]], dtype=torch.bfloat16)
    assert mean_average_precision(s, torch.tensor([[1, 0], [0, 1]])) == pytest.approx(100.0)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_scores_are_named_with_their_position(function, bad):
    scores = PROBS.copy()
    scores[2, 1] = bad
    with pytest.raises(ValueError) as excinfo:
        FUNCTIONS[function](scores, TARGETS)
    assert one_line(excinfo) == f"scores contain NaN or infinite values: scores[2, 1] = {bad}"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_empty_input_is_refused_not_scored_zero(function, shape):
    with pytest.raises(ValueError) as excinfo:
        FUNCTIONS[function](np.zeros(shape), np.zeros(shape))
    assert one_line(excinfo).startswith(f"scores is empty (shape {shape}): nothing to evaluate")


@pytest.mark.parametrize(
    "scores, fragment",
    [
        ([], "scores is empty (shape (0,))"),
        ([0.1, 0.2, 0.3], "scores must be a 2-d (N, C) array, got shape (3,)"),
        ([[0.1, 0.2], [0.3]], "scores must be a rectangular (N, C) array of numbers"),
        ([["0.1", "0.2"]], "scores must be a rectangular (N, C) array of numbers, got dtype <U3"),
        (np.array([[1 + 1j, 0.5]]), "got dtype complex128"),
    ],
)
def test_malformed_scores_name_the_argument(scores, fragment):
    with pytest.raises(ValueError) as excinfo:
        mean_average_precision(scores, [[1, 0]])
    assert fragment in one_line(excinfo)


@pytest.mark.parametrize(
    "targets, fragment",
    [
        (TARGETS[:2], "targets must have the shape of the scores (3, 3), got (2, 3)"),
        (np.where(TARGETS == 1, 2, 0), "targets must be multi-hot with values in {0, 1}: targets[0, 0] = 2"),
        (np.where(TARGETS == 1, 0.5, 0.0), "targets[0, 0] = 0.5"),
        (np.where(TARGETS == 1, NAN, 0.0), "targets[0, 0] = nan"),
        (-TARGETS, "targets[0, 0] = -1"),
        (TARGETS.astype(str), "targets must be a rectangular (N, C) array of numbers"),
    ],
)
def test_bad_targets_name_the_argument(targets, fragment):
    for function in FUNCTIONS.values():
        with pytest.raises(ValueError) as excinfo:
            function(PROBS, targets)
        assert fragment in one_line(excinfo)


@pytest.mark.parametrize("threshold", [NAN, INF, -0.1, 1.5, "0.5", True, None])
def test_threshold_must_be_a_probability(threshold):
    for call in (
        lambda: threshold_metrics(PROBS, TARGETS, threshold=threshold),
        lambda: compute_all_metrics(PROBS, TARGETS, threshold=threshold),
        lambda: MultiLabelMetricAccumulator(3, threshold=threshold),
    ):
        with pytest.raises(ValueError) as excinfo:
            call()
        assert one_line(excinfo).startswith("threshold must be a finite number in [0, 1]")


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "3", None])
def test_k_must_be_a_positive_int(k):
    for call in (
        lambda: topk_metrics(PROBS, TARGETS, k=k),
        lambda: compute_all_metrics(PROBS, TARGETS, k=k),
        lambda: MultiLabelMetricAccumulator(3, k=k),
    ):
        with pytest.raises(ValueError) as excinfo:
            call()
        assert one_line(excinfo).startswith("k must be an int")


def test_topk_k_above_num_labels_is_refused_but_compute_all_clamps():
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\] \(the number of labels\), got 4"):
        topk_metrics(PROBS, TARGETS, k=4)
    assert compute_all_metrics(PROBS, TARGETS, k=4)["OR_top4"] == 100.0  # min(k, C) = 3: every label predicted
    # numpy ints are ints; top-1 = labels 0, 2, 0 and only the first is positive: OP = 1/3
    assert topk_metrics(PROBS, TARGETS, k=np.int64(1))["OP"] == pytest.approx(100 / 3)


@pytest.mark.parametrize("min_score", [NAN, INF, "0", True])
def test_min_score_must_be_finite(min_score):
    with pytest.raises(ValueError, match="min_score must be None or a finite number"):
        topk_metrics(PROBS, TARGETS, k=1, min_score=min_score)
    with pytest.raises(ValueError, match="topk_min_score must be None or a finite number"):
        compute_all_metrics(PROBS, TARGETS, topk_min_score=min_score)


@pytest.mark.parametrize("from_logits", ["False", 0, None])
def test_from_logits_must_be_a_bool(from_logits):
    # the string "False" is truthy: it would silently apply a sigmoid to probabilities
    for call in (
        lambda: threshold_metrics(PROBS, TARGETS, from_logits=from_logits),
        lambda: compute_all_metrics(PROBS, TARGETS, from_logits=from_logits),
        lambda: MultiLabelMetricAccumulator(3, from_logits=from_logits),
    ):
        with pytest.raises(ValueError, match="from_logits must be True or False"):
            call()


def test_definition_is_named():
    with pytest.raises(ValueError, match=r"definition must be one of \('ranked', 'tie_aware'\), got 'sklearn'"):
        mean_average_precision(PROBS, TARGETS, definition="sklearn")


# ----------------------------------------------------------------------------------------------------------------------
# the accumulator reports a bad batch when it is added, not at the end
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_labels", [0, -2, True, 2.5, "3", None])
def test_accumulator_num_labels(num_labels):
    with pytest.raises(ValueError, match="num_labels must be an int >= 1"):
        MultiLabelMetricAccumulator(num_labels)


@pytest.mark.parametrize("capacity", [-1, 2.5, True, "10"])
def test_accumulator_capacity(capacity):
    with pytest.raises(ValueError, match="capacity must be None or an int >= 0"):
        MultiLabelMetricAccumulator(3, capacity=capacity)


def test_accumulator_checks_every_batch():
    acc = MultiLabelMetricAccumulator(3)
    acc.add(PROBS[:1], TARGETS[:1])
    bad = torch.tensor(PROBS[1:])
    bad[1, 2] = NAN
    with pytest.raises(ValueError, match=r"scores contain NaN or infinite values: scores\[1, 2\] = nan"):
        acc.add(bad, TARGETS[1:])
    with pytest.raises(ValueError, match=r"scores must be \(B, 3\) \(num_labels=3\), got \(2, 2\)"):
        acc.add(PROBS[1:, :2], TARGETS[1:, :2])
    with pytest.raises(ValueError, match=r"targets must be multi-hot .* targets\[0, 1\] = 2"):
        acc.add(PROBS[1:], [[0, 2, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"targets must have the shape of the scores \(2, 3\)"):
        acc.add(PROBS[1:], TARGETS[:1])
    assert acc.num_samples == 1  # the refused batches were not stored
    acc.add(np.zeros((0, 3)), np.zeros((0, 3)))  # an empty batch (e.g. an uneven gather) is fine
    acc.add(PROBS[1:], TARGETS[1:])
    assert acc.compute() == pytest.approx(compute_all_metrics(PROBS, TARGETS))
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        acc.compute(threshold=2.0)


def test_accumulator_without_samples_refuses_to_compute():
    acc = MultiLabelMetricAccumulator(3)
    with pytest.raises(ValueError, match="no samples were added"):
        acc.compute()
    acc.add(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="no samples were added"):
        acc.compute()


# ----------------------------------------------------------------------------------------------------------------------
# the evaluate module names its own arguments
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_module_names_its_own_arguments():
    import evaluate

    metric = evaluate.load(str(REPO / "metrics" / "hspnet_multilabel"))
    with pytest.raises(ValueError, match=r"predictions contain NaN or infinite values: predictions\[0, 0\] = nan"):
        metric.compute(predictions=[[NAN, 0.2]], references=[[1, 0]])
    with pytest.raises(ValueError, match=r"references must be multi-hot .* references\[0, 0\] = 2"):
        metric.compute(predictions=[[0.9, 0.2]], references=[[2, 0]])
    with pytest.raises(ValueError, match="threshold must be a finite number in"):
        metric.compute(predictions=[[0.9, 0.2]], references=[[1, 0]], threshold=1.5)
    with pytest.raises(ValueError, match="predictions is empty"):
        metric.compute(predictions=[], references=[])
