"""`hspnet calibrate` (`hspnet.apps.calibrate`) and the users of the thresholds it stores: the thresholds written into
a model's config.json (in place, or in a calibrated copy) are the rule's on the model's own scores, load back with
`from_pretrained` and survive `save_pretrained`; `--holdout` reports and writes nothing; single-positive splits and
every bad input are refused in one line with nothing written. Then predict (stored thresholds by default, an explicit
`--threshold` wins), evaluate (metrics at the calibrated thresholds beside), the ONNX metadata and the demo page's
per-label markers.

Expected values: the model's own forward on the split (the images as PIL gives them), the brute-force rule of
tests/test_thresholds.py on those probabilities, and F1 / metrics computed here with numpy; never numbers captured
from the command."""

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from hspnet.apps import calibrate as calibration
from hspnet.cli import calibrate as calibrate_command
from hspnet.cli import evaluate as evaluate_command
from hspnet.cli import predict as predict_command
from hspnet.evaluation.metrics import threshold_metrics
from hspnet.models.thresholds import label_thresholds
from tests.helpers import TINY_DEMO_OPTIONS as DEMO_OPTIONS
from tests.helpers import digest_tree, fail_fsync
from tests.threshold_reference import brute_best, brute_f1

MIN_POSITIVES = 5


# ----------------------------------------------------------------------------------------------------------------------
# The model's scores, computed here
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_split(trained_tiny_model, tiny_demo_cache):
    from hspnet.data import get_hierarchy, prepare_dataset

    data = prepare_dataset("demo", cache_dir=tiny_demo_cache, **DEMO_OPTIONS)
    return data["test"], get_hierarchy(data)


