"""The metrics of `hspnet.evaluation` (docs/method.md, section 6), worked out by hand or against scikit-learn: both
mAP definitions (6.1, 6.2), the threshold and top-k metrics (6.3, 6.4), what an evaluation reports (6.6), the
streaming accumulator (also across 2 processes) and the `evaluate` module of `metrics/hspnet_multilabel`. What the
metrics refuse is tests/test_metric_inputs.py."""

import ast
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from hspnet.evaluation import metrics as M
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
from tests.helpers import REPO


def sklearn_ap(scores, targets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        return average_precision_score(np.asarray(targets), np.asarray(scores), average=None)


def random_case(n=300, c=12, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    if ties:
        scores = np.round(scores, 1)
    targets = (rng.random((n, c)) < 0.2).astype(np.int64)
    targets[:, 0] = 0  # a class without positives
    targets[0, 1:] = 1  # every other class has at least one
    return scores, targets


def test_metrics_module_has_no_sklearn_runtime_dependency():
    tree = ast.parse(Path(M.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert "sklearn" not in names


# ----------------------------------------------------------------------------------------------------------------------
# mAP (docs/method.md, sections 6.1 and 6.2)
# ----------------------------------------------------------------------------------------------------------------------


def test_continuous_scores_both_definitions_equal_sklearn():
    scores, targets = random_case()
    ranked = average_precision_ranked(scores, targets)
    tie_aware = average_precision_tie_aware(scores, targets)
    ref = sklearn_ap(scores, targets)
    np.testing.assert_allclose(ranked, ref, atol=1e-12)
    np.testing.assert_allclose(tie_aware, ref, atol=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(100 * ref.mean())
    # invariant to the sigmoid
    probs = 1 / (1 + np.exp(-scores))
    assert mean_average_precision(probs, targets) == pytest.approx(mean_average_precision(scores, targets))


def test_tied_scores_tie_aware_equals_sklearn():
    scores, targets = random_case(ties=True, seed=3)
    np.testing.assert_allclose(average_precision_tie_aware(scores, targets), sklearn_ap(scores, targets), atol=1e-12)
    # and it does not depend on the order of the samples, unlike the ranked one
    perm = np.random.default_rng(1).permutation(len(scores))
    np.testing.assert_allclose(
        average_precision_tie_aware(scores[perm], targets[perm]), average_precision_tie_aware(scores, targets)
    )


def test_tie_case_by_hand():
    # one column per class, 4 images; images 1 and 2 tie at 0.5
    scores = np.array(
        [
            [0.9, 0.9, 0.5],
            [0.5, 0.5, 0.5],
            [0.5, 0.5, 0.5],
            [0.1, 0.1, 0.5],
        ]
    )
    targets = np.array(
        [
            [1, 1, 1],
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
        ]
    )
    # class A (positives 0, 1). ranked, stable (tied image 1 before image 2):
    #   ranks: pos (1/1), pos (2/2), neg, neg -> AP = (1 + 1) / 2 = 1
    # tie-aware: group {0.9}: P = 1/1, dR = 1/2; group {0.5, 0.5}: TP = 2 of 3 -> P = 2/3, dR = 1/2
    #   -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # class B (positives 0, 2). ranked: pos (1/1), neg, pos (2/3), neg -> (1 + 2/3) / 2 = 5/6
    #   tie-aware: same groups as A -> 5/6
    # class C (all scores tied, positives 0 and 3). ranked: pos (1/1), neg, neg, pos (2/4)
    #   -> (1 + 1/2) / 2 = 3/4 ; tie-aware: one group, P = 2/4 -> 1/2 (the prevalence)
    ranked = average_precision_ranked(scores, targets)
    tie_aware = average_precision_tie_aware(scores, targets)
    np.testing.assert_allclose(ranked, [1.0, 5 / 6, 3 / 4])
    np.testing.assert_allclose(tie_aware, [5 / 6, 5 / 6, 1 / 2])
    np.testing.assert_allclose(tie_aware, sklearn_ap(scores, targets))
    assert mean_average_precision(scores, targets) == pytest.approx(100 * (1 + 5 / 6 + 3 / 4) / 3)
    assert mean_average_precision(scores, targets, definition="tie_aware") == pytest.approx(
        100 * (5 / 6 + 5 / 6 + 1 / 2) / 3
    )
    # swapping the tied images swaps the ranked AP of A and B but not the tie-aware ones
    swapped = [0, 2, 1, 3]
    np.testing.assert_allclose(average_precision_ranked(scores[swapped], targets[swapped])[:2], [5 / 6, 1.0])
    np.testing.assert_allclose(average_precision_tie_aware(scores[swapped], targets[swapped]), tie_aware)


def test_class_without_positives_counts_as_zero():
    scores = np.array([[0.9, 0.8], [0.1, 0.7]])
    targets = np.array([[1, 0], [0, 0]])
    np.testing.assert_allclose(average_precision_ranked(scores, targets), [1.0, 0.0])
    np.testing.assert_allclose(average_precision_tie_aware(scores, targets), [1.0, 0.0])
    np.testing.assert_allclose(sklearn_ap(scores, targets), [1.0, 0.0])
    assert mean_average_precision(scores, targets) == pytest.approx(50.0)
    assert mean_average_precision(scores, targets, "tie_aware") == pytest.approx(50.0)


# ----------------------------------------------------------------------------------------------------------------------
# threshold and top-k metrics (docs/method.md, sections 6.3 and 6.4)
# ----------------------------------------------------------------------------------------------------------------------


PROBS = np.array(
    [
        [0.9, 0.6, 0.2],
        [0.4, 0.5, 0.7],
        [0.8, 0.3, 0.1],
    ]
)


TARGETS = np.array(
    [
        [1, 1, 0],
        [1, 0, 0],
        [0, 1, 0],
    ]
)


def test_threshold_metrics_by_hand():
    # predictions (prob > 0.5, 0.5 itself is NOT positive):
    #   [[1,1,0],[0,0,1],[1,0,0]]
    # class 0: TP 1 (img 0), FP 1 (img 2), FN 1 (img 1) -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 1 (img 0), FP 0, FN 1 (img 2)          -> P 1,   R 1/2, F1 2/3
    # class 2: TP 0, FP 1 (img 1), no positives          -> P 0,   R 0/0 = 0, F1 0
    got = threshold_metrics(PROBS, TARGETS)
    cp, cr = (1 / 2 + 1 + 0) / 3, (1 / 2 + 1 / 2 + 0) / 3
    assert got["CP"] == pytest.approx(100 * cp)
    assert got["CR"] == pytest.approx(100 * cr)
    assert got["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))  # = 40
    assert got["CF1"] == pytest.approx(40.0)
    assert got["mean_class_F1"] == pytest.approx(100 * (1 / 2 + 2 / 3 + 0) / 3)
    # overall: TP 2, predicted 4, positives 4
    assert got["OP"] == pytest.approx(50.0)
    assert got["OR"] == pytest.approx(50.0)
    assert got["OF1"] == pytest.approx(50.0)


def test_threshold_metrics_from_logits():
    logits = np.log(PROBS / (1 - PROBS))
    assert threshold_metrics(logits, TARGETS, from_logits=True) == pytest.approx(threshold_metrics(PROBS, TARGETS))
    with pytest.raises(ValueError, match="from_logits"):
        threshold_metrics(logits, TARGETS)


def test_threshold_edges_by_hand():
    # threshold 1.0: prob > 1 never holds, nothing is predicted: every precision and recall is 0 (0/0 counts 0)
    top = threshold_metrics(PROBS, TARGETS, threshold=1.0)
    assert top == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "mean_class_F1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}
    # threshold 0.0: every score > 0 is predicted: recall 100, OP = 4 positives / 9 decisions
    bottom = threshold_metrics(PROBS, TARGETS, threshold=0.0)
    assert bottom["OR"] == 100.0 and bottom["OP"] == pytest.approx(100 * 4 / 9)
    # with logits the threshold still applies to probabilities: logit 0 <=> probability 0.5
    logits = np.log(PROBS / (1 - PROBS))
    assert threshold_metrics(logits, TARGETS, 0.5, from_logits=True) == pytest.approx(threshold_metrics(PROBS, TARGETS))


def test_zero_over_zero_is_zero():
    got = threshold_metrics(np.zeros((2, 2)), np.zeros((2, 2)))
    assert all(v == 0.0 for v in got.values())


def test_topk_metrics_by_hand():
    # top-2 per image: img 0 -> {0, 1}; img 1 -> {2, 1}; img 2 -> {0, 1}
    # class 0: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
    # class 1: TP 2 (imgs 0, 2), FP 1 (img 1), FN 0 -> P 2/3, R 1, F1 4/5
    # class 2: TP 0, FP 1 -> 0, 0, 0
    got = topk_metrics(PROBS, TARGETS, k=2)
    cp, cr = (1 / 2 + 2 / 3) / 3, (1 / 2 + 1) / 3
    assert got["CP"] == pytest.approx(100 * cp)
    assert got["CR"] == pytest.approx(100 * cr)
    assert got["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert got["mean_class_F1"] == pytest.approx(100 * (1 / 2 + 4 / 5) / 3)
    # overall: TP 3 of 6 predicted, 4 positives
    assert got["OP"] == pytest.approx(50.0)
    assert got["OR"] == pytest.approx(75.0)
    assert got["OF1"] == pytest.approx(100 * 2 * 0.5 * 0.75 / 1.25)
    # ML-GCN's extra condition (score >= min_score): here it leaves exactly the prob > 0.55 decisions
    assert topk_metrics(PROBS, TARGETS, k=2, min_score=0.55) == pytest.approx(
        threshold_metrics(PROBS, TARGETS, threshold=0.55)
    )
    # ties broken by label index: k=1 on a constant row picks label 0
    tie = topk_metrics([[0.5, 0.5, 0.5]], [[1, 0, 0]], k=1)
    assert tie["OP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="k must be"):
        topk_metrics(PROBS, TARGETS, k=4)


def test_compute_all_metrics_keys():
    out = compute_all_metrics(PROBS, TARGETS)
    expected = {"mAP", "mAP_tie_aware", "num_samples"}
    for key in ("CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1"):
        expected |= {key, f"{key}_top3"}
    assert set(out) == expected
    assert out["num_samples"] == 3
    assert out["mAP"] == pytest.approx(mean_average_precision(PROBS, TARGETS))
    assert out["CF1"] == pytest.approx(40.0)


# ----------------------------------------------------------------------------------------------------------------------
# fewer labels than k: k is clamped to C, keys keep the requested k
# ----------------------------------------------------------------------------------------------------------------------


PROBS2 = np.array([[0.9, 0.6], [0.4, 0.7], [0.8, 0.3]])


TARGETS2 = np.array([[1, 1], [1, 0], [0, 1]])


def test_two_labels_default_k_by_hand():
    # top-3 of 2 labels = both labels of every image are predicted
    # class 0: TP 2 (imgs 0, 1), FP 1 (img 2), FN 0 -> P 2/3, R 1, F1 4/5; class 1: the same (TP 0, 2; FP 1)
    out = compute_all_metrics(PROBS2, TARGETS2)
    assert out["CP_top3"] == pytest.approx(100 * 2 / 3)
    assert out["CR_top3"] == pytest.approx(100.0)
    assert out["CF1_top3"] == pytest.approx(80.0)
    assert out["mean_class_F1_top3"] == pytest.approx(80.0)
    assert out["OP_top3"] == pytest.approx(100 * 4 / 6)
    assert out["OR_top3"] == pytest.approx(100.0)
    assert out["OF1_top3"] == pytest.approx(80.0)
    # mAP: class 0 ranks pos, neg, pos -> (1 + 2/3) / 2 = 5/6; class 1 ranks neg, pos, pos -> (1/2 + 2/3) / 2 = 7/12
    assert out["mAP"] == pytest.approx(100 * (5 / 6 + 7 / 12) / 2)
    # threshold 0.5: [[1,1],[0,1],[1,0]] -> each class TP 1, FP 1, FN 1
    for key in ("CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1"):
        assert out[key] == pytest.approx(50.0)
    assert not any(key.endswith("_top2") for key in out)  # the suffix is the requested k
    # the effective k is 2: the same values as an explicit k=2
    top2 = compute_all_metrics(PROBS2, TARGETS2, k=2)
    assert {key.replace("_top2", "_top3"): v for key, v in top2.items()} == pytest.approx(out)
    # the accumulator (default k=3) works end to end
    acc = MultiLabelMetricAccumulator(2)
    acc.add(PROBS2[:2], TARGETS2[:2])
    acc.add(PROBS2[2:], TARGETS2[2:])
    assert acc.compute() == pytest.approx(out)
    # a direct topk_metrics call with k > C still raises; k < 1 raises everywhere
    with pytest.raises(ValueError, match="k must be"):
        topk_metrics(PROBS2, TARGETS2, k=3)
    with pytest.raises(ValueError, match="k must be"):
        compute_all_metrics(PROBS2, TARGETS2, k=0)


def test_one_label_by_hand():
    probs = np.array([[0.9], [0.2], [0.6]])
    targets = np.array([[1], [0], [0]])
    logits = np.log(probs / (1 - probs))
    acc = MultiLabelMetricAccumulator(1, from_logits=True)
    acc.add(torch.tensor(logits, dtype=torch.float32), torch.tensor(targets))
    out = acc.compute()
    assert out["mAP"] == pytest.approx(100.0)  # the positive ranks first
    # threshold: predictions [1, 0, 1] -> TP 1, FP 1, FN 0 -> P 1/2, R 1
    assert out["CP"] == pytest.approx(50.0) and out["CR"] == pytest.approx(100.0)
    assert out["CF1"] == pytest.approx(100 * 2 / 3) and out["OF1"] == pytest.approx(100 * 2 / 3)
    # top-3 of 1 label: every image predicts it -> TP 1, FP 2 -> P 1/3, R 1, F1 1/2
    assert out["CP_top3"] == pytest.approx(100 / 3) and out["OP_top3"] == pytest.approx(100 / 3)
    assert out["CR_top3"] == pytest.approx(100.0) and out["OR_top3"] == pytest.approx(100.0)
    assert out["CF1_top3"] == pytest.approx(50.0) and out["mean_class_F1_top3"] == pytest.approx(50.0)
    assert out["num_samples"] == 3


def test_evaluate_module_with_two_labels():
    import evaluate

    metric = evaluate.load(str(REPO / "metrics" / "hspnet_multilabel"))
    got = metric.compute(predictions=PROBS2.tolist(), references=TARGETS2.tolist())
    assert got == pytest.approx(compute_all_metrics(PROBS2, TARGETS2))
    assert got["OP_top3"] == pytest.approx(100 * 4 / 6)


# ----------------------------------------------------------------------------------------------------------------------
# streaming and distributed
# ----------------------------------------------------------------------------------------------------------------------


def test_accumulator_equals_one_shot():
    scores, targets = random_case(n=203, c=7, seed=5, ties=True)
    scores = scores.astype(np.float32)
    acc = MultiLabelMetricAccumulator(7, from_logits=True)
    start = 0
    for size in [1, 5, 17, 64, 100, 16]:
        chunk = slice(start, start + size)
        # torch tensors and numpy arrays both accepted
        if size % 2:
            acc.add(torch.from_numpy(scores[chunk]), torch.from_numpy(targets[chunk]))
        else:
            acc.add(scores[chunk], targets[chunk])
        start += size
    assert start == 203 and acc.num_samples == 203
    assert acc.scores.shape == (203, 7) and acc.scores.dtype == np.float32
    assert acc.targets.dtype == np.uint8
    assert acc.compute() == compute_all_metrics(scores, targets, from_logits=True)
    acc.reset()
    assert acc.num_samples == 0
    with pytest.raises(ValueError):
        acc.add(np.zeros((2, 6)), np.zeros((2, 6)))


def test_accumulator_capacity_preallocates_exactly():
    scores, targets = random_case(n=203, c=7, seed=5, ties=True)
    scores = scores.astype(np.float32)
    expected = compute_all_metrics(scores, targets, from_logits=True)
    acc = MultiLabelMetricAccumulator(7, from_logits=True, capacity=203)
    assert acc.capacity == 0  # nothing allocated before the first batch (its dtype decides)
    start = 0
    for size in [1, 5, 17, 64, 100, 16]:
        acc.add(torch.from_numpy(scores[start : start + size]), torch.from_numpy(targets[start : start + size]))
        start += size
        assert acc.capacity == 203  # one (N, C) buffer, filled in place
        assert len(acc._blocks) == 1 and acc._blocks[0][0].shape == (203, 7) and acc._blocks[0][1].shape == (203, 7)
    # the views are the whole buffer (no copy) and the results are unchanged
    assert acc.scores.shape == (203, 7) and np.shares_memory(acc.scores, acc._blocks[0][0])
    assert acc.scores.nbytes == 203 * 7 * 4 and acc.targets.nbytes == 203 * 7
    assert acc.compute() == expected

    # more samples than the capacity: still exact, and the same metrics
    small = MultiLabelMetricAccumulator(7, from_logits=True, capacity=100)
    for i in range(0, 203, 64):
        small.add(scores[i : i + 64], targets[i : i + 64])
    assert small.num_samples == 203
    assert small.compute() == expected
    assert small.capacity == 203 and len(small._blocks) == 1  # merged into one (N, C) array at the read
    # fewer samples than the capacity: the views are trimmed
    big = MultiLabelMetricAccumulator(7, from_logits=True, capacity=500)
    big.add(scores, targets)
    assert big.scores.shape == (203, 7) and big.capacity == 500
    assert big.compute() == expected


def test_accumulator_without_capacity_holds_exactly_n():
    scores, targets = random_case(n=203, c=7, seed=5)
    acc = MultiLabelMetricAccumulator(7, from_logits=True)
    for i in range(0, 203, 50):
        acc.add(scores[i : i + 50], targets[i : i + 50])
        assert acc.capacity == acc.num_samples  # blocks of exactly the batch size, no doubling
    assert acc.scores.dtype == np.float64 and acc.scores.shape == (203, 7)
    assert acc.capacity == 203 and len(acc._blocks) == 1
    assert acc.compute() == compute_all_metrics(scores, targets, from_logits=True)
    # adding after a read still works
    acc.add(scores[:3], targets[:3])
    assert acc.num_samples == 206 and acc.capacity == 206
    np.testing.assert_array_equal(acc.scores[203:], scores[:3])
    np.testing.assert_array_equal(acc.scores[:203], scores)
    # the added data are copied
    batch = scores[:2].copy()
    acc.add(batch, targets[:2])
    batch[:] = 99.0
    np.testing.assert_array_equal(acc.scores[206:], scores[:2])
    # an empty accumulator
    empty = MultiLabelMetricAccumulator(4)
    assert empty.scores.shape == (0, 4) and empty.targets.shape == (0, 4) and empty.capacity == 0


def test_accumulator_compute_overrides():
    scores, targets = random_case(n=50, c=5, seed=4)
    acc = MultiLabelMetricAccumulator(5, from_logits=True, threshold=0.3, k=2)
    acc.add(scores, targets)
    assert acc.compute() == compute_all_metrics(scores, targets, from_logits=True, threshold=0.3, k=2)
    assert acc.compute(threshold=0.6, k=1) == compute_all_metrics(
        scores, targets, from_logits=True, threshold=0.6, k=1
    )
    assert acc.compute(topk_min_score=0.0) == compute_all_metrics(
        scores, targets, from_logits=True, threshold=0.3, k=2, topk_min_score=0.0
    )
    withmin = MultiLabelMetricAccumulator(5, from_logits=True, topk_min_score=0.0)
    withmin.add(scores, targets)
    assert withmin.compute(topk_min_score=None) == compute_all_metrics(scores, targets, from_logits=True)
    probs = 1 / (1 + np.exp(-scores))
    on_probs = MultiLabelMetricAccumulator(5)
    on_probs.add(probs, targets)
    assert on_probs.compute(from_logits=False) == pytest.approx(compute_all_metrics(scores, targets, from_logits=True))
    with pytest.raises(ValueError, match="capacity"):
        MultiLabelMetricAccumulator(5, capacity=-1)


def test_accumulator_single_process_accelerate():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState

    scores, targets = random_case(n=11, c=5, seed=2)
    try:
        accelerator = Accelerator(cpu=True)
        ds = torch.utils.data.TensorDataset(torch.tensor(scores, dtype=torch.float32), torch.tensor(targets))
        loader = accelerator.prepare(torch.utils.data.DataLoader(ds, batch_size=4))
        acc = MultiLabelMetricAccumulator(5, from_logits=True, capacity=len(loader.dataset))
        for logits, labels in loader:
            acc.add_from_accelerator(accelerator, logits, labels)
        assert acc.num_samples == 11 and acc.capacity == 11  # the prepared loader's dataset is the full one
        assert acc.compute() == compute_all_metrics(scores.astype(np.float32), targets, from_logits=True)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()


def test_two_process_gloo_gather_drops_duplicates(two_process_runs):
    """Step 1 of the session's 2-process launch (`two_process_runs`, gloo on CPU): 7 samples over 2 processes with
    batch 2 (accelerate pads the last batch with duplicates); the accumulator's gather keeps each sample once."""
    res = two_process_runs["reports"]["0"]
    assert res is not None, two_process_runs["result"].stderr[-4000:]
    res = res["gather"]
    assert res["world"] == 2
    assert res["metrics"]["num_samples"] == 7
    # every sample exactly once (gather interleaves processes, so compare as sets of rows)
    assert sorted(map(tuple, res["scores"])) == sorted(map(tuple, res["all_scores"]))
    one_shot = compute_all_metrics(np.array(res["all_scores"], dtype=np.float32), res["all_targets"], from_logits=True)
    assert res["metrics"] == pytest.approx(one_shot)


# ----------------------------------------------------------------------------------------------------------------------
# evaluate module
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_module_loads_offline_and_matches():
    import evaluate

    metric = evaluate.load(str(REPO / "metrics" / "hspnet_multilabel"))
    scores, targets = random_case(n=40, c=6, seed=9, ties=True)
    probs = 1 / (1 + np.exp(-scores))
    got = metric.compute(predictions=probs.tolist(), references=targets.tolist())
    assert got == pytest.approx(compute_all_metrics(probs, targets))
    got = metric.compute(predictions=scores.tolist(), references=targets.tolist(), from_logits=True, k=2)
    assert got == pytest.approx(compute_all_metrics(scores, targets, from_logits=True, k=2))
    # batched use
    for i in range(0, 40, 16):
        metric.add_batch(predictions=probs[i : i + 16].tolist(), references=targets[i : i + 16].tolist())
    assert metric.compute()["mAP"] == pytest.approx(mean_average_precision(probs, targets))
    assert not math.isnan(got["mAP_tie_aware"])
