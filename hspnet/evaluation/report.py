"""The report of an evaluation: per-class AP tables (CSV, Markdown, text), the metrics table and the PNG report
(per-class AP bars, precision-recall curves; matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import numpy as np
import torch

from hspnet.utils.files import write_output
from hspnet.utils.validation import check_positive_int

METRIC_ORDER = ("mAP", "mAP_tie_aware", "CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1")


MAX_BARS = 60
"""At most this many per-class AP bars in ``report.png``: with more classes, the ``MAX_BARS // 2`` best and worst
classes that have positives are drawn (every class is in ``per_class_ap.csv``)."""


def _check_score_matrix(scores: Any, targets: Any, labels: Sequence[str], name: str):
    """``(scores, targets)`` as arrays after checking they are ``(N, C)`` with ``C = len(labels)``, finite scores and
    0/1 targets; ``ValueError`` naming ``name`` otherwise. float32 scores stay float32 (no N x C float64 copy: the
    ranking, hence every AP, is the same)."""
    scores = np.asarray(scores.detach().float().cpu() if isinstance(scores, torch.Tensor) else scores)
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    targets = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets)
    if scores.ndim != 2 or targets.shape != scores.shape or scores.shape[1] != len(labels):
        raise ValueError(f"{name} and targets must both be (N, C) with C = {len(labels)} labels, got "
                         f"{scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1 (multi-hot)")
    return scores, targets


def per_class_table(scores: Any, targets: Any, labels: Sequence[str], groups: Sequence[str] | None = None,
                    zero_shot_scores: Any = None) -> list[dict]:
    """One row per class, in label order: ``label``, ``group``, ``positives`` (count), ``AP`` (ranked, percent),
    ``AP_tie_aware`` and, with ``zero_shot_scores``, ``zero_shot_AP`` and ``AP_gain`` (= AP - zero_shot_AP)."""
    from hspnet.evaluation.average_precision import average_precision_ranked, average_precision_tie_aware

    scores, targets = _check_score_matrix(scores, targets, labels, "scores")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels")
    if zero_shot_scores is not None:
        zero_shot_scores, _ = _check_score_matrix(zero_shot_scores, targets, labels, "zero_shot_scores")
    ap = 100.0 * average_precision_ranked(scores, targets)
    ap_tie = 100.0 * average_precision_tie_aware(scores, targets)
    positives = np.asarray(targets).sum(axis=0).astype(int)
    zs = None if zero_shot_scores is None else 100.0 * average_precision_ranked(zero_shot_scores, targets)
    rows = []
    for i, name in enumerate(labels):
        row = {"label": name, "group": groups[i] if groups is not None else "", "positives": int(positives[i]),
               "AP": float(ap[i]), "AP_tie_aware": float(ap_tie[i])}
        if zs is not None:
            row["zero_shot_AP"] = float(zs[i])
            row["AP_gain"] = float(ap[i] - zs[i])
        rows.append(row)
    return rows


def per_class_table_text(rows: list[dict], fmt: str) -> str:
    """The rows of :func:`per_class_table` as CSV (``fmt="csv"``) or a Markdown table (``fmt="md"``)."""
    if not rows:
        raise ValueError("no per-class rows to write")
    columns = list(rows[0])
    if fmt == "csv":
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
        return buffer.getvalue()
    if fmt == "md":
        return _markdown_rows(rows, columns)
    raise ValueError(f"the per-class table is written as csv or md, not {fmt!r}")


def write_per_class_table(rows: list[dict], path: str) -> str:
    """Write the rows of :func:`per_class_table` as CSV (``.csv``) or a Markdown table (``.md``), atomically."""
    path = os.fspath(path)
    if not path.endswith((".csv", ".md")):
        raise ValueError(f"{path}: the per-class table is written as .csv or .md")
    return write_output(path, per_class_table_text(rows, "csv" if path.endswith(".csv") else "md"))


def _markdown_rows(rows: list[dict], columns: list[str]) -> str:
    aligns = ["---:" if isinstance(rows[0][c], (int, float)) else "---" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def format_metrics_table(metrics: dict, zero_shot: dict | None = None, k: int = 3) -> str:
    """A plain-text table of every metric (percent): HSPNet, and zero-shot CLIP with the difference if given."""
    keys = [key for key in METRIC_ORDER if key in metrics]
    keys += [f"{key}_top{k}" for key in METRIC_ORDER[2:] if f"{key}_top{k}" in metrics]
    keys += [key for key in metrics if key not in keys and key != "num_samples"]
    header = f"{'metric':<22}{'HSPNet':>10}" + (f"{'zero-shot':>12}{'diff':>10}" if zero_shot else "")
    lines = [header, "-" * len(header)]
    for key in keys:
        line = f"{key:<22}{metrics[key]:>10.2f}"
        if zero_shot and key in zero_shot:
            line += f"{zero_shot[key]:>12.2f}{metrics[key] - zero_shot[key]:>+10.2f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def precision_recall_curve(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(precision, recall)`` of ONE class at every distinct score threshold, from the highest score down (tied
    scores form one point, as scikit-learn). Empty arrays when the class has no positive."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(targets).ravel()
    if s.shape != t.shape:
        raise ValueError(f"precision_recall_curve: {s.size} scores for {t.size} targets")
    if not np.isfinite(s).all():
        raise ValueError("precision_recall_curve: the scores hold NaN or infinite values")
    t = t.astype(bool)
    n_pos = int(t.sum())
    if n_pos == 0 or s.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    hits = np.cumsum(t)
    last_of_group = np.r_[s[:-1] != s[1:], True]
    ranks = np.arange(1, s.size + 1)
    return (hits / ranks)[last_of_group], (hits / n_pos)[last_of_group]


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the PNG report needs matplotlib: pip install matplotlib (or pip install 'hspnet[train]'); "
            "pass --no_plot to evaluate without it"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_report(scores: Any, targets: Any, labels: Sequence[str], path: str, zero_shot_scores: Any = None,
                num_curves: int = 3, title: str | None = None, max_bars: int = MAX_BARS) -> str:
    """Write :func:`report_png` to ``path`` (atomically: complete or not at all) and return ``path``."""
    return write_output(os.fspath(path),
                        report_png(scores, targets, labels, zero_shot_scores, num_curves, title, max_bars))


def bar_classes(ap: np.ndarray, positives: np.ndarray, max_bars: int = MAX_BARS) -> tuple[list[int], list[int], str]:
    """Which classes the AP bar chart of :func:`report_png` draws: ``(first, second, note)``.

    With at most ``max_bars`` classes: every class by decreasing AP (``first``), no ``second``, no note. With more:
    only classes with positives (the others have AP 0 by definition), all of them if they fit, else the
    ``max_bars // 2`` best (``first``) and the rest of ``max_bars`` worst (``second``), and a ``note`` that says what
    is drawn. Ties keep the label order."""
    max_bars = check_positive_int(max_bars, "max_bars")
    ap = np.asarray(ap, dtype=np.float64)
    order = np.argsort(-ap, kind="stable")
    if ap.size <= max_bars:
        return [int(i) for i in order], [], ""
    ranked = [int(i) for i in order[np.asarray(positives)[order] > 0]]
    without = ap.size - len(ranked)
    note = f"{ap.size:,} classes; {without:,} without positives (AP 0) not drawn"
    if len(ranked) <= max_bars:
        return ranked, [], note
    best = max(1, max_bars // 2)
    worst = max(0, max_bars - best)
    note = (f"{ap.size:,} classes: the {best} best and {worst} worst of the {len(ranked):,} with positives drawn"
            + (f", {without:,} without positives (AP 0) not drawn" if without else ""))
    return ranked[:best], ranked[len(ranked) - worst:] if worst else [], note


def report_png(scores: Any, targets: Any, labels: Sequence[str], zero_shot_scores: Any = None, num_curves: int = 3,
               title: str | None = None, max_bars: int = MAX_BARS) -> bytes:
    """A PNG (bytes): per-class AP bars (sorted, with the zero-shot AP as markers) on top, precision-recall curves of
    the ``num_curves`` best and worst classes (by AP, among classes with positives; zero-shot curves dashed) below.
    At most ``max_bars`` bars: with more classes, the best and worst classes with positives (see
    :func:`bar_classes`; the chart's title says so), so that the report stays readable and fast for 10,000 labels.
    Needs matplotlib (imported lazily, Agg backend)."""
    from hspnet.evaluation.average_precision import average_precision_ranked, mean_average_precision

    num_curves = check_positive_int(num_curves, "num_curves")
    max_bars = check_positive_int(max_bars, "max_bars")
    labels = list(labels)
    scores, targets = _check_score_matrix(scores, targets, labels, "scores")
    if zero_shot_scores is not None:
        zero_shot_scores, _ = _check_score_matrix(zero_shot_scores, targets, labels, "zero_shot_scores")
    plt = _import_pyplot()
    ap = 100.0 * average_precision_ranked(scores, targets)
    zs_ap = None if zero_shot_scores is None else 100.0 * average_precision_ranked(zero_shot_scores, targets)
    positives = np.asarray(targets).sum(axis=0)
    order = np.argsort(-ap, kind="stable")
    with_pos = [int(i) for i in order[positives[order] > 0]]
    k = max(1, min(num_curves, len(with_pos) // 2 or 1))
    best, worst = with_pos[:k], with_pos[::-1][:k]

    first, second, note = bar_classes(ap, positives, max_bars)
    drawn = first + second
    x = np.concatenate([np.arange(len(first)), len(first) + 1 + np.arange(len(second))]).astype(float)
    n = len(drawn) + (1 if second else 0)
    width = min(30.0, max(10.0, 0.28 * n))
    fig = plt.figure(figsize=(width, 10), dpi=100)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.1, 1.0], hspace=0.55, wspace=0.2)
    bars = fig.add_subplot(grid[0, :])
    bars.bar(x, ap[drawn], color="tab:blue", label="HSPNet")
    if zs_ap is not None and drawn:
        bars.scatter(x, zs_ap[drawn], color="tab:orange", marker="_", s=200, linewidths=2.5, label="zero-shot CLIP",
                     zorder=3)
    if second:
        bars.axvline(len(first), color="gray", linestyle=":", linewidth=1)
        bars.text(len(first), 50, "...", ha="center", va="center", fontsize=14, color="gray")
    bars.set_xticks(x)
    bars.set_xticklabels([labels[i] for i in drawn], rotation=75, ha="right",
                         fontsize=max(4, min(9, 600 // max(n, 1))))
    bars.set_ylabel("AP (%)")
    bars.set_ylim(0, 100)
    bars.set_xlim(-0.6, max(n, 1) - 0.4)
    summary = f"mAP {mean_average_precision(scores, targets):.2f}"
    if zero_shot_scores is not None:
        summary += f" (zero-shot CLIP {mean_average_precision(zero_shot_scores, targets):.2f})"
    bars.set_title(f"{title + ': ' if title else ''}per-class AP, {summary}, {targets.shape[0]} images"
                   + (f"\n({note}; every class is in per_class_ap.csv)" if note else ""))
    bars.grid(axis="y", alpha=0.3)
    if drawn:
        bars.legend(loc="upper right")

    for column, (name, classes) in enumerate((("best", best), ("worst", worst))):
        axis = fig.add_subplot(grid[1, column])
        colors = plt.get_cmap("tab10")
        for j, c in enumerate(classes):
            precision, recall = precision_recall_curve(scores[:, c], targets[:, c])
            axis.step(recall, precision, where="post", color=colors(j), label=f"{labels[c]} (AP {ap[c]:.1f})")
            if zero_shot_scores is not None:
                precision, recall = precision_recall_curve(np.asarray(zero_shot_scores)[:, c], targets[:, c])
                axis.step(recall, precision, where="post", color=colors(j), linestyle="--", alpha=0.7,
                          label=f"  zero-shot (AP {zs_ap[c]:.1f})")
        axis.set_xlim(0, 1.01)
        axis.set_ylim(0, 1.02)
        axis.set_xlabel("recall")
        axis.set_ylabel("precision")
        axis.set_title(f"precision-recall: {len(classes)} {name} class{'es' if len(classes) > 1 else ''}")
        axis.grid(alpha=0.3)
        if classes:
            axis.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _per_class_text(rows: list[dict], limit: int = 40) -> str:
    columns = [c for c in ("label", "group", "positives", "AP", "zero_shot_AP", "AP_gain") if c in rows[0]]
    ranked = sorted(rows, key=lambda r: -r["AP"])
    shown = ranked if len(ranked) <= limit else ranked[: limit // 2] + [None] + ranked[-(limit // 2):]
    widths = {c: max(len(c), *(len(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])) for r in rows))
              for c in columns}
    lines = ["per-class AP (%), best first:", "  ".join(f"{c:<{widths[c]}}" for c in columns)]
    for row in shown:
        if row is None:
            lines.append(f"... ({len(rows) - limit} more, see per_class_ap.csv) ...")
            continue
        lines.append("  ".join(
            f"{row[c]:>{widths[c]}.2f}" if isinstance(row[c], float) else
            (f"{row[c]:>{widths[c]}}" if isinstance(row[c], int) else f"{row[c]:<{widths[c]}}") for c in columns))
    return "\n".join(lines)
