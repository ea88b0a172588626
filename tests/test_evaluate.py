"""Evaluation (`hspnet evaluate`, scripts/evaluate.py; `hspnet.apps.evaluate`, `hspnet.evaluation`): the metrics
(docs/method.md, section 6.6), per-class tables and report of a trained tiny model, checked against an independent
computation; the zero-shot CLIP it compares with; images read exactly as predict reads them; nothing the user gave
overwritten, outputs written whole; every bad input named in one line (the traceback with --debug).

Expected values come from first principles (numpy arrays, the EXIF specification, the model's own forward on the
equivalent 8-bit images and hspnet.evaluation.metrics on those logits), never from the code under test."""

import argparse
import csv
import json
import os
import shutil
import sys

import datasets
import numpy as np
import pytest
import torch

from hspnet.apps import evaluate as evaluation
from hspnet.cli import evaluate as evaluate_command
from hspnet.apps.predict import load_image
from hspnet.data import batches
from hspnet.data.batches import label_permutation
from hspnet.evaluation import report, zero_shot
from hspnet.evaluation.average_precision import average_precision_ranked
from hspnet.evaluation.metrics import compute_all_metrics
from hspnet.models import loading
from hspnet.utils.images import ImageReadError
from tests.helpers import (
    PREDICT_LABELS as LABELS,
    TINY_DEMO_OPTIONS as DEMO_OPTIONS,
    digest_files,
    fail_fsync,
    save_model,
    write_exif_jpeg,
    write_float_tiff,
    write_png_16bit,
    write_png_bomb,
    write_rgb_png,
)

datasets.disable_progress_bars()


ALL_METRIC_KEYS = set(compute_all_metrics(np.eye(3), np.eye(3), k=3))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_demo_cache):
    """This module's folder; `cache` is the datasets cache of the session's trained model (its demo data)."""
    folder = tmp_path_factory.mktemp("evaluate")
    os.symlink(tiny_demo_cache, folder / "cache")
    return folder


@pytest.fixture(scope="module")
def trained_model(trained_tiny_model):
    """The session's tiny HSPNet trained for one epoch on a small demo set (tests/conftest.py)."""
    return trained_tiny_model


@pytest.fixture(scope="module")
def test_split(workspace, trained_model):
    from hspnet.data import get_hierarchy, prepare_dataset

    datasets = prepare_dataset("demo", cache_dir=str(workspace / "cache"), **DEMO_OPTIONS)
    return datasets["test"], get_hierarchy(datasets)


@pytest.fixture(scope="module")
def evaluated(workspace, trained_model):
    out = workspace / "eval"
    code = evaluate_command.main([
        "--model", trained_model, "--dataset", "demo", "--dataset_options", json.dumps(DEMO_OPTIONS),
        "--cache_dir", str(workspace / "cache"), "--output_dir", str(out), "--batch_size", "10",
    ])
    assert code == 0
    with open(out / "metrics.json") as handle:
        return out, json.load(handle)


