"""Everything around the model at C = 10,000 labels, with the tiny random CLIP (`hspnet.utils.tiny_clip`).

`test_everything_at_10000_labels` goes through the public entry points, as a user would, at C = 10,000:

1. a custom image folder (`metadata.csv`, labels separated by `;`, a label-names file of 10,000 names) with the
   automatic hierarchy (CLIP text embeddings of the names, spherical k-means, the default round(sqrt(C)) = 100
   groups), checked against a hierarchy recomputed from scratch (deterministic);
2. `hspnet.training.train` for two steps on the tiny CLIP;
3. `hspnet.apps.evaluate.main` (metrics, 10,000-row per-class tables, a report.png with a capped bar chart), checked
   against `hspnet.evaluation.metrics.compute_all_metrics` on logits computed directly;
4. `save_pretrained` / `from_pretrained` (same logits), and the folder size;
5. `hspnet.apps.predict.main --top_k` (JSONL and table) and `pipeline("image-classification")(image, top_k=...)`,
   checked against the top-k of the model's own logits.

Each stage's time and the process's peak RSS are printed (`pytest -s`). The small tests below check the pieces
that were rewritten for large C (k-means, agglomerative clustering, blocked metrics, capped bar chart, batched label
selection) against the straightforward implementations they replace.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import resource
import shutil
import time

import numpy as np
import pytest
import torch

C = 10_000
TRAIN_IMAGES, TEST_IMAGES = 16, 8
TOP_K = 5


def _label_names(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct lower-case names of 3-6 letters; every 97th has a space inside (``"ab cde"``)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 6)))
        if len(names) % 97 == 0:
            word = word[:2] + " " + word[2:]
        if word not in seen:
            seen.add(word)
            names.append(word)
    return names


class _Clock:
    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.stages: list[tuple[str, float]] = []

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages.append((stage, now - self.last))
        self.last = now

    def report(self) -> str:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        lines = [f"  {stage:<44}{seconds:7.1f} s" for stage, seconds in self.stages]
        lines.append(f"  {'total':<44}{time.perf_counter() - self.start:7.1f} s, peak RSS {peak:,.0f} MB")
        return "\n".join(lines)


def _write_image_folder(root: str, names: list[str]) -> dict:
    """Tiny PNGs, ``labels.txt`` (the 10,000 names) and ``metadata.csv`` (names separated by ``;``, a split column)."""
    from PIL import Image

    rng = random.Random(1)
    os.makedirs(os.path.join(root, "img"))
    with open(os.path.join(root, "labels.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(names) + "\n")
    rows = {}
    for i in range(TRAIN_IMAGES + TEST_IMAGES):
        file_name = f"img/{i:03d}.png"
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, file_name))
        # labels from the whole range of indices (first, last and some with a space in their name)
        labels = rng.sample(range(C), rng.randint(1, 3)) + ([C - 1] if i == 0 else []) + ([97] if i == 1 else [])
        rows[file_name] = (sorted(set(labels)), "test" if i >= TRAIN_IMAGES else "train")
    with open(os.path.join(root, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "labels", "split"])
        for file_name, (labels, split) in rows.items():
            writer.writerow([file_name, ";".join(names[j] for j in labels), split])
    return rows


def _logits(model, processor, paths: list[str]) -> torch.Tensor:
    """The model's logits for ``paths`` in ONE batch, images read as evaluate / predict read them."""
    from hspnet.utils.images import open_image

    pixels = processor(images=[open_image(path) for path in paths], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return model(pixel_values=pixels).logits.float()


def _top_k(logits_row: torch.Tensor, k: int) -> list[int]:
    """The ``k`` best labels, ties by lower index (a stable descending sort)."""
    return torch.sort(logits_row, descending=True, stable=True).indices[:k].tolist()


@pytest.fixture
def workdir(tmp_path):
    """``tmp_path``, removed after the test: it holds two ~420 MB model folders (pytest keeps the last 3 runs)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_everything_at_10000_labels(workdir, capsys):
    from transformers import AutoImageProcessor, pipeline

    import hspnet  # noqa: F401  (registers HSPNet with the Auto classes, for the pipeline)
    from hspnet import HSPNetForImageClassification
    from hspnet.apps import predict as prediction
    from hspnet.cli import evaluate as evaluate_command, predict as predict_command
    from hspnet.data import get_hierarchy, load_image_folder
    from hspnet.data.clustering import cluster_label_embeddings, default_num_groups, label_text_embeddings
    from hspnet.evaluation import report
    from hspnet.evaluation.average_precision import average_precision_ranked
    from hspnet.evaluation.metrics import compute_all_metrics
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from hspnet.utils.tiny_clip import save_tiny_clip

    clock = _Clock()
    # the tiny CLIP made smaller still (width 16, one layer): the text tower runs over 10,000 prompts many times
    clip_dir = save_tiny_clip(workdir / "clip", seed=0, hidden_size=16, num_hidden_layers=1, projection_dim=16)
    data = str(workdir / "data")
    names = _label_names(C)
    rows = _write_image_folder(data, names)
    cache = str(workdir / "cache")
    options = {"label_names": os.path.join(data, "labels.txt"), "clip_model": clip_dir, "validation_fraction": 0.25}
    clock("setup (tiny CLIP, 24 images)")

    # 1. the dataset and its automatic hierarchy -----------------------------------------------------------------------
    dataset = load_image_folder(data, cache_dir=cache, **options)
    hierarchy = get_hierarchy(dataset)
    clock("dataset + automatic hierarchy")
    groups = default_num_groups(C)
    assert groups == 100
    assert hierarchy.labels == names and hierarchy.num_groups == groups and len(hierarchy.label_to_group) == C
    members = hierarchy.members()
    assert sum(len(labels) for labels in members.values()) == C  # every label in exactly one group
    assert all(labels and group in labels for group, labels in members.items())  # named after a member
    assert {split: len(part) for split, part in dataset.items()} == {"train": 12, "validation": 4, "test": 8}
    for split in ("train", "validation", "test"):
        for row in dataset[split].select_columns(["image_id", "labels"]):
            assert row["labels"] == rows[row["image_id"]][0]
    # deterministic: recomputed from scratch (no cache), the same groups
    embeddings = label_text_embeddings(names, clip_dir)
    assert embeddings.shape[0] == C
    assert cluster_label_embeddings(names, embeddings) == hierarchy
    clock("hierarchy recomputed from scratch (same)")

    # 2. training ------------------------------------------------------------------------------------------------------
    output = str(workdir / "model")
    results = train(TrainingConfig(
        clip_model=clip_dir, dataset="folder", dataset_root=data, dataset_options=options, cache_dir=cache,
        output_dir=output, epochs=1, schedule_epochs=1, max_train_steps=2, batch_size=8, lr=1e-3, gcn_lr=5e-3,
        ema=False, with_tracking=False, logging_steps=1, evaluate_before_training=False, checkpointing_steps=None,
    ))
    clock("train: 2 steps + selection + test evaluation")
    assert math.isfinite(results["test"]["mAP"]) and len(results["test_per_class_AP"]) == C
    size = sum(os.path.getsize(os.path.join(output, name)) for name in os.listdir(output)
               if os.path.isfile(os.path.join(output, name)))
    relation_bytes = (C + groups) ** 2 * 4  # the (C+G, C+G) float32 relation dominates
    assert relation_bytes < os.path.getsize(os.path.join(output, "model.safetensors")) < relation_bytes + 40e6
    assert size < relation_bytes + 45e6

    # 3. save / load (the re-saved folder gives the same scores: checked with predict below) ---------------------------
    model = HSPNetForImageClassification.from_pretrained(output).eval()
    processor = AutoImageProcessor.from_pretrained(output)
    resaved = str(workdir / "resaved")
    model.save_pretrained(resaved)
    every_image = sorted(os.path.join(data, name) for name in rows)
    logits = _logits(model, processor, every_image)
    assert logits.shape == (len(every_image), C)
    clock("from_pretrained, logits, save_pretrained")

    # 4. evaluation: the metrics of the direct logits ------------------------------------------------------------------
    eval_dir = str(workdir / "eval")
    assert evaluate_command.main(["--model", output, "--dataset", "folder", "--dataset_root", data,
                            "--dataset_options", json.dumps(options), "--cache_dir", cache, "--top_k", str(TOP_K),
                            "--zero_shot_clip", clip_dir, "--output_dir", eval_dir]) == 0
    clock("evaluate (with the zero-shot CLIP)")
    test = dataset["test"]
    test_paths = [os.path.join(data, image_id) for image_id in test["image_id"]]
    test_logits = _logits(model, processor, test_paths)  # one batch, as evaluate's (batch 64 > 8 images)
    targets = np.zeros((len(test), C), dtype=np.int64)
    for i, labels in enumerate(test["labels"]):
        targets[i, labels] = 1
    written = json.loads(open(os.path.join(eval_dir, "metrics.json"), encoding="utf-8").read())
    want = compute_all_metrics(test_logits.numpy(), targets, from_logits=True, threshold=0.5, k=TOP_K)
    assert written["num_labels"] == C
    assert written["metrics"] == pytest.approx(want, abs=1e-9)
    with open(os.path.join(eval_dir, "per_class_ap.csv"), encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == C and [row["label"] for row in table] == names
    assert {"group", "positives", "AP", "zero_shot_AP", "AP_gain"} <= set(table[0])
    ap = 100 * average_precision_ranked(test_logits.numpy(), targets)
    np.testing.assert_allclose([float(row["AP"]) for row in table], ap, atol=1e-4)
    assert sum(int(row["positives"]) for row in table) == targets.sum()
    assert (open(os.path.join(eval_dir, "per_class_ap.md"), encoding="utf-8").read().count("\n") == C + 2)
    png = open(os.path.join(eval_dir, "report.png"), "rb").read()
    assert png.startswith(b"\x89PNG")
    first, second, note = report.bar_classes(ap, targets.sum(axis=0))
    drawn = first + second
    assert len(drawn) == min(report.MAX_BARS, int((targets.sum(axis=0) > 0).sum())) and "not drawn" in note
    assert all(targets[:, i].sum() > 0 for i in drawn)
    stdout = capsys.readouterr().out
    assert f"... ({C - 40} more, see per_class_ap.csv) ..." in stdout  # the printed table is cut too

    # 5. prediction and the pipeline: the top-k of the model's own logits ----------------------------------------------
    # on the re-saved folder: its scores of every label are those of the model loaded from the training output
    predictions = str(workdir / "predictions.jsonl")
    assert predict_command.main(["--model", resaved, os.path.join(data, "img"), "--top_k", str(TOP_K), "--all_scores",
                            "--format", "jsonl", "--output", predictions, "--no_progress"]) == 0
    clock("predict --top_k 5 --all_scores (jsonl)")
    lines = [json.loads(line) for line in open(predictions, encoding="utf-8")]
    assert [line["path"] for line in lines] == every_image
    probabilities = torch.sigmoid(logits)
    for i, line in enumerate(lines):
        best = _top_k(logits[i], TOP_K)
        assert line["labels"] == [names[j] for j in best]
        assert [p["score"] for p in line["predictions"]] == probabilities[i, best].tolist()
        assert list(line["scores"]) == names and list(line["scores"].values()) == probabilities[i].tolist()
    # the table output of the same predictions (what --format table prints)
    table = prediction.format_table([prediction.Prediction(line["path"], [(p["label"], p["score"]) for p in
                                                                         line["predictions"]]) for line in lines],
                                    top_k=TOP_K)
    table_lines = table.splitlines()
    assert len(table_lines) == 2 + len(every_image) and "top 5" in table_lines[0]
    for i, line in enumerate(table_lines[2:]):
        assert line.startswith(every_image[i]) and line.count("(") == TOP_K
        assert f"{names[_top_k(logits[i], 1)[0]]} ({probabilities[i].max():.3f})" in line

    classifier = pipeline("image-classification", model=resaved)
    for path in every_image[:2]:
        single = _logits(model, processor, [path])[0]
        got = classifier(path, top_k=TOP_K)
        assert [r["label"] for r in got] == [names[j] for j in _top_k(single, TOP_K)]
        np.testing.assert_allclose([r["score"] for r in got], torch.sigmoid(single)[_top_k(single, TOP_K)].numpy(),
                                   rtol=0, atol=1e-6)
    clock("pipeline('image-classification')(image, top_k=5)")

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with capsys.disabled():
        print(f"\nC = {C:,} end to end:\n{clock.report()}\nmodel folder {size / 1e6:.0f} MB (model.safetensors "
              f"{os.path.getsize(os.path.join(output, 'model.safetensors')) / 1e6:.0f} MB, of which the relation "
              f"{relation_bytes / 1e6:.0f} MB)")
    assert peak_mb < 6 * 1024  # measured about 2.7 GB; an N x C x C or C x C x D blow-up would be far above


# ---------------------------------------------------------------------------------------------------------------------
# The pieces rewritten for large C give the results of the straightforward implementations
# ---------------------------------------------------------------------------------------------------------------------


def _reference_kmeans(x, k, seed, n_init=10, max_iter=100):
    """The spherical k-means as first written (O(n k^2) seeding, a boolean mask per cluster and iteration)."""
    from hspnet.data.clustering import _normalise

    n = len(x)
    rng = np.random.default_rng(seed)
    best_assign, best_cost = None, math.inf
    for _ in range(n_init):
        centres = [x[int(rng.integers(n))]]
        for _ in range(1, k):
            distance = np.clip(1.0 - np.max(x @ np.stack(centres).T, axis=1), 0.0, None)
            total = float((distance**2).sum())
            index = int(rng.choice(n, p=distance**2 / total)) if total > 0 else int(rng.integers(n))
            centres.append(x[index])
        centre = np.stack(centres)
        assign = np.full(n, -1)
        for _ in range(max_iter):
            new_assign = np.argmax(x @ centre.T, axis=1)
            for cluster in range(k):
                if not np.any(new_assign == cluster):
                    similarity = np.einsum("ij,ij->i", x, centre[new_assign])
                    counts = np.bincount(new_assign, minlength=k)
                    candidates = [i for i in np.argsort(similarity, kind="stable") if counts[new_assign[i]] > 1]
                    if candidates:
                        new_assign[candidates[0]] = cluster
            if np.array_equal(new_assign, assign):
                break
            assign = new_assign
            centre = np.stack([x[assign == c].mean(axis=0) if np.any(assign == c) else centre[c] for c in range(k)])
            centre = _normalise(centre)
        cost = float((1.0 - np.einsum("ij,ij->i", x, centre[assign])).sum())
        if cost < best_cost - 1e-12:
            best_assign, best_cost = assign.copy(), cost
    return best_assign


def _reference_agglomerative(x, k):
    """Average linkage as first written (the whole alive x alive block searched at every merge: O(n^3))."""
    n = len(x)
    distance = 1.0 - x @ x.T
    members = [[i] for i in range(n)]
    linkage = distance.copy()
    np.fill_diagonal(linkage, np.inf)
    alive = list(range(n))
    while len(alive) > k:
        sub = linkage[np.ix_(alive, alive)]
        flat = int(np.argmin(sub))
        a, b = alive[flat // len(alive)], alive[flat % len(alive)]
        a, b = min(a, b), max(a, b)
        size_a, size_b = len(members[a]), len(members[b])
        merged = (size_a * linkage[a] + size_b * linkage[b]) / (size_a + size_b)
        linkage[a, :] = merged
        linkage[:, a] = merged
        linkage[a, a] = np.inf
        members[a].extend(members[b])
        alive.remove(b)
    assign = np.empty(n, dtype=int)
    for cluster, index in enumerate(alive):
        assign[members[index]] = cluster
    return assign


def test_clustering_equals_the_reference_implementations():
    from hspnet.data.clustering import _agglomerative, _kmeans, _normalise

    rng = np.random.default_rng(0)
    for trial in range(24):
        n, d = int(rng.integers(2, 60)), int(rng.integers(2, 8))
        x = rng.normal(size=(n, d))
        if trial % 3 == 0:
            x = np.round(x)  # ties and duplicate rows
        x = _normalise(x)
        for k in sorted({1, 2, max(1, n // 3), n}):
            assert np.array_equal(_agglomerative(x, k), _reference_agglomerative(x, k)), (trial, k)
            assert np.array_equal(_kmeans(x, k, trial, n_init=3), _reference_kmeans(x, k, trial, n_init=3))


def test_blocked_metrics_are_bit_identical(monkeypatch):
    import hspnet.evaluation.average_precision as average_precision
    import hspnet.evaluation.metrics as metrics

    rng = np.random.default_rng(0)
    cases = []
    for n, c in [(1, 7), (7, 1), (37, 23), (300, 41), (41, 300)]:
        scores = rng.normal(size=(n, c)).astype(np.float32)
        scores[:, ::3] = np.round(scores[:, ::3])  # ties
        cases.append((scores, (rng.random((n, c)) < 0.2).astype(np.uint8)))
    want = [(metrics.compute_all_metrics(s, t, from_logits=True, k=3),
             metrics.compute_all_metrics(s, t, from_logits=True, k=2, topk_min_score=0.0),
             average_precision.average_precision_tie_aware(s, t), average_precision.average_precision_ranked(s, t))
            for s, t in cases]
    for block in (1, 997, 20000):  # one column / row at a time, and a few
        monkeypatch.setattr(average_precision, "BLOCK_BYTES", block)
        for (s, t), expected in zip(cases, want):
            got = (metrics.compute_all_metrics(s, t, from_logits=True, k=3),
                   metrics.compute_all_metrics(s, t, from_logits=True, k=2, topk_min_score=0.0),
                   average_precision.average_precision_tie_aware(s, t), average_precision.average_precision_ranked(s, t))
            assert got[:2] == expected[:2]
            assert np.array_equal(got[2], expected[2]) and np.array_equal(got[3], expected[3])
    # top-k by partition: ties go to the lower label index, as a stable sort
    s, t = np.array([[1.0, 2.0, 2.0, 2.0, 0.0]]), np.array([[0, 0, 1, 1, 0]])
    assert metrics.topk_metrics(s, t, 2)["OR"] == 50.0  # labels 1 and 2 predicted, not 3


def test_bar_chart_is_capped():
    from hspnet.evaluation.report import bar_classes

    ap = np.array([50.0, 10.0, 0.0, 90.0, 0.0, 30.0])
    positives = np.array([2, 1, 0, 3, 1, 1])
    assert bar_classes(ap, positives, max_bars=6) == ([3, 0, 5, 1, 2, 4], [], "")  # all, best first
    first, second, note = bar_classes(ap, positives, max_bars=5)  # only the classes with positives
    assert (first, second) == ([3, 0, 5, 1, 4], []) and "1 without positives" in note
    first, second, note = bar_classes(ap, positives, max_bars=3)
    assert (first, second) == ([3], [1, 4]) and "the 1 best and 2 worst of the 5 with positives" in note


def test_batched_label_selection_equals_select_labels():
    from hspnet.apps.predict import select_label_rows, select_labels

    generator = torch.Generator().manual_seed(0)
    names = [f"label {i}" for i in range(30)]
    for trial in range(20):
        scores = torch.rand(4, 30, generator=generator)
        if trial % 2:
            scores = (scores * 4).round() / 4  # ties, scores at the threshold
        for threshold, top_k in [(0.5, None), (None, 3), (0.5, 3), (0.0, 30), (1.0, None), (None, 1)]:
            assert select_label_rows(scores, names, threshold, top_k) == [
                select_labels(row, names, threshold, top_k) for row in scores.tolist()]


def test_statistics_table_is_capped():
    from hspnet.data.stats import format_statistics

    def stats(count):
        split = {"num_images": 2, "labels_per_image": {"mean": 1.0, "min": 1, "max": 1}, "positives": [1] * count}
        return {"labels": [f"label{i}" for i in range(count)], "groups": ["g"], "label_to_group": [0] * count,
                "splits": {"test": split}}

    text = format_statistics(stats(C))
    assert "label49 " in text and "label50 " not in text and "label9950 " in text and "label9949 " not in text
    assert f"... ({C - 100:,} more labels; the JSON statistics (--json) list every label)" in text
    assert len(text.splitlines()) < 120
    assert "label5000 " in format_statistics(stats(C), max_label_rows=None)
    assert "more labels" not in format_statistics(stats(100))  # up to the limit: every label
