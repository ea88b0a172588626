"""Per-label decision thresholds: the F1-optimal rule and its fallback (`hspnet.evaluation.thresholds`), the F1
measures that compare thresholds, and a model's stored thresholds (`hspnet.models.thresholds`: reading
`config.label_thresholds`, filtering the output of transformers' image-classification pipeline).

Expected values are worked out by hand in the comments, or computed by a second, brute-force implementation written
here from the rule of docs/thresholds.md (every candidate threshold tried, F1 compared as exact fractions), never by
the code under test."""


import numpy as np
import pytest
import torch

from hspnet.evaluation import thresholds as rule
from hspnet.evaluation.metrics import threshold_metrics
from hspnet.models import thresholds as stored
from tests.helpers import one_line
from tests.threshold_reference import brute_best, brute_f1

# ----------------------------------------------------------------------------------------------------------------------
# A second implementation: every candidate threshold tried
# ----------------------------------------------------------------------------------------------------------------------


def random_case(rng):
    """Scores on a coarse grid (many ties, exact 0 and 1 included), targets with empty and full columns."""
    n, c = int(rng.integers(1, 25)), int(rng.integers(1, 6))
    digits = int(rng.choice([1, 2, 3]))
    scores = np.round(rng.random((n, c)), digits)
    scores[rng.random((n, c)) < 0.08] = 0.0
    scores[rng.random((n, c)) < 0.05] = 1.0
    targets = (rng.random((n, c)) < rng.uniform(0.05, 0.7)).astype(int)
    for column in range(c):
        kind = rng.random()
        if kind < 0.15:
            targets[:, column] = 0  # no positive
        elif kind < 0.2:
            targets[:, column] = 1  # no negative
    return scores, targets


# ----------------------------------------------------------------------------------------------------------------------
# The rule
# ----------------------------------------------------------------------------------------------------------------------


def test_f1_optimal_threshold_by_hand():
    # scores 0.9 0.8 0.3 0.2, positives at 0.9 and 0.3 (2 positives). Candidates and F1 = 2 TP / (predicted + 2):
    # 0.95 predicts nothing: 0; 0.85: 2/3; 0.55: 2/4; 0.25: 4/5 (the best); 0.1: 4/6
    thresholds, f1 = rule.f1_optimal_thresholds(np.array([[0.9], [0.8], [0.3], [0.2]]), np.array([[1], [0], [1], [0]]))
    assert thresholds.tolist() == [0.25] and f1 == pytest.approx([80.0])


def test_ties_go_to_the_candidate_closest_to_the_default_then_the_larger():
    # positive, negative, negative, positive at 0.9 0.6 0.4 0.2: 0.75 gives 2/(1+2), 0.1 gives 4/(4+2): equal F1 2/3;
    # 0.75 is closer to 0.5
    s = np.array([[0.9], [0.6], [0.4], [0.2]])
    t = np.array([[1], [0], [0], [1]])
    assert rule.f1_optimal_thresholds(s, t)[0].tolist() == [0.75]
    # ... and with default 0.2 the other one (0.1 is at 0.1 from it, 0.75 at 0.55)
    assert rule.f1_optimal_thresholds(s, t, default=0.2)[0].tolist() == [0.1]
    # equally close: 0.8 0.7 0.6 0.3 0.2 with positives at 0.8 and 0.3: 0.75 (2/3) and 0.25 (4/6) are both 0.25 from
    # 0.5: the larger wins
    s = np.array([[0.8], [0.7], [0.6], [0.3], [0.2]])
    t = np.array([[1], [0], [0], [1], [0]])
    thresholds, f1 = rule.f1_optimal_thresholds(s, t)
    assert thresholds.tolist() == [0.75] and f1 == pytest.approx([200 / 3])


