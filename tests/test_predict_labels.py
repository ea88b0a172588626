"""Labels at inference from the command line (`hspnet predict --labels FILE / --add_labels FILE`, see
docs/open-vocabulary.md): the scores equal those of the model after `set_labels` / `add_labels` with the same labels
and groups (the model's own API, whose exactness tests/test_open_vocabulary.py checks against a model built from
scratch), the group of each new label is said on stderr, the labels file's format and its errors (file and line
named, nothing run)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hspnet.apps.label_sets import change_model_labels, parse_label_lines
from hspnet.cli import predict as predict_command
from hspnet.data.errors import DatasetFormatError
from hspnet.data.text_files import read_label_set_file
from hspnet.models import loading


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels-images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = root / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def direct_scores(model_dir, paths, change):
    """Sigmoid scores of the loaded model after `change(model)` (the model's own set_labels / add_labels), on the
    images as the image processor prepares them: (N, C) numpy, and the label names."""
    model, processor = loading.load_model(model_dir)
    change(model)
    pixels = processor([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        scores = torch.sigmoid(model(pixel_values=pixels).logits).numpy()
    return scores, loading.label_names(model)


def run_jsonl(argv, capsys):
    assert predict_command.main([*argv, "--format", "jsonl", "--all_scores", "--no_progress"]) == 0
    captured = capsys.readouterr()
    return [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_labels_file_replaces_the_label_set(trained_tiny_model, images, tmp_path, capsys):
    model, _ = loading.load_model(trained_tiny_model)
    groups = list(model.config.group_names)
    kept = loading.label_names(model)[0]
    labels = tmp_path / "labels.txt"
    labels.write_text(f"# new labels for the shop\nzebra\t{groups[1]}\n\nlamp\n{kept}\nriver boat\t0\n",
                      encoding="utf-8")
    records, err = run_jsonl([*images, "--model", trained_tiny_model, "--labels", str(labels)], capsys)
    expected, names = direct_scores(
        trained_tiny_model, images,
        lambda m: m.set_labels(["zebra", "lamp", kept, "river boat"], label_to_group=[groups[1], None, None, 0]))
    assert names == ["zebra", "lamp", kept, "river boat"]
    for record, row in zip(records, expected):
        assert record["scores"] == pytest.approx(dict(zip(names, row.tolist())), abs=1e-6)
        assert record["labels"] == [n for n, s in sorted(zip(names, row), key=lambda x: -x[1]) if s > 0.5]
    assert "labels: 4 (3 new, not trained on)" in err
    assert f"label 'zebra' -> group '{groups[1]}' (given) (new)" in err
    assert f"label 'river boat' -> group '{groups[0]}' (given) (new)" in err
    assert "label 'lamp' -> group " in err and "(nearest by CLIP text similarity, " in err
    assert f"label {kept!r}" not in err  # kept its group: nothing to say


def test_add_labels_keeps_the_model_labels(trained_tiny_model, images, tmp_path, capsys):
    labels = tmp_path / "more.txt"
    labels.write_text("zebra\ngiraffe\n", encoding="utf-8")
    records, err = run_jsonl([*images, "--model", trained_tiny_model, "--add_labels", str(labels)], capsys)
    expected, names = direct_scores(trained_tiny_model, images, lambda m: m.add_labels(["zebra", "giraffe"]))
    model, _ = loading.load_model(trained_tiny_model)
    assert names == loading.label_names(model) + ["zebra", "giraffe"]
    for record, row in zip(records, expected):
        assert record["scores"] == pytest.approx(dict(zip(names, row.tolist())), abs=1e-6)
    assert f"labels: {len(names)} (2 new, not trained on)" in err


def test_the_model_folder_is_not_changed(trained_tiny_model, images, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in Path(trained_tiny_model).iterdir() if p.is_file()}
    labels = tmp_path / "labels.txt"
    labels.write_text("zebra\n", encoding="utf-8")
    run_jsonl([images[0], "--model", trained_tiny_model, "--labels", str(labels)], capsys)
    after = {p.name: p.read_bytes() for p in Path(trained_tiny_model).iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("text, line, message", [
    ("zebra\nlamp\nzebra\n", 3, "label 'zebra' is listed twice (first on line 1)"),
    ("zebra\ta\tb\n", 1, "expected 'label' or 'label<TAB>group', got 3 TAB-separated fields"),
    ("zebra\t\n", None, None),  # a trailing TAB is stripped with the line: 'zebra' alone
    ("\tanimal\n", 1, "empty label"),
    ("# only a comment\n\n", None, "no label name in the labels file"),
])
def test_labels_file_format_errors(tmp_path, text, line, message):
    path = tmp_path / "labels.txt"
    path.write_text(text, encoding="utf-8")
    if message is None:
        assert read_label_set_file(path) == [("zebra", None, 1)]
        return
    with pytest.raises(DatasetFormatError) as error:
        read_label_set_file(path)
    assert message in str(error.value) and str(path) in str(error.value)
    if line is not None:
        assert f"line {line}" in str(error.value)


def test_bad_labels_are_one_line_errors_before_anything_runs(trained_tiny_model, images, tmp_path, capsys):
    model, _ = loading.load_model(trained_tiny_model)
    existing = loading.label_names(model)[0]
    cases = {
        "missing": (None, "labels file not found"),
        "bad_group": ("zebra\tno such group\n", "line 1: label 'zebra': 'no such group' is not a group of the model"),
        "bad_index": ("zebra\t99\n", "'99' is not a group of the model"),
        "present": (f"{existing}\n", f"{existing!r} is already a label of the model"),
        "latin1": (b"caf\xe9\n", "UTF-8"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name}.txt"
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text, encoding="utf-8")
        option = "--add_labels" if name == "present" else "--labels"
        assert predict_command.main([images[0], "--model", trained_tiny_model, option, str(path),
                                     "--no_progress"]) == 1, name
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert captured.out == "" and len(err.splitlines()) == 1, (name, err)
        assert err.startswith("hspnet predict: error: ") and message in err and str(path) in err, (name, err)


def test_labels_need_an_hspnet_model(tmp_path):
    class Other(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="labels at inference need an HSPNet model; this one is Other"):
        change_model_labels(Other(), [("zebra", None)], extend=False)


def test_typed_labels():
    assert parse_label_lines("zebra, lamp\n\n giraffe : animal,zebra\r\nboat:") == [
        ("zebra", None), ("lamp", None), ("giraffe", "animal"), ("boat", None)]
    with pytest.raises(ValueError, match="no label name before ':'"):
        parse_label_lines(": animal")
    with pytest.raises(ValueError, match="3 labels typed; at most 2"):
        parse_label_lines("a, b, c", limit=2)
