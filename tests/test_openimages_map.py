"""The Open Images protocol (hspnet/evaluation/openimages.py): per-class AP over verified pairs only, averaged over the
classes with a verified positive, on cases worked out by hand; equal to the project's AP on the verified rows alone
and to scikit-learn's on them; unknown pairs never change it."""

import numpy as np
import pytest

from hspnet.evaluation.average_precision import average_precision_ranked, mean_average_precision
from hspnet.evaluation.openimages import openimages_average_precision, openimages_map, openimages_metrics

U = -1  # unknown

# 5 images x 4 classes; scores decrease down the rows in every column
SCORES = np.array([[0.9, 0.9, 0.9, 0.9],
                   [0.8, 0.8, 0.8, 0.8],
                   [0.7, 0.7, 0.7, 0.7],
                   [0.6, 0.6, 0.6, 0.6],
                   [0.5, 0.5, 0.5, 0.5]])
TARGETS = np.array([[1, U, 0, 1],
                    [U, U, 0, U],
                    [0, U, 0, U],
                    [1, U, 0, U],
                    [0, U, 0, 1]])
# class 0: verified rows 0 (+), 2 (-), 3 (+), 4 (-): positives at verified ranks 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6
#          (counting the unknown row 1 as a negative would give (1/1 + 2/4) / 2 = 3/4)
# class 1: nothing verified -> left out; class 2: verified negatives only -> left out
# class 3: two verified positives, no verified negative -> AP = 1
# mAP = (5/6 + 1) / 2 = 11/12


def test_hand_worked_case():
    ap = openimages_average_precision(SCORES, TARGETS)
    assert ap[0] == pytest.approx(5 / 6) and ap[3] == pytest.approx(1.0)
    assert np.isnan(ap[1]) and np.isnan(ap[2])
    assert openimages_map(SCORES, TARGETS) == pytest.approx(100 * 11 / 12)
    # the usual mAP, unknown read as negative and every class counted, is another number
    assumed = mean_average_precision(SCORES, (TARGETS == 1).astype(int))
    assert assumed == pytest.approx(100 * (3 / 4 + 0 + 0 + (1 + 2 / 5) / 2) / 4)


def test_unknown_pairs_are_out_of_the_ranking():
    scores = np.array([[0.9], [0.5], [0.1]])
    assert openimages_map(scores, np.array([[U], [1], [0]])) == pytest.approx(100.0)  # an unknown image on top
    assert openimages_map(scores, np.array([[0], [1], [U]])) == pytest.approx(50.0)  # a negative on top: 1/2
    rng = np.random.default_rng(0)
    targets = rng.choice([1, 0, U], size=(40, 6), p=[0.3, 0.3, 0.4])
    scores = rng.normal(size=(40, 6))
    moved = scores.copy()
    moved[targets == U] = rng.normal(size=int((targets == U).sum())) * 100  # any score for the unknown pairs
    assert openimages_map(moved, targets) == openimages_map(scores, targets)


def test_ties_ranked_and_tie_aware():
    scores = np.array([[0.5], [0.5], [0.5]])
    targets = np.array([[1], [0], [U]])
    assert openimages_map(scores, targets) == pytest.approx(100.0)  # ranked: stable order, the positive first
    assert openimages_map(scores, targets, definition="tie_aware") == pytest.approx(50.0)  # one group: 1 of 2


def test_equal_to_the_project_ap_and_to_scikit_learn_on_the_verified_rows():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    targets = rng.choice([1, 0, U], size=(60, 9), p=[0.25, 0.35, 0.4])
    targets[:, 7] = U  # a class without any verified pair
    targets[:, 8] = np.where(targets[:, 8] == 1, 0, targets[:, 8])  # a class without a verified positive
    scores = np.round(rng.random((60, 9)), 1)  # ties
    ranked = openimages_average_precision(scores, targets)
    tie_aware = openimages_average_precision(scores, targets, definition="tie_aware")
    for c in range(7):
        keep = targets[:, c] != U
        column = targets[keep, c][:, None]
        assert ranked[c] == pytest.approx(average_precision_ranked(scores[keep, c][:, None], column)[0])
        assert tie_aware[c] == pytest.approx(average_precision_score(column[:, 0], scores[keep, c]))
    assert np.isnan(ranked[7:]).all()
    assert openimages_map(scores, targets) == pytest.approx(100 * ranked[:7].mean())


def test_metrics_report_the_protocol_and_the_counts():
    result = openimages_metrics(SCORES, TARGETS, ["a", "b", "c", "d"])
    assert result["mAP"] == pytest.approx(100 * 11 / 12) and result["mAP_tie_aware"] == pytest.approx(100 * 11 / 12)
    assert result["num_classes"] == 4 and result["num_classes_evaluated"] == 2
    assert result["num_classes_without_positive"] == 2
    assert (result["num_positive_pairs"], result["num_negative_pairs"], result["num_unknown_pairs"]) == (4, 7, 9)
    assert result["per_class_AP"] == pytest.approx({"a": 100 * 5 / 6, "d": 100.0})
    assert "verified pairs only" in result["protocol"]


@pytest.mark.parametrize("targets, match", [
    (np.array([[2], [0]]), r"targets\[0, 0\] = 2"),
    (np.array([[1, 0]]), "shape"),
    (np.array([[0], [U]]), "no class has a verified positive"),
])
def test_bad_targets_are_one_value_error(targets, match):
    with pytest.raises(ValueError, match=match):
        openimages_map(np.array([[0.1], [0.2]]), targets)


def test_models_are_selected_by_the_verified_pairs_map_where_there_is_one():
    """Training selects (regular vs EMA, and across epochs) by `mAP_openimages` on a split with verified negatives:
    the mAP that counts unknown pairs as negatives would pick the other model here."""
    from hspnet.evaluation.loop import selection_map
    from hspnet.training.ema import select_source

    regular, ema = {"mAP": 50.0, "mAP_openimages": 40.0}, {"mAP": 60.0, "mAP_openimages": 30.0}
    assert selection_map(regular) == 40.0 and selection_map({"mAP": 12.5}) == 12.5
    assert select_source({"regular": regular, "ema": ema}) == "regular"
    assert select_source({"regular": {"mAP": 50.0}, "ema": {"mAP": 60.0}}) == "ema"