def test_tied_scores_share_one_decision_and_zero_scores_cannot_be_predicted():
    # three images at 0.5 (one positive) cannot be split: the candidates are 0.75 (nothing), 0.25 (the three) and
    # not 0.5 itself; the positive at 0.0 can never be predicted (score > t >= 0)
    s = np.array([[0.5], [0.5], [0.5], [0.0]])
    t = np.array([[0], [1], [0], [1]])
    thresholds, f1 = rule.f1_optimal_thresholds(s, t)
    # 0.25: TP 1, predicted 3, positives 2 -> 2/5
    assert thresholds.tolist() == [0.25] and f1 == pytest.approx([40.0])
    assert rule.per_label_f1(s, t, thresholds).tolist() == pytest.approx([40.0])


def test_all_negative_label_and_all_zero_scores():
    # no positive: every candidate has F1 0 (0/0 counts 0), so the tie rule keeps the one closest to 0.5: the
    # candidates of 0.2 0.6 are 0.8, 0.4, 0.1 -> 0.4
    thresholds, f1 = rule.f1_optimal_thresholds(np.array([[0.2], [0.6]]), np.array([[0], [0]]))
    assert thresholds.tolist() == [0.4] and f1.tolist() == [0.0]
    # only zero scores: one candidate, (0 + 1) / 2, which predicts nothing
    thresholds, f1 = rule.f1_optimal_thresholds(np.zeros((3, 1)), np.array([[1], [0], [1]]))
    assert thresholds.tolist() == [0.5] and f1.tolist() == [0.0]


def test_adjacent_floats_get_a_threshold_between_them():
    # two consecutive doubles: their midpoint rounds onto one of them; the threshold must still separate them
    low = 0.3
    high = float(np.nextafter(low, 1.0))
    thresholds, f1 = rule.f1_optimal_thresholds(np.array([[low], [high]]), np.array([[0], [1]]))
    assert low <= thresholds[0] < high and f1.tolist() == [100.0]
    assert rule.per_label_f1(np.array([[low], [high]]), np.array([[0], [1]]), thresholds).tolist() == [100.0]


def test_f1_optimal_thresholds_equal_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        scores, targets = random_case(rng)
        default = float(rng.choice([0.5, 0.5, 0.3, 0.75]))
        thresholds, f1 = rule.f1_optimal_thresholds(scores, targets, default=default)
        for c in range(scores.shape[1]):
            expected, expected_f1 = brute_best(scores[:, c].tolist(), targets[:, c].tolist(), default)
            assert thresholds[c] == expected, (scores[:, c], targets[:, c], default)
            assert f1[c] == pytest.approx(expected_f1, abs=1e-12)
            # the F1 reported is the F1 of the decisions at the chosen threshold
            assert rule.per_label_f1(scores[:, [c]], targets[:, [c]], thresholds[c])[0] == pytest.approx(expected_f1)
            checked += 1
    assert checked > 500


def test_micro_f1_optimal_threshold_equals_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(100):
        scores, targets = random_case(rng)
        threshold, f1 = rule.micro_f1_optimal_threshold(scores, targets)
        expected, expected_f1 = brute_best(scores.ravel().tolist(), targets.ravel().tolist())
        assert threshold == expected and f1 == pytest.approx(expected_f1, abs=1e-12)
        assert rule.micro_f1(scores, targets, threshold) == pytest.approx(expected_f1, abs=1e-12)


def test_calibration_falls_back_to_the_global_threshold_below_min_positives():
    rng = np.random.default_rng(2)
    for _ in range(60):
        scores, targets = random_case(rng)
        if not targets.any():
            continue
        min_positives = int(rng.integers(1, 5))
        calibration = rule.calibrate_thresholds(scores, targets, min_positives=min_positives)
        glob, glob_f1 = brute_best(scores.ravel().tolist(), targets.ravel().tolist())
        assert calibration.global_threshold == glob and calibration.global_micro_f1 == pytest.approx(glob_f1)
        for c in range(scores.shape[1]):
            positives = int(targets[:, c].sum())
            own, _ = brute_best(scores[:, c].tolist(), targets[:, c].tolist())
            if positives >= min_positives:
                assert (calibration.thresholds[c], calibration.sources[c]) == (own, "calibrated")
            else:
                assert (calibration.thresholds[c], calibration.sources[c]) == (glob, "fallback")
            assert calibration.positives[c] == positives
            at = calibration.thresholds[c]
            assert calibration.f1_threshold[c] == pytest.approx(100 * float(brute_f1(scores[:, c], targets[:, c], at)))
            assert calibration.f1_default[c] == pytest.approx(100 * float(brute_f1(scores[:, c], targets[:, c], 0.5)))