# ----------------------------------------------------------------------------------------------------------------------
# A trained tiny model on the demo data
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_writes_metrics_table_report_and_zero_shot(evaluated):
    out, results = evaluated
    assert ALL_METRIC_KEYS <= set(results["metrics"])
    assert {"mAP", "mAP_tie_aware", "CP", "CR", "CF1", "mean_class_F1", "OP", "OR", "OF1", "CP_top3",
            "OF1_top3"} <= set(results["metrics"])
    assert results["num_samples"] == DEMO_OPTIONS["num_test"] and results["split"] == "test"
    with open(out / "per_class_ap.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == results["num_labels"] == 12
    assert {"label", "group", "positives", "AP", "AP_tie_aware", "zero_shot_AP", "AP_gain"} <= set(rows[0])
    assert (out / "per_class_ap.md").read_text().startswith("| label | group |")
    png = (out / "report.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 20_000
    zero_shot = results["zero_shot"]
    assert zero_shot["clip"] == "tiny-random" and zero_shot["template"] == "a photo of a {}."
    assert ALL_METRIC_KEYS <= set(zero_shot["metrics"]) and "not calibrated" in zero_shot["note"]
    assert "warning" not in zero_shot  # the rebuilt tiny CLIP has the model's frozen text tower


def test_evaluate_metrics_equal_independent_computation(evaluated, trained_model, test_split):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hspnet.data import to_multi_hot

    _, results = evaluated
    data, hierarchy = test_split
    model = AutoModelForImageClassification.from_pretrained(trained_model).eval()
    processor = AutoImageProcessor.from_pretrained(trained_model)
    assert loading.label_names(model) == list(hierarchy.labels)
    images = [row["image"].convert("RGB") for row in data]
    targets = to_multi_hot(data["labels"], len(hierarchy.labels))
    with torch.no_grad():
        logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    expected = compute_all_metrics(logits, targets, from_logits=True)
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-4), key
    per_class = 100 * average_precision_ranked(logits, targets)
    assert [results["per_class_AP"][name] for name in hierarchy.labels] == pytest.approx(per_class.tolist(), abs=1e-4)

    # the zero-shot numbers: plain tiny CLIP (seed 0 as in the recipe), "a photo of a {label}.", CLIP's logit scale
    from hspnet.models.hspnet.modeling_prompts import clip_text_embeddings
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_image_processor, tiny_clip_model

    clip = tiny_clip_model(seed=0)
    with torch.no_grad():
        text = clip_text_embeddings(clip, byte_level_clip_tokenizer(), [f"a photo of a {n}." for n in hierarchy.labels])
        pixels = tiny_clip_image_processor()(images=images, return_tensors="pt")["pixel_values"]
        image = clip.get_image_features(pixel_values=pixels).pooler_output
        zs_logits = clip.logit_scale.exp() * torch.nn.functional.normalize(image, dim=-1) @ \
            torch.nn.functional.normalize(text, dim=-1).T
    zs_expected = compute_all_metrics(zs_logits, targets, from_logits=True)
    for key, value in zs_expected.items():
        assert results["zero_shot"]["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_evaluate_untrained_model_with_other_label_order_and_clip_folder(tiny_clip_dir, test_split, workspace,
                                                                        tmp_path):
    # an untrained model built with from_clip (no model card) whose labels are in reverse dataset order; the zero-shot
    # CLIP is a folder; the metrics must still equal an independent computation with the targets in model order
    from hspnet import HSPNetForImageClassification
    from hspnet.data import to_multi_hot

    data, hierarchy = test_split
    labels = list(hierarchy.labels)[::-1]
    groups = {name: g for name, g in zip(hierarchy.labels, hierarchy.label_to_group)}
    torch.manual_seed(0)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=labels, groups=list(hierarchy.groups),
                                                   label_to_group=[groups[n] for n in labels])
    model.save_pretrained(tmp_path / "untrained")
    results = evaluation.run_evaluation(evaluate_command.build_parser().parse_args([
        "--model", str(tmp_path / "untrained"), "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
        str(workspace / "cache"), "--output_dir", str(tmp_path / "out"), "--max_samples", "20", "--no_plot",
        "--zero_shot", tiny_clip_dir, "--top_k", "2", "--threshold", "0.4",
    ]))
    assert not (tmp_path / "out" / "report.png").exists() and (tmp_path / "out" / "per_class_ap.csv").exists()
    assert results["num_samples"] == 20 and results["zero_shot"]["clip"] == tiny_clip_dir
    assert "warning" not in results["zero_shot"]  # the model's text tower is that CLIP's
    rows = data.select(range(20))
    targets = to_multi_hot([[labels.index(hierarchy.labels[i]) for i in row] for row in rows["labels"]], len(labels))
    with torch.no_grad():
        pixels = model.image_processor(images=[r["image"].convert("RGB") for r in rows], return_tensors="pt")
        logits = model.eval()(pixel_values=pixels["pixel_values"]).logits
    expected = compute_all_metrics(logits, targets, from_logits=True, threshold=0.4, k=2)
    assert set(results["metrics"]) == set(expected) and "OF1_top2" in expected
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-4), key

    skipped = evaluation.run_evaluation(evaluate_command.build_parser().parse_args([
        "--model", str(tmp_path / "untrained"), "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
        str(workspace / "cache"), "--output_dir", str(tmp_path / "out2"), "--max_samples", "4", "--no_plot",
    ]))
    assert "does not record the CLIP" in skipped["zero_shot"]["skipped"] and "metrics" not in skipped["zero_shot"]


