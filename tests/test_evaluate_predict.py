"""scripts/evaluate.py and scripts/predict.py (hspnet.apps.evaluate, hspnet.apps.predict) on a tiny trained demo model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import json  # noqa: E402
import runpy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hspnet.apps import evaluate as evaluation  # noqa: E402
from hspnet.apps import predict as prediction  # noqa: E402
from hspnet.data.batches import label_permutation  # noqa: E402
from hspnet.evaluation import report, zero_shot  # noqa: E402
from hspnet.models import loading  # noqa: E402
from hspnet.utils.images import ImageReadError  # noqa: E402
from hspnet.evaluation.average_precision import average_precision_ranked  # noqa: E402
from hspnet.evaluation.metrics import compute_all_metrics  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from tests.conftest import TINY_DEMO_OPTIONS as DEMO_OPTIONS  # noqa: E402
ALL_METRIC_KEYS = set(compute_all_metrics(np.eye(3), np.eye(3), k=3))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run_script(monkeypatch, capsys):
    """Run `scripts/<name>` as __main__ in this interpreter: its exit status, stdout and stderr (a fresh interpreter
    running the `hspnet` command is tests/test_cli.py's; the script adds only its exit status)."""

    def run(name, *args):
        script = os.path.join(REPO, "scripts", name)
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(script, run_name="__main__")
        out = capsys.readouterr()
        return subprocess.CompletedProcess([script, *args], stop.value.code, out.out, out.err)

    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_demo_cache):
    """This module's folder; `cache` is the datasets cache of the session's trained model (its demo data)."""
    folder = tmp_path_factory.mktemp("eval_predict")
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
    code = evaluation.main([
        "--model", trained_model, "--dataset", "demo", "--dataset_options", json.dumps(DEMO_OPTIONS),
        "--cache_dir", str(workspace / "cache"), "--output_dir", str(out), "--batch_size", "10",
    ])
    assert code == 0
    with open(out / "metrics.json") as handle:
        return out, json.load(handle)


@pytest.fixture(scope="module")
def image_dir(test_split, workspace):
    """A few demo test images in a folder tree (one in a sub-folder), plus a non-image file that is ignored."""
    data, _ = test_split
    root = workspace / "images"
    (root / "sub").mkdir(parents=True)
    paths = []
    for i in range(5):
        path = root / ("sub" if i == 4 else "") / f"img_{i}.png"
        data[i]["image"].save(path)
        paths.append(str(path))
    (root / "notes.txt").write_text("not an image")
    return root, paths