def test_calibration_by_hand_with_a_fallback_label():
    # label a: 5 positives -> its own threshold; label b: 1 positive -> the global one
    # a: scores 0.9 0.8 0.7 0.6 0.45 0.3 0.2, positives the first five: best is (0.45 + 0.3) / 2 (all five, F1 1)
    # b: scores 0.1 0.2 0.3 0.4 0.5 0.55 0.05, one positive at 0.55
    s = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.45, 0.5], [0.3, 0.55], [0.2, 0.05]])
    t = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [0, 1], [0, 0]])
    # pooled (14 scores, 6 positives), best micro F1 by hand: predicting scores >= 0.45 (a's five positives, b's
    # 0.5 and 0.55: TP 6, predicted 7) gives 12/13; the threshold is the midpoint of 0.45 and the next lower 0.4
    calibration = rule.calibrate_thresholds(s, t, min_positives=5)
    own, pooled = (0.45 + 0.3) / 2, (0.45 + 0.4) / 2  # the midpoints, as computed in floats
    assert calibration.thresholds == [own, pooled] and calibration.sources == ["calibrated", "fallback"]
    assert calibration.global_threshold == pooled and calibration.global_micro_f1 == pytest.approx(1200 / 13)
    assert calibration.positives == [5, 1]
    # F1 at 0.5: a predicts 4 of its 5 positives -> 8/9; b predicts 0.55 only -> 1
    assert calibration.f1_default == pytest.approx([800 / 9, 100.0])
    # at the thresholds: a 1; b at ~0.425 predicts 0.5 and 0.55 -> 2/3
    assert calibration.f1_threshold == pytest.approx([100.0, 200 / 3])
    rows = calibration.rows(["a", "b"])
    assert rows[1] == {"label": "b", "threshold": pooled, "source": "fallback", "positives": 1,
                       "F1_at_default": 100.0, "F1_at_threshold": pytest.approx(200 / 3)}
    with pytest.raises(ValueError, match="1 label names for 2 thresholds"):
        calibration.rows(["a"])


def test_f1_measures_by_hand():
    s = np.array([[0.9, 0.6, 0.1], [0.2, 0.7, 0.8], [0.3, 0.1, 0.2], [0.6, 0.4, 0.0]])
    t = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    # at 0.5: predicted {0,1}, {1,2}, {}, {0}
    # per image F1: 2*1/(2+1) = 2/3; 2*2/(2+2) = 1; neither: 0; 2*1/(1+2) = 2/3 -> mean (2/3 + 1 + 0 + 2/3)/4
    assert rule.sample_f1(s, t, 0.5) == pytest.approx(100 * (2 / 3 + 1 + 0 + 2 / 3) / 4)
    # per label: a TP 2 pred 2 pos 2 -> 1; b TP 1 pred 2 pos 2 -> 1/2; c TP 1 pred 1 pos 1 -> 1
    assert rule.per_label_f1(s, t, 0.5) == pytest.approx([100, 50, 100])
    assert rule.macro_f1(s, t, 0.5) == (pytest.approx(250 / 3), 3)
    # micro: TP 4, predicted 5, positives 5 -> 8/10
    assert rule.micro_f1(s, t, 0.5) == pytest.approx(80.0)
    # per-label thresholds 0.95, 0.05, 0.5: a predicts nothing (F1 0); b predicts all four (TP 2, 2*2/(4+2)); c as
    # before
    per_label = [0.95, 0.05, 0.5]
    assert rule.per_label_f1(s, t, per_label) == pytest.approx([0, 200 / 3, 100])
    # images: 0: predicted {b}, true {a} -> 0; 1: {b, c} vs {b, c} -> 1; 2: {b} vs {} -> 0; 3: {b} vs {a, b} -> 2/3
    assert rule.sample_f1(s, t, per_label) == pytest.approx(100 * (0 + 1 + 0 + 2 / 3) / 4)
    report = rule.threshold_report(s, t, per_label)
    assert report == {"macro_F1": pytest.approx((0 + 200 / 3 + 100) / 3), "macro_F1_labels": 3,
                      "sample_F1": pytest.approx(100 * (5 / 3) / 4),
                      "micro_F1": pytest.approx(100 * 2 * 3 / (5 + 5))}  # TP 3, predicted 5, positives 5
    # a label without a positive is left out of the macro average (its F1 is 0 at any threshold)
    t2 = t.copy()
    t2[:, 2] = 0
    assert rule.macro_f1(s, t2, 0.5) == (pytest.approx(150 / 2), 2)
    assert rule.macro_f1(s, np.zeros_like(t), 0.5) == (0.0, 0)