def test_per_class_table_plot_and_pr_curve(tmp_path, monkeypatch):
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.7], [0.2, 0.05]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    rows = report.per_class_table(scores, targets, ["a", "b"], ["g", "g"], zero_shot_scores=scores[:, ::-1])
    assert [r["positives"] for r in rows] == [2, 1]
    assert rows[0]["AP"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert rows[1]["AP"] == pytest.approx(100.0) and rows[1]["AP_tie_aware"] == pytest.approx(50.0)  # tie at 0.7
    assert rows[0]["AP_gain"] == pytest.approx(rows[0]["AP"] - rows[0]["zero_shot_AP"])
    precision, recall = report.precision_recall_curve(scores[:, 1], targets[:, 1])
    assert precision.tolist() == [0.5, 1 / 3, 0.25] and recall.tolist() == [1.0, 1.0, 1.0]
    assert report.precision_recall_curve(scores[:, 0], np.zeros(4))[0].size == 0
    with pytest.raises(ValueError, match="csv or .md"):
        report.write_per_class_table(rows, str(tmp_path / "table.txt"))
    path = report.plot_report(scores, targets, ["a", "b"], str(tmp_path / "r.png"), zero_shot_scores=scores)
    assert open(path, "rb").read(8) == PNG_SIGNATURE
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match="needs matplotlib.*--no_plot"):
        report.plot_report(scores, targets, ["a", "b"], str(tmp_path / "r2.png"))


def test_evaluate_unknown_split_exits_with_one_line_message(trained_model, workspace, run_as_main):
    result = run_as_main("evaluate.py", "--model", trained_model, "--dataset", "demo", "--dataset_options",
                         json.dumps(DEMO_OPTIONS), "--cache_dir", workspace / "cache", "--split", "tset",
                         "--output_dir", workspace / "bad_eval")
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error:") and "'tset'" in last and "test" in last
    assert "Traceback" not in result.stderr
    assert not (workspace / "bad_eval").exists()


def test_evaluate_bad_inputs_give_clear_errors(trained_model, workspace, tmp_path, capsys):
    cache = str(workspace / "cache")
    with pytest.raises(ValueError, match="no split 'tset'.*train, validation, test"):
        evaluation.load_eval_split("demo", "tset", dataset_options=DEMO_OPTIONS, cache_dir=cache)
    with pytest.raises(ValueError, match="do not fit the 'demo' loader"):
        evaluation.load_eval_split("demo", dataset_options={"num_tset": 3}, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no_such_prepared"):
        evaluation.load_eval_split(str(tmp_path / "no_such_prepared"))
    with pytest.raises(ValueError, match=r"only in the model \['c'\], only in the dataset \['d'\]"):
        label_permutation(["a", "b", "c"], ["b", "a", "d"])
    assert label_permutation(["a", "b", "c"], ["c", "a", "b"]) == [2, 0, 1]
    missing = str(tmp_path / "no_model_here")
    code = evaluate_command.main(["--model", missing, "--dataset", "demo", "--cache_dir", cache])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == f"hspnet evaluate: error: {missing}: model folder does not exist"
    with pytest.raises(SystemExit):  # argparse: invalid JSON
        evaluate_command.build_parser().parse_args(["--model", trained_model, "--dataset_options", "{not json"])


# ----------------------------------------------------------------------------------------------------------------------
# The zero-shot CLIP
# ----------------------------------------------------------------------------------------------------------------------


def test_zero_shot_classifier_formula_and_prompts():
    from hspnet.models.hspnet.modeling_prompts import clip_text_embeddings
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_model

    clip, tokenizer = tiny_clip_model(seed=1), byte_level_clip_tokenizer()
    labels = ["traffic_light", "cat"]
    classifier = zero_shot.ZeroShotCLIPClassifier(clip, tokenizer, labels)
    assert classifier.prompts == ["a photo of a traffic light.", "a photo of a cat."]
    assert not hasattr(classifier, "text_model")  # text embeddings are computed once, the text tower is dropped
    assert classifier.logit_scale == pytest.approx(float(clip.logit_scale.detach().exp()))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = classifier(pixel_values=pixels).logits
        text = clip_text_embeddings(clip, tokenizer, classifier.prompts)
        image = clip.get_image_features(pixel_values=pixels).pooler_output
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, zero_shot.zero_shot_logits(image, text, classifier.logit_scale))
    cosine = torch.nn.functional.cosine_similarity(image[:, None], text[None], dim=-1)
    torch.testing.assert_close(logits, classifier.logit_scale * cosine, atol=1e-5, rtol=1e-5)
    fixed = zero_shot.ZeroShotCLIPClassifier(clip, tokenizer, labels, logit_scale=100.0)
    assert fixed.logit_scale == 100.0