def _direct_scores(model_dir, paths):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        logits = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    return torch.sigmoid(logits).numpy(), loading.label_names(model)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------------


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
    results = evaluation.run_evaluation(evaluation.parse_args([
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

    skipped = evaluation.run_evaluation(evaluation.parse_args([
        "--model", str(tmp_path / "untrained"), "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
        str(workspace / "cache"), "--output_dir", str(tmp_path / "out2"), "--max_samples", "4", "--no_plot",
    ]))
    assert "does not record the CLIP" in skipped["zero_shot"]["skipped"] and "metrics" not in skipped["zero_shot"]


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


def test_evaluate_unknown_split_exits_with_one_line_message(trained_model, workspace, run_script):
    result = run_script("evaluate.py", "--model", trained_model, "--dataset", "demo", "--dataset_options",
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
    code = evaluation.main(["--model", missing, "--dataset", "demo", "--cache_dir", cache])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1] == f"evaluate.py: error: {missing}: model folder does not exist"
    with pytest.raises(SystemExit):  # argparse: invalid JSON
        evaluation.parse_args(["--model", trained_model, "--dataset_options", "{not json"])


# ---------------------------------------------------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------------------------------------------------


def test_collect_image_paths(image_dir, tmp_path):
    root, paths = image_dir
    found = prediction.collect_image_paths([root])
    assert sorted(found) == sorted(paths) and not any(p.endswith(".txt") for p in found)
    assert prediction.collect_image_paths([paths[0], root]) == [paths[0]] + [p for p in found if p != paths[0]]
    with pytest.raises(FileNotFoundError, match="missing.png: no such file"):
        prediction.collect_image_paths([str(tmp_path / "missing.png")])
    for url in ("http://example.com/cat.jpg", "https://example.com/cat.jpg"):
        with pytest.raises(ValueError, match="URLs are not supported"):
            prediction.collect_image_paths([url])
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="empty: folder contains no image files"):
        prediction.collect_image_paths([str(tmp_path / "empty")])


def test_predict_scores_equal_model_forward(trained_model, image_dir):
    _, paths = image_dir
    model, processor = loading.load_model(trained_model)
    results = prediction.predict_images(model, processor, paths, batch_size=2, top_k=12, threshold=None,
                                        all_scores=True, progress=False)
    expected, names = _direct_scores(trained_model, paths)
    assert [r.path for r in results] == paths
    got = np.array([[r.scores[n] for n in names] for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for result, row in zip(results, expected):  # all labels, by decreasing score
        assert [s for _, s in result.labels] == pytest.approx(sorted(row, reverse=True), abs=1e-6)


def test_threshold_and_top_k_selection():
    names, scores = ["a", "b", "c", "d"], [0.2, 0.9, 0.6, 0.6]
    assert prediction.select_labels(scores, names, threshold=0.5) == [("b", 0.9), ("c", 0.6), ("d", 0.6)]
    assert prediction.select_labels(scores, names, threshold=None, top_k=2) == [("b", 0.9), ("c", 0.6)]
    assert prediction.select_labels(scores, names, threshold=0.95, top_k=2) == []
    assert prediction.select_labels(scores, names, threshold=0.7, top_k=3) == [("b", 0.9)]
    assert prediction.select_labels(scores, names, threshold=0.6) == [("b", 0.9)]  # strict '>'
    with pytest.raises(ValueError):
        prediction.select_labels(scores, names, threshold=None, top_k=None)


def test_predict_cli_formats(trained_model, image_dir, tmp_path, capsys):
    root, paths = image_dir
    expected, names = _direct_scores(trained_model, paths)
    order = {p: i for i, p in enumerate(paths)}

    out = tmp_path / "preds.jsonl"
    assert prediction.main([str(root), "--model", trained_model, "--format", "jsonl", "--top_k", "2", "--output",
                            str(out), "--all_scores", "--no_progress"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in records) == sorted(paths)
    for record in records:
        row = expected[order[record["path"]]]
        best = np.argsort(-row, kind="stable")[:2]
        assert record["labels"] == [names[i] for i in best]
        assert [p["score"] for p in record["predictions"]] == pytest.approx(row[best].tolist(), abs=1e-6)
        assert record["scores"] == pytest.approx(dict(zip(names, row.tolist())), abs=1e-6)

    threshold = float(np.median(expected))  # some labels above, some below
    assert prediction.main([*paths, "--model", trained_model, "--threshold", str(threshold), "--no_progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("image") and f"score > {threshold:g}" in table[0] and len(table) == 2 + len(paths)
    for line, path, row in zip(table[2:], paths, expected):
        assert line.startswith(path)
        above = [names[i] for i in np.argsort(-row, kind="stable") if row[i] > threshold]
        text = line[len(path):].strip()
        assert text == ("(no label)" if not above else
                        ", ".join(f"{n} ({row[names.index(n)]:.3f})" for n in above))

    assert prediction.main([paths[0], "--model", trained_model, "--format", "jsonl", "--threshold", "0.0",
                            "--top_k", "3", "--no_progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["labels"]) == 3 and "scores" not in record


def test_predict_non_image_file_fails_by_default_cli(trained_model, image_dir, tmp_path, run_script):
    _, paths = image_dir
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is text, not a JPEG")
    result = run_script("predict.py", "--model", trained_model, paths[0], fake, "--no_progress")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"predict.py: error: {fake}: cannot read this file as an image (not a recognised image format)"
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_predict_bad_inputs(trained_model, image_dir, tmp_path, capsys):
    _, paths = image_dir
    fake = tmp_path / "fake.jpg"
    fake.write_text("text")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(paths[0], "rb").read()[:60])
    model, processor = loading.load_model(trained_model)
    for bad in (fake, truncated):
        with pytest.raises(ImageReadError, match=str(bad.name)):
            prediction.predict_images(model, processor, [paths[0], str(bad)], progress=False)
    results = prediction.predict_images(model, processor, [str(fake), paths[0], str(truncated), paths[1]],
                                        batch_size=3, on_error="skip", progress=False)
    assert [r.path for r in results] == [str(fake), paths[0], str(truncated), paths[1]]
    assert [r.error is not None for r in results] == [True, False, True, False]
    assert "SKIPPED" in prediction.format_table(results) and '"error"' in prediction.format_jsonl(results)
    assert "warning: skipping" in capsys.readouterr().err
    # every image unreadable: exit 1 even with --on_error skip
    assert prediction.main([str(fake), "--model", trained_model, "--on_error", "skip", "--no_progress"]) == 1
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err

    missing = str(tmp_path / "no_model")
    with pytest.raises(loading.ModelLoadError, match="no_model: model folder does not exist"):
        loading.load_model(missing)
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(loading.ModelLoadError, match="no config.json"):
        loading.load_model(str(tmp_path / "not_a_model"))
    assert prediction.main([paths[0], "--model", missing, "--no_progress"]) == 1
    assert capsys.readouterr().err.strip() == f"predict.py: error: {missing}: model folder does not exist"
    for argv in ([str(tmp_path / "nope.png")], ["https://example.com/a.jpg"], [str(tmp_path / "not_a_model")]):
        assert prediction.main([*argv, "--model", trained_model, "--no_progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and argv[0] in err
    with pytest.raises(ValueError, match="top_k must be in"):
        prediction.predict_images(model, processor, paths[:1], top_k=99, progress=False)