def test_threshold_metrics_accept_one_threshold_per_label():
    # the package's metrics at per-label thresholds equal the metrics of the same decisions made by hand
    rng = np.random.default_rng(3)
    s, t = rng.random((20, 4)), (rng.random((20, 4)) < 0.4).astype(int)
    per_label = [0.2, 0.5, 0.7, 0.9]
    got = threshold_metrics(s, t, per_label)
    pred = s > np.array(per_label)
    tp = (pred & (t == 1)).sum(0)
    precision = np.divide(tp, pred.sum(0), out=np.zeros(4), where=pred.sum(0) > 0)
    recall = np.divide(tp, t.sum(0), out=np.zeros(4), where=t.sum(0) > 0)
    assert got["CP"] == pytest.approx(100 * precision.mean()) and got["CR"] == pytest.approx(100 * recall.mean())
    assert got["OP"] == pytest.approx(100 * tp.sum() / pred.sum())
    with pytest.raises(ValueError, match=r"one per label \(4\), got 3"):
        threshold_metrics(s, t, per_label[:3])
    with pytest.raises(ValueError, match="finite number in"):
        threshold_metrics(s, t, [0.2, 0.5, 1.5, 0.9])


def test_rule_inputs_are_checked():
    s, t = np.array([[0.2, 0.7]]), np.array([[1, 0]])
    with pytest.raises(ValueError, match="look like logits"):
        rule.f1_optimal_thresholds(np.array([[2.0, -1.0]]), t)
    with pytest.raises(ValueError, match="default must be"):
        rule.f1_optimal_thresholds(s, t, default=1.5)
    for bad in (0, 1.5, True, "5"):
        with pytest.raises(ValueError, match="min_positives must be an integer >= 1"):
            rule.calibrate_thresholds(s, t, min_positives=bad)
    with pytest.raises(ValueError, match="no positive label") as caught:
        rule.calibrate_thresholds(s, np.zeros_like(t))
    one_line(caught)
    with pytest.raises(ValueError, match=r"one per label \(2\)"):
        rule.sample_f1(s, t, [0.5])
    with pytest.raises(ValueError, match="finite numbers in"):
        rule.micro_f1(s, t, [0.5, float("nan")])


# ----------------------------------------------------------------------------------------------------------------------
# A model's stored thresholds
# ----------------------------------------------------------------------------------------------------------------------


def _config(thresholds, labels=("a", "b", "c")):
    return {"id2label": {str(i): name for i, name in enumerate(labels)}, "label_thresholds": thresholds}