@pytest.fixture(scope="module")
def scored(trained_tiny_model, test_split):
    """``(labels, probabilities (N, C) float64 of the float32 sigmoid, targets (N, C))`` of the trained tiny model on
    the demo test split, columns in the model's label order."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hspnet.data import to_multi_hot

    data, hierarchy = test_split
    model = AutoModelForImageClassification.from_pretrained(trained_tiny_model).eval()
    processor = AutoImageProcessor.from_pretrained(trained_tiny_model)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    images = [row["image"].convert("RGB") for row in data]
    targets = to_multi_hot([[labels.index(hierarchy.labels[i]) for i in row] for row in data["labels"]], len(labels))
    with torch.no_grad():
        logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    return labels, torch.sigmoid(logits.float()).double().numpy(), np.asarray(targets)


def expected_calibration(probabilities, targets, min_positives=MIN_POSITIVES):
    """The rule by brute force: ``(thresholds, sources, global threshold)``."""
    glob, _ = brute_best(probabilities.ravel().tolist(), targets.ravel().tolist())
    thresholds, sources = [], []
    for c in range(probabilities.shape[1]):
        if targets[:, c].sum() >= min_positives:
            thresholds.append(brute_best(probabilities[:, c].tolist(), targets[:, c].tolist())[0])
            sources.append("calibrated")
        else:
            thresholds.append(glob)
            sources.append("fallback")
    return thresholds, sources, glob


def f1_report(probabilities, targets, thresholds):
    """macro F1 (labels with a positive), sample F1 and micro F1 in percent, computed here."""
    pred = probabilities > np.asarray(thresholds)[None, :]
    t = targets.astype(bool)
    per_label = [2 * (pred[:, c] & t[:, c]).sum() / (pred[:, c].sum() + t[:, c].sum())
                 for c in range(t.shape[1]) if t[:, c].any()]
    per_image = [2 * (p & q).sum() / (p.sum() + q.sum()) if p.sum() + q.sum() else 0.0 for p, q in zip(pred, t)]
    micro = 2 * (pred & t).sum() / (pred.sum() + t.sum())
    return 100 * np.mean(per_label), 100 * np.mean(per_image), 100 * micro


@pytest.fixture
def model_copy(trained_tiny_model, tmp_path):
    return str(shutil.copytree(trained_tiny_model, tmp_path / "model"))


def _argv(model, tiny_demo_cache, *extra, split="test"):
    return ["--model_name_or_path", model, "--dataset", "demo", "--dataset_options", json.dumps(DEMO_OPTIONS),
            "--cache_dir", tiny_demo_cache, "--split", split, *extra]


def _error(capsys, prog="hspnet calibrate"):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("scoring [")]
    assert err and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith(f"{prog}: error: "), err
    return err[-1][len(f"{prog}: error: "):]


# ----------------------------------------------------------------------------------------------------------------------
# Calibrating
# ----------------------------------------------------------------------------------------------------------------------


def test_calibrate_in_place_stores_the_rules_thresholds(model_copy, scored, tiny_demo_cache, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    labels, probabilities, targets = scored
    before = json.loads(open(os.path.join(model_copy, "config.json")).read())
    files_before = digest_tree(tmp_path / "model")
    assert calibrate_command.main(_argv(model_copy, tiny_demo_cache)) == 0
    out = capsys.readouterr().out
    thresholds, sources, glob = expected_calibration(probabilities, targets)
    assert "calibrated" in sources and "fallback" in sources  # both branches of the rule are exercised

    after = json.loads(open(os.path.join(model_copy, "config.json")).read())
    assert after["label_thresholds"] == pytest.approx(thresholds, abs=1e-6)
    assert before.get("label_thresholds") is None
    assert {k: v for k, v in after.items() if k != "label_thresholds"} == {  # nothing else changed
        k: v for k, v in before.items() if k != "label_thresholds"}
    files_after = digest_tree(tmp_path / "model")
    assert set(files_after) == set(files_before) | {"calibration.json"}
    assert {k for k in files_before if files_before[k] != files_after[k]} == {"config.json"}

    record = json.loads(open(os.path.join(model_copy, "calibration.json")).read())
    assert record["split"] == "test" and record["num_images"] == len(probabilities)
    assert record["min_positives"] == MIN_POSITIVES and record["global_threshold"] == pytest.approx(glob, abs=1e-6)
    assert [row["label"] for row in record["labels"]] == labels
    assert [row["source"] for row in record["labels"]] == sources
    for c, row in enumerate(record["labels"]):
        assert row["positives"] == int(targets[:, c].sum())
        assert row["F1_at_threshold"] == pytest.approx(
            100 * float(brute_f1(probabilities[:, c], targets[:, c], thresholds[c])), abs=1e-9)
    # the printed table: one row per label with its threshold
    for name, value, source in zip(labels, thresholds, sources):
        row = next(line for line in out.splitlines() if line.startswith(name + "  "))
        assert f"{value:.4f}" in row and source in row
    assert f"wrote label_thresholds to {os.path.join(model_copy, 'config.json')}" in out

    # from_pretrained gives them back, save_pretrained keeps them
    model = AutoModelForImageClassification.from_pretrained(model_copy)
    assert model.config.label_thresholds == after["label_thresholds"] == label_thresholds(model)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["label_thresholds"] == after["label_thresholds"]


def test_calibrated_copy_leaves_the_model_as_it_is(model_copy, scored, tiny_demo_cache, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    from hspnet.hub.transfer import model_files

    _, probabilities, targets = scored
    source = digest_tree(tmp_path / "model")
    out = tmp_path / "calibrated"
    assert calibrate_command.main(_argv(model_copy, tiny_demo_cache, "--output_dir", str(out), "--min_positives",
                                        "3")) == 0
    assert digest_tree(tmp_path / "model") == source
    copied = digest_tree(out)
    assert set(copied) == set(model_files(model_copy)) | {"calibration.json"}
    assert {name for name in copied if name != "calibration.json" and copied[name] != source[name]} == {"config.json"}
    assert not {"train.log", "all_results.json"} & set(copied)
    thresholds, sources, _ = expected_calibration(probabilities, targets, 3)
    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.label_thresholds == pytest.approx(thresholds, abs=1e-6)
    assert json.loads((out / "calibration.json").read_text())["min_positives"] == 3
    assert sorted(os.listdir(tmp_path)) == ["calibrated", "model"]  # no staging folder left
    assert {"config.json", "calibration.json"} <= set(model_files(str(out)))  # what `hspnet push` uploads

    # again into the same folder (an earlier calibrate's): replaced as a whole
    (out / "stale.txt").write_text("from before")
    assert calibrate_command.main(_argv(model_copy, tiny_demo_cache, "--output_dir", str(out))) == 0
    assert not (out / "stale.txt").exists() and sorted(os.listdir(tmp_path)) == ["calibrated", "model"]
    assert json.loads((out / "config.json").read_text())["label_thresholds"] == pytest.approx(
        expected_calibration(probabilities, targets)[0], abs=1e-6)
    capsys.readouterr()


def test_holdout_reports_and_writes_nothing(model_copy, scored, tiny_demo_cache, tmp_path, capsys):
    _, probabilities, targets = scored
    before = digest_tree(tmp_path / "model")
    args = calibrate_command.build_parser().parse_args(_argv(model_copy, tiny_demo_cache, "--holdout", "0.5",
                                                             "--seed", "3", "--min_positives", "2"))
    record = calibration.run_calibration(args)
    out = capsys.readouterr().out
    assert digest_tree(tmp_path / "model") == before and sorted(os.listdir(tmp_path)) == ["model"]

    # the draw: the first round(0.5 * N) of numpy's permutation with the seed are held out
    n = len(probabilities)
    order = np.random.default_rng(3).permutation(n)
    held, rest = np.sort(order[: round(0.5 * n)]), np.sort(order[round(0.5 * n):])
    thresholds, _, _ = expected_calibration(probabilities[rest], targets[rest], 2)
    assert [row["threshold"] for row in record["labels"]] == pytest.approx(thresholds, abs=1e-6)
    report = record["holdout"]
    assert report["num_images"] == len(held) and record["num_images"] == len(rest)
    for key, values in (("at_default", [0.5] * probabilities.shape[1]), ("at_thresholds", thresholds)):
        macro, sample, micro = f1_report(probabilities[held], targets[held], values)
        assert report[key]["macro_F1"] == pytest.approx(macro, abs=1e-6)
        assert report[key]["sample_F1"] == pytest.approx(sample, abs=1e-6)
        assert report[key]["micro_F1"] == pytest.approx(micro, abs=1e-6)
    # the printed report
    for name, key in (("macro-F1", "macro_F1"), ("sample-F1", "sample_F1"), ("micro-F1", "micro_F1")):
        row = next(line for line in out.splitlines() if line.startswith(name + " "))
        cells = [float(cell) for cell in row.split()[1:]]
        assert cells[:2] == pytest.approx([report["at_default"][key], report["at_thresholds"][key]], abs=0.006)
    assert f"calibrated on {len(rest)} images, measured on the {len(held)} others" in out and "nothing written" in out


def test_single_positive_split_is_refused_in_one_line(model_copy, tiny_demo_cache, tmp_path, capsys):
    from hspnet.data import prepare_dataset, save_prepared_dataset

    data = prepare_dataset("demo", cache_dir=tiny_demo_cache, **DEMO_OPTIONS)
    # the demo's train and validation splits hold every positive (labels) besides the observed one: they can calibrate
    for split in ("train", "validation"):
        assert any(len(row) > 1 for row in data[split]["labels"])
        calibration.check_fully_labelled(data[split], split, "demo")
    # a split whose only known label is the observed one cannot
    data["validation"] = data["validation"].map(lambda row: {"labels": row["observed_labels"]})
    folder = save_prepared_dataset(data, tmp_path / "single", embed_images=False)
    before = digest_tree(tmp_path / "model")
    code = calibrate_command.main(["--model", model_copy, "--dataset", str(folder), "--cache_dir", tiny_demo_cache,
                                   "--split", "validation"])
    message = _error(capsys)
    assert code == 1
    assert message == (f"split 'validation' of dataset {str(folder)!r} holds single positive labels only (its labels "
                       "equal its observed_labels, one per image): its negatives are unknown, so no threshold can be "
                       "calibrated on it; give a fully labelled split (e.g. --split test of a benchmark) or a held-out "
                       "fully labelled set")
    assert digest_tree(tmp_path / "model") == before


def test_bad_inputs_are_one_line_and_write_nothing(model_copy, make_model, tiny_demo_cache, tmp_path, capsys):
    before = digest_tree(tmp_path / "model")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "mine.txt").write_text("keep")
    make_model().save_pretrained(tmp_path / "six-labels")
    os.symlink(os.path.join(model_copy, "config.json"), tmp_path / "config-link.json")
    linked = tmp_path / "linked"
    shutil.copytree(model_copy, linked)
    os.remove(linked / "config.json")
    os.symlink(os.path.join(model_copy, "config.json"), linked / "config.json")
    cases = [
        (_argv("someone/some-model", tiny_demo_cache),
         "someone/some-model is not a local model folder, so its config.json cannot be rewritten; give --output_dir "
         "for a calibrated copy"),
        (_argv(model_copy, tiny_demo_cache, "--holdout", "0.5", "--output_dir", str(tmp_path / "x")),
         "--holdout only reports (it writes nothing)"),
        (_argv(model_copy, tiny_demo_cache, "--output_dir", str(tmp_path / "foreign")),
         "--output_dir is a folder that an earlier hspnet calibrate did not write (no calibration.json)"),
        (_argv(model_copy, tiny_demo_cache, "--output_dir", model_copy), "--output_dir is the model folder"),
        (_argv(model_copy, tiny_demo_cache, "--output_dir", str(tmp_path / "a-file")),
         "--output_dir exists and is not a folder"),
        (_argv(str(linked), tiny_demo_cache), "config.json is a symbolic link"),
        (_argv(model_copy, tiny_demo_cache, "--holdout", "0.01"), "leaves 0 held out and 32 to calibrate on"),
        (_argv(model_copy, tiny_demo_cache, split="tset"), "has no split 'tset'"),
        (_argv(str(tmp_path / "six-labels"), tiny_demo_cache), "the model's 6 labels are not the dataset's 12"),
        (_argv(str(tmp_path / "missing"), tiny_demo_cache), "model folder does not exist"),
    ]
    for argv, expected in cases:
        assert calibrate_command.main(argv) == 1, argv
        message = _error(capsys)
        assert expected in message, (argv, message)
    assert digest_tree(tmp_path / "model") == before
    assert sorted(os.listdir(tmp_path)) == ["a-file", "config-link.json", "foreign", "linked", "model", "six-labels"]
    assert os.listdir(tmp_path / "foreign") == ["mine.txt"]
    # usage errors (exit 2): a fraction outside (0, 1), a count < 1
    for extra in (["--holdout", "0"], ["--holdout", "1"], ["--holdout", "1.5"], ["--min_positives", "0"],
                  ["--seed", "-1"]):
        with pytest.raises(SystemExit) as stop:
            calibrate_command.main(_argv(model_copy, tiny_demo_cache, *extra))
        assert stop.value.code == 2
        capsys.readouterr()


def test_a_failed_write_leaves_nothing_half_written(model_copy, tiny_demo_cache, tmp_path, capsys, monkeypatch):
    before = digest_tree(tmp_path / "model")
    fail_fsync(monkeypatch)  # a full disk: every atomic write fails before its rename
    assert calibrate_command.main(_argv(model_copy, tiny_demo_cache)) == 1
    assert "No space left on device" in _error(capsys)
    assert digest_tree(tmp_path / "model") == before  # neither config.json nor calibration.json
    assert calibrate_command.main(_argv(model_copy, tiny_demo_cache, "--output_dir", str(tmp_path / "copy"))) == 1
    _error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no copy, no staging folder


# ----------------------------------------------------------------------------------------------------------------------
# The users of the stored thresholds
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thresholded(trained_tiny_model, scored, tmp_path_factory):
    """A copy of the trained tiny model with thresholds that make a difference: each label's the midpoint between
    its lowest and highest probability on the test images (label 0: none stored, 0.5 applies)."""
    labels, probabilities, _ = scored
    folder = tmp_path_factory.mktemp("thresholded") / "model"
    shutil.copytree(trained_tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    middle = ((probabilities.min(0) + probabilities.max(0)) / 2).tolist()
    config["label_thresholds"] = [None] + middle[1:]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return str(folder), [0.5] + middle[1:]


@pytest.fixture(scope="module")
def image_files(test_split, tmp_path_factory):
    data, _ = test_split
    folder = tmp_path_factory.mktemp("calibrate-images")
    paths = []
    for i in range(8):
        path = folder / f"img_{i}.png"
        data[i]["image"].save(path)
        paths.append(str(path))
    return paths


def _predict(model, paths, tmp_path, capsys, *extra):
    out = tmp_path / "predictions.jsonl"
    assert predict_command.main(["--model", model, *paths, "--format", "jsonl", "--output", str(out),
                                 "--no_progress", *extra]) == 0
    err = capsys.readouterr().err
    return [json.loads(line) for line in out.read_text().splitlines()], err


def test_predict_uses_the_stored_thresholds_unless_a_threshold_is_given(thresholded, scored, image_files, tmp_path,
                                                                        capsys):
    folder, effective = thresholded
    labels, probabilities, _ = scored
    rows, err = _predict(folder, image_files, tmp_path, capsys)
    assert "thresholds: the calibrated thresholds of config.json (label_thresholds) for 11 of 12 labels, 0.5 for the " \
           "others" in err
    for i, row in enumerate(rows):
        expected = [labels[c] for c in np.argsort(-probabilities[i], kind="stable") if
                    probabilities[i, c] > effective[c]]
        assert row["labels"] == expected
        assert [p["threshold"] for p in row["predictions"]] == pytest.approx(
            [effective[labels.index(name)] for name in expected])
    explicit, err = _predict(folder, image_files, tmp_path, capsys, "--threshold", "0.5")
    assert "calibrated" not in err
    for i, row in enumerate(explicit):
        assert row["labels"] == [labels[c] for c in np.argsort(-probabilities[i], kind="stable")
                                 if probabilities[i, c] > 0.5]
    assert [row["labels"] for row in rows] != [row["labels"] for row in explicit]  # the thresholds made a difference


def test_evaluate_reports_the_calibrated_metrics_beside(thresholded, scored, tiny_demo_cache, tmp_path, capsys):
    folder, effective = thresholded
    _, probabilities, targets = scored
    out = tmp_path / "eval"
    assert evaluate_command.main(["--model", folder, "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
                                  tiny_demo_cache, "--output_dir", str(out), "--no_plot", "--zero_shot_clip",
                                  "none"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "metrics.json").read_text())
    assert results["label_thresholds"] == [None] + effective[1:]
    expected = threshold_metrics(probabilities, targets, effective)
    assert set(results["metrics_at_label_thresholds"]) == set(expected)
    for key, value in expected.items():
        assert results["metrics_at_label_thresholds"][key] == pytest.approx(value, abs=1e-4), key
    assert results["metrics_at_label_thresholds"]["OF1"] != pytest.approx(results["metrics"]["OF1"])
    row = next(line for line in printed.splitlines() if line.startswith("OF1 ") and len(line.split()) == 4)
    assert float(row.split()[2]) == pytest.approx(expected["OF1"], abs=0.006)
    assert "calibrated = the calibrated thresholds of config.json (label_thresholds) for 11 of 12 labels" in printed


def test_onnx_metadata_carries_the_thresholds(thresholded, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    from hspnet.apps.onnx_export import onnx_metadata

    folder, _ = thresholded
    stored = json.loads(open(os.path.join(folder, "config.json")).read())["label_thresholds"]
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert onnx_metadata(model)["label_thresholds"] == stored
    model.config.label_thresholds = None
    assert onnx_metadata(model)["label_thresholds"] is None
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from hspnet.apps.onnx_export import read_onnx_metadata
    from hspnet.cli.export_onnx import main

    assert main([folder, str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert read_onnx_metadata(str(tmp_path / "m.onnx"))["label_thresholds"] == stored
    assert json.loads((tmp_path / "m.json").read_text())["label_thresholds"] == stored


def test_demo_page_marks_each_labels_threshold(thresholded, scored, trained_tiny_model):
    from hspnet.apps.demo.page import DemoModel, render_image_result

    folder, effective = thresholded
    labels, probabilities, _ = scored
    demo = DemoModel.load(folder, device="cpu")
    assert demo.label_thresholds == pytest.approx(effective)
    scores = probabilities[0].tolist()
    page = render_image_result({"name": "a.png", "scores": scores}, demo.label_groups, demo.label_thresholds)
    rows = re.findall(r'<div class="hsp-row( hsp-on)?" data-label="([^"]+)".*?data-threshold="([^"]+)"', page)
    assert len(rows) == 12
    for on, name, threshold in rows:
        c = labels.index(name)
        assert float(threshold) == pytest.approx(effective[c])
        assert bool(on) == (scores[c] > effective[c])
    marks = re.findall(r'data-label="([^"]+)".*?class="hsp-mark" style="left:([0-9.]+)%"', page)
    assert {name: float(left) for name, left in marks} == {
        name: pytest.approx(round(100 * effective[labels.index(name)], 1)) for name in labels}
    # one threshold (the slider): every mark at it
    page = render_image_result({"name": "a.png", "scores": scores}, demo.label_groups, 0.3)
    assert set(re.findall(r'class="hsp-mark" style="left:([0-9.]+)%"', page)) == {"30.0"}
    # a model without calibration has no per-label thresholds (the page shows no checkbox)
    assert DemoModel.load(trained_tiny_model, device="cpu").label_thresholds is None


def test_demo_page_has_the_calibrated_checkbox_only_for_a_calibrated_model(thresholded, trained_tiny_model):
    pytest.importorskip("gradio")
    from hspnet.apps.demo.page import DemoModel, build_demo

    def checkboxes(folder):
        blocks = build_demo(DemoModel.load(folder, device="cpu"), examples=[], demo_examples=False)
        return [block for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "hsp-calibrated"]

    (box,) = checkboxes(thresholded[0])
    assert box.value is True and box.label == "Calibrated thresholds"
    assert checkboxes(trained_tiny_model) == []


def test_partially_labelled_split_is_refused_in_one_line(tmp_path):
    """Open Images: verified positives and negatives, every other pair unknown: F1 there would count the unknown pairs
    as negatives, so calibration refuses it."""
    from datasets import Dataset

    split = Dataset.from_dict({"labels": [[0], [1]], "negative_labels": [[1], []]})
    with pytest.raises(ValueError) as error:
        calibration.check_fully_labelled(split, "test", "openimages")
    assert str(error.value).startswith("split 'test' of dataset 'openimages' is partially labelled (verified positives")
    assert "\n" not in str(error.value)
