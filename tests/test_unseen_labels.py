"""`hspnet evaluate --unseen_labels FILE` (`hspnet.apps.evaluate`): a model built on 9 of the 12 demo labels is
evaluated on the demo data with the other 3 listed as unseen. The 3 are added to the model (`add_labels`, nearest
group; nothing trained), every label is scored at once, and every metric is split into seen / unseen / all.

Expected values: the model loaded again here, the same labels added with `add_labels`, its own forward on the test
images, and `hspnet.evaluation.metrics.compute_all_metrics` on the column subsets of those logits; never numbers
captured from the command. Every bad file or label set is one line naming the file, line and label, and nothing is
written."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from hspnet.apps import evaluate as evaluation
from hspnet.cli import evaluate as evaluate_command
from hspnet.evaluation.metrics import compute_all_metrics
from tests.helpers import TINY_DEMO_OPTIONS as DEMO_OPTIONS

UNSEEN = ["lime cross", "orange ring", "cyan diamond"]  # one per group, listed out of dataset order


@pytest.fixture(scope="module")
def demo(tiny_demo_cache):
    """The demo data of the session's tiny models: ``(test split, hierarchy)``."""
    from hspnet.data import get_hierarchy, prepare_dataset

    data = prepare_dataset("demo", cache_dir=tiny_demo_cache, **DEMO_OPTIONS)
    return data["test"], get_hierarchy(data)


@pytest.fixture(scope="module")
def seen_model(tiny_clip_dir, demo, tmp_path_factory):
    """An HSPNet built from the tiny CLIP on the 9 demo labels that are not in UNSEEN (their demo groups), saved."""
    from hspnet import HSPNetForImageClassification

    _, hierarchy = demo
    labels = [name for name in hierarchy.labels if name not in UNSEEN]
    groups = [hierarchy.label_to_group[hierarchy.labels.index(name)] for name in labels]
    torch.manual_seed(0)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=labels, groups=list(hierarchy.groups),
                                                   label_to_group=groups)
    folder = tmp_path_factory.mktemp("seen-model") / "model"
    model.save_pretrained(folder)
    return str(folder)