def test_training_records_the_clip_evaluation_uses(trained_model):
    recorded = zero_shot.read_training_args(trained_model)  # training_args.json, written by training
    assert recorded["clip_model"] == "tiny-random" and recorded["seed"] == 0 and not recorded["model_name_or_path"]
    assert zero_shot.resolve_zero_shot_clip(trained_model, "auto")[:2] == ("tiny-random", 0)


def test_resolve_zero_shot_clip(make_model, tiny_clip_dir, tmp_path):
    untrained = tmp_path / "untrained"
    make_model().save_pretrained(untrained)  # from_clip + save_pretrained: no training_args.json, nothing recorded
    clip, seed, message = zero_shot.resolve_zero_shot_clip(str(untrained), "auto")
    assert clip is None and seed == 0 and "--zero_shot_clip" in message and "training_args.json" in message
    # what training records beside the model: the base CLIP and the seed the tiny random CLIP is rebuilt with
    args = untrained / "training_args.json"
    args.write_text(json.dumps({"clip_model": "tiny-random", "seed": 3, "model_name_or_path": None, "epochs": 1}))
    assert zero_shot.read_training_args(str(untrained))["seed"] == 3
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "auto")[:2] == ("tiny-random", 3)
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "tiny-random")[:2] == ("tiny-random", 3)
    clip, _, message = zero_shot.resolve_zero_shot_clip(str(untrained), "none")
    assert clip is None and "skipped" in message
    args.write_text(json.dumps({"clip_model": tiny_clip_dir, "seed": 0}))
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "auto")[0] == tiny_clip_dir
    args.write_text(json.dumps({"clip_model": str(tmp_path / "gone"), "seed": 0}))  # neither a folder nor cached
    clip, _, message = zero_shot.resolve_zero_shot_clip(str(untrained), "auto")
    assert clip is None and "neither a local folder nor in the Hugging Face cache" in message
    # fine-tuned from another HSPNet: its clip_model is not the CLIP the weights came from
    args.write_text(json.dumps({"clip_model": "tiny-random", "model_name_or_path": "outputs/demo", "seed": 0}))
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "auto")[0] is None
    for text, field in (('["tiny-random"]', "JSON object"), ('{"clip_model": 3}', "clip_model"),
                        ('{"seed": "0"}', "seed"), ('{"seed": true}', "seed")):
        args.write_text(text)
        with pytest.raises(ValueError, match=f"training_args.json.*{field}"):
            zero_shot.resolve_zero_shot_clip(str(untrained), "auto")
    args.write_text("{not json")
    with pytest.raises(OSError, match="training_args.json, line 1: invalid JSON"):
        zero_shot.read_training_args(str(untrained))
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "none")[0] is None  # not read when not needed
    assert zero_shot.resolve_zero_shot_clip(str(untrained), "some/clip")[0] == "some/clip"
    with pytest.raises(FileNotFoundError, match="no/such/clip-folder"):
        zero_shot.load_zero_shot_clip("./no/such/clip-folder")


