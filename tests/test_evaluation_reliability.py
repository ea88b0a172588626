"""evaluate: images read as predict reads them, nothing overwritten, every bad input named in one line (issue 10).

Expected values come from first principles (numpy arrays, the EXIF specification, the model's own forward on the
equivalent 8-bit images and hspnet.evaluation.metrics on those logits), never from the code under test.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hspnet.apps import evaluate as evaluation  # noqa: E402
from hspnet.data import batches  # noqa: E402
from hspnet.evaluation import report, zero_shot  # noqa: E402
from hspnet.models import loading  # noqa: E402
from hspnet.apps.predict import load_image  # noqa: E402
from hspnet.utils.images import ImageReadError  # noqa: E402
from hspnet.evaluation.average_precision import average_precision_ranked  # noqa: E402
from hspnet.evaluation.metrics import compute_all_metrics  # noqa: E402
from tests.test_prediction_reliability import (  # noqa: E402
    LABELS,
    digest_tree,
    fail_fsync,
    save_model,
    write_exif_jpeg,
    write_float_tiff,
    write_png_16bit,
    write_png_bomb,
    write_rgb_png,
)

datasets.disable_progress_bars()
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


# ---------------------------------------------------------------------------------------------------------------------
# 2. The images evaluation sees are those predict sees
# ---------------------------------------------------------------------------------------------------------------------


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

    before = digest_tree(folder.root, folder.model)
    out = tmp_path / "eval"
    assert evaluation.main(folder.common + ["--output_dir", str(out), "--threshold", "0.5", "--top_k", "2"]) == 0
    results = json.loads((out / "metrics.json").read_text())
    assert digest_tree(folder.root, folder.model) == before  # nothing the user gave is modified
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
        code = evaluation.main([str(c) for c in common] + ["--output_dir", str(tmp_path / "out"), "--no_plot",
                                                           "--num_workers", workers])
        line = _one_error_line(capsys)
        assert code == 1 and line.startswith(f"evaluate.py: error: {root / 'img/tagged.jpg'}: cannot read this file")
        assert not (tmp_path / "out" / "metrics.json").exists()

    bomb = write_png_bomb(tmp_path / "bomb.png")
    table = datasets.Dataset.from_dict({"image": [bomb], "labels": [[0]]})
    transform = batches.make_transform(lambda images, return_tensors: None, 4)
    with pytest.raises(ImageReadError, match="bomb.png.*decompression bomb"):
        table.cast_column("image", datasets.Image(decode=False)).with_transform(transform)[:]


# ---------------------------------------------------------------------------------------------------------------------
# 3. Outputs: never an input, atomic, write errors named
# ---------------------------------------------------------------------------------------------------------------------


def test_output_dir_holding_a_dataset_image_is_refused(folder, capsys):
    before = digest_tree(folder.root)
    code = evaluation.main(folder.common + ["--output_dir", str(folder.root / "img")])
    line = _one_error_line(capsys)
    assert code == 1 and str(folder.root / "img" / "report.png") in line and "one of the input files" in line
    assert digest_tree(folder.root) == before
    assert not (folder.root / "img" / "metrics.json").exists()


def test_failed_writes_leave_previous_outputs_intact(folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    previous = {name: f"previous {name}\n" for name in evaluation.OUTPUT_FILES}
    for name, text in previous.items():
        (out / name).write_text(text)
    fail_fsync(monkeypatch)
    code = evaluation.main(folder.common + ["--output_dir", str(out)])
    line = _one_error_line(capsys)
    assert code == 1 and line == (f"evaluate.py: error: {out / 'metrics.json'}: cannot write it (No space left on "
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
        assert evaluation.main(folder.common + ["--output_dir", str(output_dir)]) == 1
        line = _one_error_line(capsys)
        assert str(output_dir) in line and message in line
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------------------------------------------------------------
# 5-6. Broken model / CLIP folders, one line or --debug
# ---------------------------------------------------------------------------------------------------------------------


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
        code = evaluation.main(_clip_args(folder, tmp_path, clip))
        line = _one_error_line(capsys)
        assert code == 1 and line.startswith(f"evaluate.py: error: {message}"), line
    assert not (tmp_path / "out").exists()


def test_broken_model_in_evaluate_is_one_line_and_debug_raises(folder, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(folder.model, broken)
    (broken / "model.safetensors").write_bytes(b"")
    args = list(folder.common)
    args[args.index("--model") + 1] = str(broken)
    args += ["--output_dir", str(tmp_path / "out")]
    assert evaluation.main(args) == 1
    assert _one_error_line(capsys).startswith(f"evaluate.py: error: {broken / 'model.safetensors'}: not a complete "
                                              "safetensors file (0 bytes")
    with pytest.raises(loading.ModelLoadError, match="model.safetensors: not a complete"):
        evaluation.main(args + ["--debug"])  # the exception propagates: Python prints the traceback


# ---------------------------------------------------------------------------------------------------------------------
# 7. Library arguments
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, message", [
    ("threshold", float("nan"), "--threshold"), ("threshold", 1.5, "--threshold"), ("batch_size", 0, "--batch_size"),
    ("top_k", 0, "--top_k"), ("num_workers", -1, "--num_workers"), ("max_samples", 0, "--max_samples"),
    ("zero_shot_template", "a photo", "exactly one"), ("zero_shot_template", "a {label}", "exactly one"),
    ("zero_shot_template", "{} and {}", "exactly one"), ("zero_shot_template", "a {", "not a valid format"),
    ("dataset_options", "[1]", "--dataset_options"),
])
def test_run_evaluation_checks_options_before_any_work(folder, tmp_path, option, value, message):
    args = evaluation.parse_args(folder.common + ["--output_dir", str(tmp_path / "out")])
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