def _file(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _args(model, tiny_demo_cache, out, unseen, *extra):
    return evaluate_command.build_parser().parse_args([
        "--model", model, "--dataset", "demo", "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
        tiny_demo_cache, "--output_dir", str(out), "--no_plot", "--unseen_labels", unseen, *extra])


def test_split_metrics_equal_metrics_of_the_column_subsets(seen_model, demo, tiny_demo_cache, tiny_clip_dir, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hspnet.data import to_multi_hot
    from hspnet.evaluation.zero_shot import ZeroShotCLIPClassifier, load_zero_shot_clip

    data, hierarchy = demo
    unseen_file = _file(tmp_path / "unseen.txt", "# the demo's held-out shapes\n\n" + "\n".join(
        f"  {name} " for name in UNSEEN) + "\n")
    results = evaluation.run_evaluation(_args(seen_model, tiny_demo_cache, tmp_path / "out", unseen_file,
                                              "--zero_shot_clip", tiny_clip_dir, "--threshold", "0.4"))
    split = results["unseen_labels"]
    dataset_order = list(hierarchy.labels)
    assert split["unseen"] == [name for name in dataset_order if name in UNSEEN]
    assert split["seen"] == [name for name in dataset_order if name not in UNSEEN]
    assert split["trained_labels_from"] == "the model's labels" and split["file"] == unseen_file
    assert len(split["added_to_model"]) == 3 and all("nearest by CLIP text similarity" in line
                                                     for line in split["added_to_model"])
    assert results["num_labels"] == 12 and set(results["per_class_AP"]) == set(dataset_order)
    with open(tmp_path / "out" / "metrics.json") as handle:
        assert json.load(handle)["unseen_labels"]["seen"] == split["seen"]
    # the model on disk is unchanged: 9 labels
    with open(os.path.join(seen_model, "config.json")) as handle:
        assert len(json.load(handle)["id2label"]) == 9

    # independently: the model with the 3 labels added (in dataset order, as the dataset lists them), its forward
    model = AutoModelForImageClassification.from_pretrained(seen_model).eval()
    model.add_labels(split["unseen"])
    labels = [model.config.id2label[i] for i in range(12)]
    assert labels == split["seen"] + split["unseen"]  # the model's 9, then the added ones
    images = [row["image"].convert("RGB") for row in data]
    targets = to_multi_hot([[labels.index(dataset_order[i]) for i in row] for row in data["labels"]], 12)
    with torch.no_grad():
        pixels = AutoImageProcessor.from_pretrained(seen_model)(images=images, return_tensors="pt")["pixel_values"]
        logits = model(pixel_values=pixels).logits
    logits = logits.numpy()
    parts = {"seen": [labels.index(n) for n in split["seen"]], "unseen": [labels.index(n) for n in split["unseen"]],
             "all": list(range(12))}
    for part, columns in parts.items():
        expected = compute_all_metrics(logits[:, columns], targets[:, columns], from_logits=True, threshold=0.4, k=3)
        assert set(split["metrics"][part]) == set(expected)
        for key, value in expected.items():
            assert split["metrics"][part][key] == pytest.approx(value, abs=1e-4), (part, key)
    assert split["metrics"]["all"] == results["metrics"]
    # the three parts differ (the check is not vacuous), and the unseen part's top-3 predicts all its 3 labels
    assert len({round(split["metrics"][part]["mAP"], 6) for part in parts}) == 3
    assert split["metrics"]["unseen"]["CR_top3"] == pytest.approx(100.0)

    # the zero-shot CLIP's metrics, split the same way
    clip, tokenizer, processor = load_zero_shot_clip(tiny_clip_dir)
    classifier = ZeroShotCLIPClassifier(clip, tokenizer, labels).eval()
    with torch.no_grad():
        zs_logits = classifier(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    for part, columns in parts.items():
        expected = compute_all_metrics(zs_logits[:, columns], targets[:, columns], from_logits=True, threshold=0.4)
        assert split["zero_shot_metrics"][part]["mAP"] == pytest.approx(expected["mAP"], abs=1e-4), part


def test_the_command_prints_the_split_table(seen_model, tiny_demo_cache, tmp_path, capsys):
    unseen_file = _file(tmp_path / "unseen.txt", "\n".join(UNSEEN))
    code = evaluate_command.main(["--model", seen_model, "--dataset_options", json.dumps(DEMO_OPTIONS),
                                  "--cache_dir", tiny_demo_cache, "--output_dir", str(tmp_path / "out"), "--no_plot",
                                  "--unseen_labels", unseen_file, "--zero_shot_clip", "none"])
    out = capsys.readouterr().out
    assert code == 0, out
    header = next(line for line in out.splitlines() if line.startswith("metric") and "unseen" in line)
    assert header.split() == ["metric", "seen", "(9)", "unseen", "(3)", "all", "(12)"]
    with open(tmp_path / "out" / "metrics.json") as handle:
        results = json.load(handle)
    row = next(line for line in out.splitlines() if line.startswith("OF1_top3 ") and len(line.split()) == 4)
    expected = [results["unseen_labels"]["metrics"][part]["OF1_top3"] for part in ("seen", "unseen", "all")]
    assert [float(cell) for cell in row.split()[1:]] == pytest.approx(expected, abs=0.006)
    assert "zero_shot_metrics" not in results["unseen_labels"]


def test_a_model_without_a_tokenizer_uses_the_zero_shot_clips(seen_model, tiny_demo_cache, tiny_clip_dir, tmp_path,
                                                               capsys):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(seen_model, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        if (folder / name).exists():
            (folder / name).unlink()
    unseen_file = _file(tmp_path / "unseen.txt", "\n".join(UNSEEN))
    common = ["--model", str(folder), "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir", tiny_demo_cache,
              "--no_plot", "--unseen_labels", unseen_file]
    code = evaluate_command.main(common + ["--output_dir", str(tmp_path / "a"), "--zero_shot_clip", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "the model has no tokenizer" in err[-1] and "--zero_shot_clip" in err[-1]
    assert not (tmp_path / "a").exists()
    results = evaluation.run_evaluation(evaluate_command.build_parser().parse_args(
        common + ["--output_dir", str(tmp_path / "b"), "--zero_shot_clip", tiny_clip_dir]))
    # the tiny CLIP's tokenizer is the model's: the same scores as with the model's own
    reference = evaluation.run_evaluation(evaluate_command.build_parser().parse_args(
        ["--model", seen_model] + common[2:] + ["--output_dir", str(tmp_path / "c"), "--zero_shot_clip", "none"]))
    assert results["unseen_labels"]["metrics"] == reference["unseen_labels"]["metrics"]


def test_a_model_saved_with_the_labels_added_is_split_by_its_trained_label_names(seen_model, tiny_demo_cache,
                                                                                  tmp_path):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(seen_model)
    model.add_labels([name for name in ("orange ring", "cyan diamond", "lime cross")])  # the dataset's order
    model.save_pretrained(tmp_path / "extended")
    unseen_file = _file(tmp_path / "unseen.txt", "\n".join(UNSEEN))
    saved = evaluation.run_evaluation(_args(str(tmp_path / "extended"), tiny_demo_cache, tmp_path / "a", unseen_file,
                                            "--zero_shot_clip", "none"))
    split = saved["unseen_labels"]
    assert split["trained_labels_from"] == "config.trained_label_names" and split["added_to_model"] == []
    # the same model as the one --unseen_labels extends in memory: the same numbers
    added = evaluation.run_evaluation(_args(seen_model, tiny_demo_cache, tmp_path / "b", unseen_file,
                                            "--zero_shot_clip", "none"))
    for part in evaluation.LABEL_SPLITS:
        assert split["metrics"][part] == pytest.approx(added["unseen_labels"]["metrics"][part], abs=1e-9), part


@pytest.mark.parametrize("text, line, message", [
    ("lime cross\nzebra\norange ring\ncyan diamond\n", 2, "'zebra' is not a label of dataset 'demo'"),
    ("lime cross\n# c\nred circle\norange ring\ncyan diamond\n", 3,
     "'red circle' is a label the model was trained on (the model's labels), so it is not unseen"),
    ("lime cross\norange ring\n\nlime cross\ncyan diamond\n", 4, "'lime cross' is listed twice (first on line 1)"),
])
def test_bad_names_in_the_file_are_one_line_naming_file_and_line(seen_model, tiny_demo_cache, tmp_path, capsys, text,
                                                                 line, message):
    unseen_file = _file(tmp_path / "unseen.txt", text)
    code = evaluate_command.main(["--model", seen_model, "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
                                  tiny_demo_cache, "--output_dir", str(tmp_path / "out"), "--unseen_labels",
                                  unseen_file, "--zero_shot_clip", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(f"hspnet evaluate: error: {unseen_file}, line {line}: ") and message in err[-1]
    assert not (tmp_path / "out").exists()


def test_label_sets_that_cannot_be_split_are_refused(seen_model, tiny_demo_model_dir, tiny_demo_cache, tmp_path,
                                                     capsys):
    from transformers import AutoModelForImageClassification

    def error(model, text, name="unseen.txt"):
        path = _file(tmp_path / name, text) if text is not None else str(tmp_path / name)
        code = evaluate_command.main(["--model", model, "--dataset_options", json.dumps(DEMO_OPTIONS), "--cache_dir",
                                      tiny_demo_cache, "--output_dir", str(tmp_path / "out"), "--unseen_labels", path,
                                      "--zero_shot_clip", "none"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err and "Traceback" not in "\n".join(err)
        assert not (tmp_path / "out").exists()
        return err[-1], path

    # a dataset label neither trained on nor listed
    line, path = error(seen_model, "lime cross\norange ring\n")
    assert "dataset label 'cyan diamond' is neither a label the model was trained on" in line and path in line
    # a file with no name, a missing file, a file that is not UTF-8
    line, path = error(seen_model, "# nothing\n\n")
    assert line.endswith(f"{path}: no label name in the --unseen_labels file (one per line; blank lines and # comments "
                         "are skipped)")
    line, path = error(seen_model, None, "missing.txt")
    assert f"{path}: --unseen_labels file not found" in line
    (tmp_path / "latin1.txt").write_bytes("lime cross\norange ring\ncyan diamond\nd\xe9j\xe0\n".encode("latin-1"))
    line, _ = error(seen_model, None, "latin1.txt")
    assert "line 4: not UTF-8 text" in line
    # the labels a model was trained on are config.trained_label_names once its label set changed: a 12-label model
    # cut down to 9 still was trained on the other 3
    model = AutoModelForImageClassification.from_pretrained(tiny_demo_model_dir)
    model.set_labels([name for name in model.config.label_names if name not in UNSEEN])
    model.save_pretrained(tmp_path / "cut")
    line, path = error(str(tmp_path / "cut"), "\n".join(UNSEEN))
    assert "line 1: 'lime cross' is a label the model was trained on (config.trained_label_names)" in line
    # a model with a label the dataset lacks
    model = AutoModelForImageClassification.from_pretrained(seen_model)
    model.add_labels(["zebra"])
    model.save_pretrained(tmp_path / "extra")
    line, _ = error(str(tmp_path / "extra"), "\n".join(UNSEEN))
    assert "the model has 1 label(s) that dataset 'demo' does not: 'zebra'" in line


def test_plan_and_split_functions():
    # read_unseen_labels / metrics_by_label_split on a small hand case
    scores = np.array([[2.0, -1.0, 0.5], [-2.0, 1.0, -0.5], [0.1, 0.2, 3.0]])
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    parts = evaluation.metrics_by_label_split(scores, targets, ["a", "b", "c"], ["b"], 0.5, 1)
    assert parts["unseen"] == compute_all_metrics(scores[:, [1]], targets[:, [1]], from_logits=True, k=1)
    assert parts["seen"] == compute_all_metrics(scores[:, [0, 2]], targets[:, [0, 2]], from_logits=True, k=1)
    assert parts["all"] == compute_all_metrics(scores, targets, from_logits=True, k=1)
    # the unseen part: label b, positive on image 1 only, which has the highest logit -> AP 100
    assert parts["unseen"]["mAP"] == pytest.approx(100.0)
    assert evaluation.metrics_by_label_split(scores, targets, ["a", "b", "c"], ["a", "b", "c"], 0.5, 1)["seen"] is None


# ----------------------------------------------------------------------------------------------------------------------
# The COCO 65 / 15 protocol: its labels file, its training config, and the documented annotation filter
# ----------------------------------------------------------------------------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_UNSEEN = ["airplane", "train", "parking meter", "cat", "bear", "suitcase", "frisbee", "snowboard", "fork",
               "sandwich", "hot dog", "toilet", "mouse", "toaster", "hair drier"]


def test_coco_unseen_file_names_fifteen_coco_labels():
    from hspnet.data.hierarchy import builtin_hierarchy

    names = [name for name, _ in evaluation.read_unseen_labels(os.path.join(REPO, "configs", "coco-unseen-15.txt"))]
    assert names == COCO_UNSEEN
    coco = builtin_hierarchy("coco").labels
    assert set(names) <= set(coco) and len(coco) - len(names) == 65


def _documented_filter():
    """The Python block of docs/evaluate-and-predict.md that writes the seen-65 annotation files."""
    import re
    import textwrap

    text = open(os.path.join(REPO, "docs", "evaluate-and-predict.md"), encoding="utf-8").read()
    blocks = [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, re.S)
              if "_seen65.json" in block]
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_filter_and_config_train_on_the_65_seen_labels(tmp_path, monkeypatch):
    from hspnet.data import load_coco
    from hspnet.data.hierarchy import builtin_hierarchy, coco_category_ids
    from hspnet.training.arguments import load_config
    from tests.helpers import make_coco_tree

    coco = builtin_hierarchy("coco")
    cid = dict(zip(coco.labels, coco_category_ids()))
    train = {1: [cid["person"], cid["car"]], 2: [cid["cat"]], 3: [cid["dog"], cid["airplane"]], 4: [cid["chair"]],
             5: [cid["dog"]]}
    val = {6: [cid["person"]], 7: [cid["hair drier"], cid["toothbrush"]], 8: [cid["toothbrush"], cid["bus"]]}
    root = make_coco_tree(tmp_path / "coco", train=train, val=val)
    code = _documented_filter().replace('root = "/data/coco"', f"root = {root!r}")
    assert f"root = {root!r}" in code
    monkeypatch.chdir(REPO)  # the snippet runs from the repository root
    exec(compile(code, "docs/evaluate-and-predict.md", "exec"), {})

    config = load_config(["--config", os.path.join(REPO, "configs", "hspnet-coco-seen65.yaml"), "--dataset_root",
                          root])
    assert config.dataset == "coco" and config.output_dir == "outputs/hspnet-coco-seen65"
    options = {key: value for key, value in config.dataset_options.items() if key != "seed"}
    data = load_coco(root, **options, validation_fraction=0, cache_dir=str(tmp_path / "cache"))
    from hspnet.data import get_hierarchy

    hierarchy = get_hierarchy(data)
    assert hierarchy.labels == [name for name in coco.labels if name not in COCO_UNSEEN]
    # every image with an unseen object is gone (2 and 3 from train, 7 from val), the others keep their labels
    kept = {split: sorted(int(image_id.rsplit("_", 1)[1].split(".")[0]) for image_id in data[split]["image_id"])
            for split in ("train", "test")}
    assert kept == {"train": [1, 4, 5], "test": [6, 8]}
    labels = {int(row["image_id"].rsplit("_", 1)[1].split(".")[0]): sorted(hierarchy.labels[i] for i in row["labels"])
              for row in data["test"]}
    assert labels == {6: ["person"], 8: ["bus", "toothbrush"]}