# ----------------------------------------------------------------------------------------------------------------------
# A folder dataset of 16-bit, EXIF-rotated and float images: evaluation sees the images predict sees
# ----------------------------------------------------------------------------------------------------------------------


GROUP_OF = {"cat": "animal", "dog": "animal", "car": "vehicle", "bus": "vehicle"}


TEST_ROWS = [("img/deep.png", ["cat"]), ("img/tagged.jpg", ["dog", "car"]), ("img/float.tif", ["car"]),
             ("img/plain.png", ["cat", "bus"]), ("img/report.png", ["bus", "dog"])]


TRAIN_ROWS = [("img/t1.png", ["cat"]), ("img/t2.png", ["dog", "bus"]), ("img/t3.png", ["car"])]


def _write_folder_dataset(root):
    """A folder dataset whose test images are a 16-bit PNG, an EXIF-rotated JPEG, a float TIFF and two 8-bit PNGs
    (one named report.png, like an output of evaluate); returns {file_name: the 8-bit RGB image the model must see}."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    expected = {
        "img/deep.png": write_png_16bit(root / "img/deep.png"),
        "img/tagged.jpg": write_exif_jpeg(root / "img/tagged.jpg", 6),
        "img/float.tif": write_float_tiff(root / "img/float.tif"),
    }
    for seed, name in enumerate(["img/plain.png", "img/report.png", "img/t1.png", "img/t2.png", "img/t3.png"]):
        write_rgb_png(root / name, seed=10 + seed)
        expected[name] = Image.open(root / name).convert("RGB")
    lines = ["file_name,labels,split"]
    lines += [f"{name},{';'.join(labels)},test" for name, labels in TEST_ROWS]
    lines += [f"{name},{';'.join(labels)},train" for name, labels in TRAIN_ROWS]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "groups.csv").write_text("".join(f"{label},{group}\n" for label, group in GROUP_OF.items()))
    return expected


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_clip_dir):
    base = tmp_path_factory.mktemp("eval_reliability")
    root = base / "data"
    expected = _write_folder_dataset(root)
    model_dir = save_model(tiny_clip_dir, base / "model")
    options = {"hierarchy": str(root / "groups.csv"), "validation_fraction": 0}
    common = ["--model", model_dir, "--dataset", "folder", "--dataset_root", str(root), "--dataset_options",
              json.dumps(options), "--cache_dir", str(base / "cache"), "--zero_shot_clip", "none"]
    return argparse.Namespace(base=base, root=root, expected=expected, model=model_dir, options=options,
                              cache=str(base / "cache"), common=common)


def _one_error_line(capsys):
    """The error line; besides it, stderr may only hold the progress bar of the evaluation loop."""
    err = capsys.readouterr().err.strip().splitlines()
    others = [line for line in err[:-1] if line.strip() and not line.startswith("HSPNet [")]
    assert err and not others and "Traceback" not in "".join(err), err
    return err[-1]


def test_eval_transform_reads_images_like_predict(folder):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder.model)
    names = ["img/deep.png", "img/tagged.jpg", "img/float.tif", "img/plain.png"]
    paths = [str(folder.root / name) for name in names]
    expected = processor(images=[folder.expected[n] for n in names], return_tensors="pt")["pixel_values"]
    from_predict = processor(images=[load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(from_predict, expected, rtol=0, atol=0)

    table = datasets.Dataset.from_dict({"image": paths, "labels": [[0], [1, 2], [2], [0, 3]]})
    table = table.cast_column("image", datasets.Image())
    transform = batches.make_transform(processor, len(LABELS), permutation=[3, 2, 1, 0])
    for data in (table.cast_column("image", datasets.Image(decode=False)), table):  # files, or datasets' decoding
        batch = data.with_transform(transform)[:]
        torch.testing.assert_close(batch["pixel_values"], expected, rtol=0, atol=0)
        assert batch["labels"].tolist() == [[0, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]]
    # the training columns go through the same transform: observed labels in the model's order, the row index kept
    observed = table.add_column("observed_labels", [[0], [2], [2], [3]]).add_column("index", [5, 6, 7, 8])
    batch = observed.with_transform(transform)[:]
    assert batch["observed_labels"].tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]]
    assert batch["index"].tolist() == [5, 6, 7, 8] and batch["index"].dtype == torch.long
    embedded = datasets.Dataset.from_dict({"image": [{"bytes": open(p, "rb").read(), "path": None} for p in paths],
                                           "labels": [[0]] * 4}).cast_column("image", datasets.Image(decode=False))
    batch = embedded.with_transform(transform)[:]
    torch.testing.assert_close(batch["pixel_values"], expected, rtol=0, atol=0)


def test_evaluate_metrics_use_the_images_predict_sees(folder, tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    before = digest_files(folder.root, folder.model)
    out = tmp_path / "eval"
    assert evaluate_command.main(folder.common + ["--output_dir", str(out), "--threshold", "0.5", "--top_k", "2"]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert digest_files(folder.root, folder.model) == before  # nothing the user gave is modified
    assert sorted(os.listdir(out)) == ["metrics.json", "per_class_ap.csv", "per_class_ap.md", "report.png"]

    data, hierarchy = evaluation.load_eval_split("folder", "test", str(folder.root), folder.options, folder.cache)
    order = data["image_id"]
    assert sorted(order) == sorted(name for name, _ in TEST_ROWS)
    model = AutoModelForImageClassification.from_pretrained(folder.model).eval()
    processor = AutoImageProcessor.from_pretrained(folder.model)
    with torch.no_grad():
        pixels = processor(images=[folder.expected[name] for name in order], return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels).logits
    labels_of = dict(TEST_ROWS)
    targets = np.array([[1.0 if name in labels_of[image] else 0.0 for name in LABELS] for image in order])
    expected = compute_all_metrics(logits, targets, from_logits=True, threshold=0.5, k=2)
    assert set(results["metrics"]) == set(expected)
    for key, value in expected.items():
        assert results["metrics"][key] == pytest.approx(value, abs=1e-4), key
    per_class = 100 * average_precision_ranked(logits, targets)
    assert [results["per_class_AP"][name] for name in LABELS] == pytest.approx(per_class.tolist(), abs=1e-4)


def test_unreadable_dataset_images_are_named(folder, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(folder.root, root)
    whole = (root / "img/tagged.jpg").read_bytes()
    (root / "img/tagged.jpg").write_bytes(whole[: len(whole) // 2])
    common = [root if item == str(folder.root) else item for item in folder.common]
    options = dict(folder.options, hierarchy=str(root / "groups.csv"))
    common[common.index("--dataset_options") + 1] = json.dumps(options)
    common[common.index("--cache_dir") + 1] = str(tmp_path / "cache")
    for workers in ("0", "1"):  # read in the main process, or in a DataLoader worker
        code = evaluate_command.main([str(c) for c in common] + ["--output_dir", str(tmp_path / "out"), "--no_plot",
                                                           "--num_workers", workers])
        line = _one_error_line(capsys)
        expected = f"hspnet evaluate: error: {root / 'img/tagged.jpg'}: cannot read this file"
        assert code == 1 and line.startswith(expected)
        assert not (tmp_path / "out" / "metrics.json").exists()

    bomb = write_png_bomb(tmp_path / "bomb.png")
    table = datasets.Dataset.from_dict({"image": [bomb], "labels": [[0]]})
    transform = batches.make_transform(lambda images, return_tensors: None, 4)
    with pytest.raises(ImageReadError, match="bomb.png.*decompression bomb"):
        table.cast_column("image", datasets.Image(decode=False)).with_transform(transform)[:]


# ----------------------------------------------------------------------------------------------------------------------
# Outputs: never an input, written whole, write errors named
# ----------------------------------------------------------------------------------------------------------------------


def test_output_dir_holding_a_dataset_image_is_refused(folder, capsys):
    before = digest_files(folder.root)
    code = evaluate_command.main(folder.common + ["--output_dir", str(folder.root / "img")])
    line = _one_error_line(capsys)
    assert code == 1 and str(folder.root / "img" / "report.png") in line and "one of the input files" in line
    assert digest_files(folder.root) == before
    assert not (folder.root / "img" / "metrics.json").exists()


def test_failed_writes_leave_previous_outputs_intact(folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    previous = {name: f"previous {name}\n" for name in evaluation.OUTPUT_FILES}
    for name, text in previous.items():
        (out / name).write_text(text)
    fail_fsync(monkeypatch)
    code = evaluate_command.main(folder.common + ["--output_dir", str(out)])
    line = _one_error_line(capsys)
    assert code == 1 and line == (f"hspnet evaluate: error: {out / 'metrics.json'}: cannot write it (No space left on "
                                  "device)")
    assert {name: (out / name).read_text() for name in previous} == previous
    assert sorted(os.listdir(out)) == sorted(previous)  # no temporary file left

    scores, targets = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]])
    with pytest.raises(OSError, match="report.png: cannot write it"):
        report.plot_report(scores, targets, ["a", "b"], str(out / "report.png"))
    with pytest.raises(OSError, match="per_class_ap.csv: cannot write it"):
        report.write_per_class_table(report.per_class_table(scores, targets, ["a", "b"]),
                                         str(out / "per_class_ap.csv"))
    assert {name: (out / name).read_text() for name in previous} == previous


def test_output_dir_that_is_a_file_fails_before_the_work(folder, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for output_dir, message in ((blocker, "exists and is not a folder"), (blocker / "sub", "is not a folder")):
        assert evaluate_command.main(folder.common + ["--output_dir", str(output_dir)]) == 1
        line = _one_error_line(capsys)
        assert str(output_dir) in line and message in line
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------------------------------------------------------------
# Broken model and CLIP folders, bad options: one line, or the traceback with --debug
# ----------------------------------------------------------------------------------------------------------------------


def _clip_args(folder, tmp_path, clip):
    args = list(folder.common)
    args[args.index("--zero_shot_clip") + 1] = str(clip)
    return args + ["--output_dir", str(tmp_path / "out"), "--no_plot"]


def test_zero_shot_clip_problems_are_one_line(folder, tiny_clip_dir, tmp_path, capsys):
    truncated = tmp_path / "clip_truncated"
    shutil.copytree(tiny_clip_dir, truncated)
    with open(truncated / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    malformed = tmp_path / "clip_malformed"
    shutil.copytree(tiny_clip_dir, malformed)
    (malformed / "config.json").write_text("{oops")
    cases = [
        (tmp_path / "no" / "such_clip", f"{tmp_path / 'no' / 'such_clip'}: zero-shot CLIP folder does not exist"),
        ("missing_clip_name", "missing_clip_name: zero-shot CLIP folder does not exist"),
        (truncated, f"{truncated / 'model.safetensors'}: not a complete safetensors file"),
        (malformed, f"{malformed / 'config.json'}, line 1: invalid JSON"),
        (folder.model, f"{folder.model}: a 'hspnet' model, not a CLIP model"),
    ]
    for clip, message in cases:
        code = evaluate_command.main(_clip_args(folder, tmp_path, clip))
        line = _one_error_line(capsys)
        assert code == 1 and line.startswith(f"hspnet evaluate: error: {message}"), line
    assert not (tmp_path / "out").exists()


def test_broken_model_in_evaluate_is_one_line_and_debug_raises(folder, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(folder.model, broken)
    (broken / "model.safetensors").write_bytes(b"")
    args = list(folder.common)
    args[args.index("--model") + 1] = str(broken)
    args += ["--output_dir", str(tmp_path / "out")]
    assert evaluate_command.main(args) == 1
    assert _one_error_line(capsys).startswith(f"hspnet evaluate: error: {broken / 'model.safetensors'}: not a complete "
                                              "safetensors file (0 bytes")
    with pytest.raises(loading.ModelLoadError, match="model.safetensors: not a complete"):
        evaluate_command.main(args + ["--debug"])  # the exception propagates: Python prints the traceback


@pytest.mark.parametrize("option, value, message", [
    ("threshold", float("nan"), "--threshold"), ("threshold", 1.5, "--threshold"), ("batch_size", 0, "--batch_size"),
    ("top_k", 0, "--top_k"), ("num_workers", -1, "--num_workers"), ("max_samples", 0, "--max_samples"),
    ("zero_shot_template", "a photo", "exactly one"), ("zero_shot_template", "a {label}", "exactly one"),
    ("zero_shot_template", "{} and {}", "exactly one"), ("zero_shot_template", "a {", "not a valid format"),
    ("dataset_options", "[1]", "--dataset_options"),
])
def test_run_evaluation_checks_options_before_any_work(folder, tmp_path, option, value, message):
    args = evaluate_command.build_parser().parse_args(folder.common + ["--output_dir", str(tmp_path / "out")])
    setattr(args, option, value)
    with pytest.raises(ValueError, match=message):
        evaluation.run_evaluation(args)
    assert not (tmp_path / "out").exists()


def test_evaluation_library_functions_check_their_arguments():
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_model

    scores, targets = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"C = 3 labels"):
        report.per_class_table(scores, targets, ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        report.per_class_table(np.array([[np.nan, 0.1], [0.2, 0.8]]), targets, ["a", "b"])
    with pytest.raises(ValueError, match="0/1"):
        report.per_class_table(scores, targets * 2, ["a", "b"])
    with pytest.raises(ValueError, match="1 groups for 2 labels"):
        report.per_class_table(scores, targets, ["a", "b"], groups=["g"])
    with pytest.raises(ValueError, match="zero_shot_scores"):
        report.per_class_table(scores, targets, ["a", "b"], zero_shot_scores=scores[:1])
    with pytest.raises(ValueError, match="3 scores for 2 targets"):
        report.precision_recall_curve([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="num_curves"):
        report.report_png(scores, targets, ["a", "b"], num_curves=0)
    with pytest.raises(ValueError, match=r"\(B, D\) image and \(C, D\) text"):
        zero_shot.zero_shot_logits(torch.ones(2, 4), torch.ones(3, 5), 10.0)
    with pytest.raises(ValueError, match="logit_scale"):
        zero_shot.zero_shot_logits(torch.ones(2, 4), torch.ones(3, 4), float("nan"))
    clip, tokenizer = tiny_clip_model(seed=0), byte_level_clip_tokenizer()
    with pytest.raises(ValueError, match="logit_scale"):
        zero_shot.ZeroShotCLIPClassifier(clip, tokenizer, ["cat"], logit_scale=-1.0)
    with pytest.raises(ValueError, match="at least one label"):
        zero_shot.ZeroShotCLIPClassifier(clip, tokenizer, [])
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot.ZeroShotCLIPClassifier(clip, tokenizer, ["cat"], template="a {name}")
    assert zero_shot.check_zero_shot_template("a {{literal}} {}") == "a {{literal}} {}"
    assert zero_shot.zero_shot_prompt("traffic_light", "a {{x}} {}.") == "a {x} traffic light."
    with pytest.raises(ValueError, match="max_samples"):
        evaluation.load_eval_split("demo", max_samples=0, dataset_options={"num_train": 4, "num_test": 4})
    with pytest.raises(ValueError, match="num_labels"):
        batches.make_transform(None, 0)


def test_training_args_and_model_card_never_block_on_a_fifo(tmp_path):
    os.mkfifo(tmp_path / "training_args.json")
    with pytest.raises(loading.ModelLoadError, match="training_args.json: the training arguments file is a FIFO"):
        zero_shot.read_training_args(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    os.mkfifo(tmp_path / "README.md")
    with pytest.raises(loading.ModelLoadError, match="README.md: the model card file is a FIFO"):
        loading.check_model_folder(str(tmp_path))
