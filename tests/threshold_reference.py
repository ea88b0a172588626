"""A second, simple implementation of the per-label threshold rule of docs/thresholds.md (exact fractions, every
candidate tried), for tests/test_thresholds.py and tests/test_calibrate.py."""

from fractions import Fraction


def brute_f1(scores, targets, threshold):
    """F1 of `score > threshold` as an exact fraction (0 when nothing is predicted and nothing is positive)."""
    predicted = [s > threshold for s in scores]
    tp = sum(p and bool(t) for p, t in zip(predicted, targets))
    denominator = sum(predicted) + sum(bool(t) for t in targets)
    return Fraction(2 * tp, denominator) if denominator else Fraction(0)


def brute_candidates(scores):
    """The midpoints between consecutive values of {distinct scores} + {0, 1}; with a score of exactly 1 also 1
    itself (`score > 1` predicts nothing)."""
    values = sorted(set(float(s) for s in scores) | {0.0, 1.0})
    candidates = [(a + b) / 2 for a, b in zip(values, values[1:])]
    if 1.0 in set(float(s) for s in scores):
        candidates.append(1.0)
    return candidates


def brute_best(scores, targets, default=0.5):
    """`(threshold, F1 in percent)`: the candidate of highest F1; ties: closest to `default` (exact distance), then
    the larger."""
    scored = [(brute_f1(scores, targets, c), c) for c in brute_candidates(scores)]
    best = max(f1 for f1, _ in scored)
    tied = [c for f1, c in scored if f1 == best]
    distance = {c: abs(Fraction(c) - Fraction(default)) for c in tied}
    closest = min(distance.values())
    chosen = max(c for c in tied if distance[c] == closest)
    return chosen, 100 * float(best)