def test_stored_and_effective_thresholds():
    assert stored.stored_label_thresholds(_config(None)) is None
    assert stored.stored_label_thresholds(_config([None, None, None])) is None
    assert stored.label_thresholds(_config(None)) == [0.5, 0.5, 0.5]
    assert stored.label_thresholds(_config(None), default=0.3) == [0.3, 0.3, 0.3]
    assert stored.stored_label_thresholds(_config([0.2, None, 1])) == [0.2, None, 1.0]
    assert stored.label_thresholds(_config([0.2, None, 1])) == [0.2, 0.5, 1.0]
    assert stored.describe_thresholds(_config(None)) == "0.5 (no calibrated thresholds)"
    assert "for 2 of 3 labels, 0.5 for the others" in stored.describe_thresholds(_config([0.2, None, 1]))
    assert "for all 3 labels" in stored.describe_thresholds(_config([0.2, 0.4, 1]))
    for bad, message in (([0.2, 0.3], "has 2 entries but the model has 3 labels"), ([0.2, 1.5, 0.1], r"\[1\]"),
                         ([0.2, "x", 0.1], r"\[1\]"), (0.5, "must be a list")):
        with pytest.raises(ValueError, match=message) as caught:
            stored.label_thresholds(_config(bad))
        one_line(caught)


def test_model_config_thresholds_survive_save_and_load(make_model, tmp_path):
    from hspnet import HSPNetForImageClassification

    model = make_model()
    values = [0.1, None, 0.35, 0.9, None, 0.5]
    model.config.label_thresholds = values
    model.save_pretrained(tmp_path / "m")
    loaded = HSPNetForImageClassification.from_pretrained(tmp_path / "m")
    assert loaded.config.label_thresholds == values
    assert stored.label_thresholds(loaded) == [0.1, 0.5, 0.35, 0.9, 0.5, 0.5]


def test_apply_label_thresholds_on_the_pipelines_output(make_model, tmp_path):
    from transformers import pipeline

    from hspnet.models.loading import scores_from_logits

    model = make_model().eval()
    rng = np.random.default_rng(0)
    images = [_image(rng) for _ in range(4)]
    # independently: the model's own probabilities
    with torch.no_grad():
        pixels = model.image_processor(images=images, return_tensors="pt")["pixel_values"]
        probabilities = scores_from_logits(model, model(pixel_values=pixels).logits).double()
    # thresholds between each label's lowest and highest score over the images, so that some images keep a label
    # and others do not; label 2 has none (0.5 applies)
    middle = ((probabilities.min(0).values + probabilities.max(0).values) / 2).tolist()
    model.config.label_thresholds = middle[:2] + [None] + middle[3:]
    effective = middle[:2] + [0.5] + middle[3:]
    model.save_pretrained(tmp_path / "m")
    model.image_processor.save_pretrained(tmp_path / "m")
    classifier = pipeline("image-classification", model=str(tmp_path / "m"))
    outputs = classifier(images, top_k=classifier.model.config.num_labels)
    kept = stored.apply_label_thresholds(outputs, classifier.model)
    names = [model.config.id2label[i] for i in range(6)]
    assert len(kept) == 4
    for row, items, everything in zip(probabilities.tolist(), kept, outputs):
        expected = [names[i] for i in range(6) if row[i] > effective[i]]
        assert [item["label"] for item in items] == [item["label"] for item in everything if item["label"] in expected]
        for item in items:
            assert item["score"] == pytest.approx(row[names.index(item["label"])], abs=1e-6)
    assert 0 < sum(len(items) for items in kept) < 4 * 6
    # one image: one list
    assert stored.apply_label_thresholds(classifier(images[0], top_k=6), classifier.model) == kept[0]
    # a model without thresholds keeps the labels above 0.5
    plain = {"id2label": dict(enumerate(names))}
    assert stored.apply_label_thresholds(outputs[0], plain) == [i for i in outputs[0] if i["score"] > 0.5]
    with pytest.raises(ValueError, match="'zebra', which the model does not have"):
        stored.apply_label_thresholds([{"label": "zebra", "score": 0.9}], classifier.model)
    with pytest.raises(ValueError, match="expected the pipeline's"):
        stored.apply_label_thresholds([{"label": "cat"}], classifier.model)


def _image(rng):
    from PIL import Image

    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
