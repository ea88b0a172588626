"""Prediction (`hspnet predict`, scripts/predict.py; `hspnet.apps.predict`): scores equal to the model's own forward,
the threshold and top-k rules, the output formats; images read as a viewer shows them (16-bit, float, EXIF
orientation); inputs never overwritten and outputs written whole; decompression bombs, truncated files, FIFOs, devices
and sockets never hang or crash it; broken model folders named in one line (and loading a model runs none of its
code); every bad argument refused by name.

Expected values are computed here from first principles (numpy arrays, the EXIF specification, the model's own
forward on the equivalent 8-bit image), never captured from the code under test."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
import torch

from hspnet.apps import predict as prediction
from hspnet.cli import predict as predict_command
from hspnet.models import loading
from hspnet.utils.images import ImageReadError
from tests.helpers import (
    PREDICT_LABEL_TO_GROUP as LABEL_TO_GROUP,
    PREDICT_LABELS as LABELS,
    TINY_DEMO_OPTIONS as DEMO_OPTIONS,
    digest_files,
    fail_fsync,
    save_model,
    special_files_folder,
    write_exif_jpeg,
    write_float_tiff,
    write_png_16bit,
    write_png_bomb,
    write_rgb_png,
)


@pytest.fixture(scope="module")
def trained_model(trained_tiny_model):
    """The session's tiny HSPNet trained for one epoch on a small demo set (tests/conftest.py)."""
    return trained_tiny_model


@pytest.fixture(scope="module")
def image_dir(trained_model, tiny_demo_cache, tmp_path_factory):
    """A few demo test images (of the trained model's demo data) in a folder tree (one in a sub-folder), plus a
    non-image file that is ignored."""
    from hspnet.data import prepare_dataset

    data = prepare_dataset("demo", cache_dir=tiny_demo_cache, **DEMO_OPTIONS)["test"]
    root = tmp_path_factory.mktemp("predict") / "images"
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


def direct_scores(model_dir, images):
    """Sigmoid scores of the saved model on 8-bit RGB PIL images, straight through transformers."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(pixel_values=processor(images=list(images), return_tensors="pt")["pixel_values"]).logits
    return torch.sigmoid(logits).numpy()


def predicted_scores(model_dir, paths):
    model, processor = loading.load_model(model_dir)
    results = prediction.predict_images(model, processor, [str(p) for p in paths], threshold=None,
                                        top_k=len(LABELS), all_scores=True, progress=False)
    assert all(r.error is None for r in results), [r.error for r in results]
    return np.array([[r.scores[name] for name in LABELS] for r in results])


@pytest.fixture(scope="module")
def model_dir(tiny_clip_dir, tmp_path_factory):
    return save_model(tiny_clip_dir, tmp_path_factory.mktemp("predict_model") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_images")
    return {"plain": write_rgb_png(root / "plain.png"), "other": write_rgb_png(root / "other.png", seed=4)}


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------------------------------------------------
# A trained tiny model: scores, selection, formats, bad inputs
# ----------------------------------------------------------------------------------------------------------------------


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
    assert predict_command.main([str(root), "--model", trained_model, "--format", "jsonl", "--top_k", "2", "--output",
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
    assert predict_command.main([*paths, "--model", trained_model, "--threshold", str(threshold), "--no_progress"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("image") and f"score > {threshold:g}" in table[0] and len(table) == 2 + len(paths)
    for line, path, row in zip(table[2:], paths, expected):
        assert line.startswith(path)
        above = [names[i] for i in np.argsort(-row, kind="stable") if row[i] > threshold]
        text = line[len(path):].strip()
        assert text == ("(no label)" if not above else
                        ", ".join(f"{n} ({row[names.index(n)]:.3f})" for n in above))

    assert predict_command.main([paths[0], "--model", trained_model, "--format", "jsonl", "--threshold", "0.0",
                            "--top_k", "3", "--no_progress"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["labels"]) == 3 and "scores" not in record


def test_predict_non_image_file_fails_by_default_cli(trained_model, image_dir, tmp_path, run_as_main):
    _, paths = image_dir
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is text, not a JPEG")
    result = run_as_main("predict.py", "--model", trained_model, paths[0], fake, "--no_progress")
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
    assert predict_command.main([str(fake), "--model", trained_model, "--on_error", "skip", "--no_progress"]) == 1
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err

    missing = str(tmp_path / "no_model")
    with pytest.raises(loading.ModelLoadError, match="no_model: model folder does not exist"):
        loading.load_model(missing)
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(loading.ModelLoadError, match="no config.json"):
        loading.load_model(str(tmp_path / "not_a_model"))
    assert predict_command.main([paths[0], "--model", missing, "--no_progress"]) == 1
    assert capsys.readouterr().err.strip() == f"hspnet predict: error: {missing}: model folder does not exist"
    for argv in ([str(tmp_path / "nope.png")], ["https://example.com/a.jpg"], [str(tmp_path / "not_a_model")]):
        assert predict_command.main([*argv, "--model", trained_model, "--no_progress"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and argv[0] in err
    with pytest.raises(ValueError, match="top_k must be in"):
        prediction.predict_images(model, processor, paths[:1], top_k=99, progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# Pixels: 16-bit, float, EXIF orientation
# ----------------------------------------------------------------------------------------------------------------------


def test_16bit_png_gets_the_scores_of_its_8bit_equivalent(model_dir, tmp_path):
    from PIL import Image

    path = tmp_path / "deep.png"
    equivalent = write_png_16bit(path)
    naive = np.asarray(Image.open(path).convert("RGB"))
    assert not np.array_equal(naive, np.asarray(equivalent))  # what convert("RGB") alone would have seen
    expected = direct_scores(model_dir, [equivalent])
    np.testing.assert_allclose(predicted_scores(model_dir, [path]), expected, atol=1e-6)
    assert np.asarray(prediction.load_image(path)).tolist() == np.asarray(equivalent).tolist()


def test_float_tiff_gets_the_scores_of_its_8bit_equivalent(model_dir, tmp_path):
    path = tmp_path / "float.tif"
    equivalent = write_float_tiff(path)
    expected = direct_scores(model_dir, [equivalent])
    np.testing.assert_allclose(predicted_scores(model_dir, [path]), expected, atol=1e-6)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(model_dir, tmp_path, orientation):
    tagged = tmp_path / f"tagged_{orientation}.jpg"
    upright = write_exif_jpeg(tagged, orientation)
    upright_file = tmp_path / "upright.png"  # the physically rotated image, no tag
    upright.save(upright_file)
    expected = direct_scores(model_dir, [upright])
    got = predicted_scores(model_dir, [tagged, upright_file])
    np.testing.assert_allclose(got, np.repeat(expected, 2, axis=0), atol=1e-6)
    assert prediction.load_image(tagged).size == upright.size


def test_exif_orientation_changes_the_scores_of_this_model(model_dir, tmp_path):
    # guards the test above: with this model, ignoring the tag would give other scores
    from PIL import Image

    upright = write_exif_jpeg(tmp_path / "tagged.jpg", 6)
    stored = Image.open(tmp_path / "tagged.jpg").convert("RGB")
    assert stored.size != upright.size
    assert not np.allclose(direct_scores(model_dir, [stored]), direct_scores(model_dir, [upright]), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs: never an input, written whole, write errors named
# ----------------------------------------------------------------------------------------------------------------------


def test_output_that_is_an_input_is_refused_and_left_intact(model_dir, images, tmp_path, capsys):
    before = digest_files(images["plain"], images["other"], model_dir)
    for output, what in ((images["other"], "--output is one of the input files"),
                         (os.path.join(model_dir, "config.json"), "--output (a file of the model)")):
        code = predict_command.main([images["plain"], images["other"], "--model", model_dir, "--output", output,
                                "--no_progress"])
        line = _one_error_line(capsys)
        assert code == 1 and line.startswith("hspnet predict: error:") and output in line and what in line
    link = tmp_path / "link.png"  # the same file through a symbolic link
    link.symlink_to(images["plain"])
    assert predict_command.main([images["plain"], "--model", model_dir, "--output", str(link), "--no_progress"]) == 1
    assert "one of the input files" in _one_error_line(capsys)
    assert digest_files(images["plain"], images["other"], model_dir) == before


def test_inputs_are_byte_identical_after_predict(model_dir, images, tmp_path, capsys):
    before = digest_files(images["plain"], images["other"], model_dir)
    out = tmp_path / "deeper" / "preds.jsonl"  # missing parent folders are created
    assert predict_command.main([images["plain"], images["other"], "--model", model_dir, "--output", str(out),
                            "--format", "jsonl", "--no_progress"]) == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [images["plain"], images["other"]]
    assert digest_files(images["plain"], images["other"], model_dir) == before
    assert sorted(os.listdir(out.parent)) == ["preds.jsonl"]  # no temporary file left


def _dev_full_is_a_device():
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


def test_full_disk_is_one_line_naming_the_output(model_dir, images, capsys):
    if not _dev_full_is_a_device():  # checked at run time: never write to it when it is not the device
        pytest.skip("needs /dev/full, the always-full character device")
    code = predict_command.main([images["plain"], "--model", model_dir, "--output", "/dev/full", "--no_progress"])
    line = _one_error_line(capsys)
    assert code == 1 and line.startswith("hspnet predict: error: /dev/full: cannot write") and "No space left" in line
    assert _dev_full_is_a_device()  # written directly, never replaced by a regular file


def test_failed_write_leaves_the_previous_output_intact(model_dir, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds.txt"
    out.write_text("previous results\n")
    fail_fsync(monkeypatch)
    code = predict_command.main([images["plain"], "--model", model_dir, "--output", str(out), "--no_progress"])
    line = _one_error_line(capsys)
    assert code == 1 and f"{out}: cannot write it (No space left on device)" in line
    assert out.read_text() == "previous results\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.txt"]  # the temporary file is removed


def test_output_below_a_file_fails_before_the_work(model_dir, images, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    output = blocker / "preds.txt"
    assert predict_command.main([images["plain"], "--model", model_dir, "--output", str(output), "--no_progress"]) == 1
    line = _one_error_line(capsys)
    assert str(output) in line and "is not a folder" in line
    assert blocker.read_text() == "x"


# ----------------------------------------------------------------------------------------------------------------------
# Bombs, truncated files, FIFOs / devices / sockets
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [10_000, 20_000])  # above our limit only / above PIL's own hard limit too
def test_decompression_bomb_is_named_or_counted_as_skipped(model_dir, images, tmp_path, side, capsys):
    bomb = write_png_bomb(tmp_path / "bomb.png", side, side)
    model, processor = loading.load_model(model_dir)
    with pytest.raises(ImageReadError, match="bomb.png.*decompression bomb"):
        prediction.predict_images(model, processor, [images["plain"], bomb], progress=False)

    code = predict_command.main([images["plain"], bomb, "--model", model_dir, "--no_progress"])
    line = _one_error_line(capsys)  # no DecompressionBombWarning on stderr either
    assert code == 1 and line.startswith(f"hspnet predict: error: {bomb}: cannot read this file as an image")

    out = tmp_path / "preds.jsonl"
    code = predict_command.main([images["plain"], bomb, "--model", model_dir, "--no_progress", "--on_error", "skip",
                            "--format", "jsonl", "--output", str(out)])
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [r["path"] for r in records] == [images["plain"], bomb]
    assert "labels" in records[0] and "decompression bomb" in records[1]["error"]
    assert "summary: 1 of 2 image(s) predicted; 1 skipped (1 decompression bomb)" in err


def test_pixel_limit_option(model_dir, images, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (60, 50)).save(tmp_path / "big.png")
    code = predict_command.main([str(tmp_path / "big.png"), "--model", model_dir, "--max_image_pixels", "2999",
                            "--no_progress"])
    assert code == 1 and "60x50 pixels, more than the 2,999 allowed" in _one_error_line(capsys)
    assert predict_command.main([str(tmp_path / "big.png"), "--model", model_dir, "--max_image_pixels", "3000",
                            "--no_progress"]) == 0


def test_truncated_jpeg_is_caught(model_dir, tmp_path, capsys):
    from PIL import Image

    whole = tmp_path / "whole.jpg"
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(whole, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: os.path.getsize(whole) * 2 // 3])
    with Image.open(cut) as header_only:  # the header alone looks fine: only a full decode finds the problem
        assert header_only.size == (64, 64)
    model, processor = loading.load_model(model_dir)
    with pytest.raises(ImageReadError, match="cut.jpg: cannot read this file as an image"):
        prediction.predict_images(model, processor, [str(whole), str(cut)], progress=False)
    results = prediction.predict_images(model, processor, [str(whole), str(cut)], on_error="skip", progress=False)
    assert results[0].error is None and "cut.jpg" in results[1].error
    assert prediction.summarize_skipped(results) == "1 of 2 image(s) predicted; 1 skipped (1 unreadable) (see the " \
                                                    "warnings above)"


@pytest.fixture
def special_folder(tmp_path, images):
    with special_files_folder(tmp_path / "in", images["plain"]) as root:
        yield root


def test_special_files_in_a_folder_are_skipped_and_reported(special_folder):
    skipped = []
    found = prediction.collect_image_paths([special_folder], skipped=skipped)
    assert found == [str(special_folder / "a.png")]
    reasons = dict(skipped)
    assert set(reasons) == {str(special_folder / n) for n in ("fifo.png", "sock.jpg", "dev.jpg", "gone.png")}
    assert reasons[str(special_folder / "fifo.png")].startswith("a FIFO")
    assert reasons[str(special_folder / "sock.jpg")].startswith("a socket")
    assert reasons[str(special_folder / "dev.jpg")].startswith("a device")
    assert reasons[str(special_folder / "gone.png")].startswith("a broken symbolic link")


def test_special_files_never_hang_the_command_line(fresh_training_runs):
    """`special_files_command_lines`, run as `python scripts/predict.py ...` in a fresh interpreter (step 3 of the
    session's `fresh_training_runs`, each command line with its own stdout and stderr; a hang would be caught by
    its timeout instead of stopping the test session)."""
    report, folder = fresh_training_runs["report"], fresh_training_runs["special_folder"]
    assert report is not None, fresh_training_runs["result"].stderr[-3000:]
    outputs = fresh_training_runs["outputs"]
    (in_folder_out, in_folder_err), (_, named_err) = (outputs.get(name, ("", "")) for name in ("predict_0",
                                                                                              "predict_1"))
    assert report["predict"][0] == 0, in_folder_err
    assert in_folder_out.splitlines()[2].startswith(str(folder / "a.png"))
    assert "summary: 1 of 1 image(s) predicted; 4 special file(s) in folders ignored" in in_folder_err
    assert f"warning: skipping {folder / 'fifo.png'}: a FIFO" in in_folder_err
    # named explicitly: a one-line error, not a hang
    assert report["predict"][1] == 1
    assert named_err.strip() == (f"predict.py: error: {folder / 'fifo.png'}: cannot read this file as an "
                                 "image (a FIFO, not a regular file)")


def test_named_device_and_link_are_one_line_errors(model_dir, special_folder, capsys):
    for name, reason in (("dev.jpg", "not a regular file"), ("gone.png", "broken symbolic link")):
        assert predict_command.main([str(special_folder / name), "--model", model_dir, "--no_progress"]) == 1
        line = _one_error_line(capsys)
        assert str(special_folder / name) in line and reason in line


# ----------------------------------------------------------------------------------------------------------------------
# Broken model folders; reading a model never runs code from it
# ----------------------------------------------------------------------------------------------------------------------


def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w") as handle:
        json.dump(config, handle)


def _drop_tensor(folder):
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    tensors.pop("hspnet.gcn.gamma")
    save_file(tensors, path, metadata={"format": "pt"})


def _nan_tensor(folder):
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    tensors["hspnet.gcn.gamma"] = torch.full_like(tensors["hspnet.gcn.gamma"], float("nan"))
    save_file(tensors, path, metadata={"format": "pt"})


def _truncate(folder, keep):
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as handle:
        handle.truncate(keep(os.path.getsize(path)))


def _fifo_config(folder):
    os.remove(os.path.join(folder, "config.json"))
    os.mkfifo(os.path.join(folder, "config.json"))


BROKEN_MODELS = {
    "empty_weights": (lambda d: _truncate(d, lambda size: 0), "model.safetensors", "not a complete safetensors file"),
    "truncated_weights": (lambda d: _truncate(d, lambda size: size - 100), "model.safetensors",
                          "not a complete safetensors file"),
    "more_labels_than_weights": (
        lambda d: _edit_config(d, id2label={str(i): n for i, n in enumerate(LABELS + ["truck"])},
                               label2id={n: i for i, n in enumerate(LABELS + ["truck"])},
                               label_to_group=LABEL_TO_GROUP + [1]),
        "", "config.json lists 5 labels (id2label) but the weights were saved for 4"),
    "malformed_config": (lambda d: open(os.path.join(d, "config.json"), "w").write('{"model_type": "hspnet",'),
                         "config.json", "invalid JSON"),
    "config_not_an_object": (lambda d: open(os.path.join(d, "config.json"), "w").write("[1, 2]"), "config.json",
                             "must hold a JSON object"),
    "malformed_preprocessor": (lambda d: open(os.path.join(d, "preprocessor_config.json"), "w").write("{,}"),
                               "preprocessor_config.json", "invalid JSON"),
    "missing_tensor": (_drop_tensor, "", "the weights lack 1 tensor(s) the model needs (hspnet.gcn.gamma)"),
    "nan_weights": (_nan_tensor, "", "NaN or infinite values in 1 tensor(s) (hspnet.gcn.gamma)"),
    "no_weights": (lambda d: os.remove(os.path.join(d, "model.safetensors")), "", "could not be loaded"),
    "fifo_config": (_fifo_config, "config.json", "a FIFO, not a regular file"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MODELS))
def test_broken_model_folder_is_one_line_naming_the_file(model_dir, images, tmp_path, capsys, case):
    breaker, culprit, message = BROKEN_MODELS[case]
    folder = tmp_path / case
    shutil.copytree(model_dir, folder)
    breaker(str(folder))
    with pytest.raises(loading.ModelLoadError) as caught:
        loading.load_model(str(folder))
    assert str(folder / culprit) in str(caught.value) and message in str(caught.value)
    assert predict_command.main([images["plain"], "--model", str(folder), "--no_progress"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"hspnet predict: error: {folder / culprit}") and message in line


def test_missing_model_and_model_file(images, tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert predict_command.main([images["plain"], "--model", str(missing), "--no_progress"]) == 1
    assert _one_error_line(capsys) == f"hspnet predict: error: {missing}: model folder does not exist"
    assert predict_command.main([images["plain"], "--model", images["plain"], "--no_progress"]) == 1
    assert "must be a folder" in _one_error_line(capsys)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_a_model_runs_none_of_its_code(model_dir, images, tmp_path, capsys):
    # a pickle that would create a file when unpickled, as the only weights
    pickled = tmp_path / "pickled"
    shutil.copytree(model_dir, pickled)
    os.remove(pickled / "model.safetensors")
    marker = tmp_path / "pickle_ran"
    torch.save({"hspnet.gcn.gamma": _RunsCodeWhenUnpickled(str(marker))}, pickled / "pytorch_model.bin")
    assert predict_command.main([images["plain"], "--model", str(pickled), "--no_progress"]) == 1
    assert _one_error_line(capsys).startswith(f"hspnet predict: error: {pickled}: model folder could not be loaded")
    assert not marker.exists()

    # the remote code saved beside the weights is not imported without --trust_remote_code
    remote = tmp_path / "remote"
    shutil.copytree(model_dir, remote)
    marker = tmp_path / "remote_code_ran"
    for name in os.listdir(remote):
        if name.endswith(".py"):
            with open(remote / name, "a") as handle:
                handle.write(f"\nopen({str(marker)!r}, 'w').close()\n")
    model, _ = loading.load_model(str(remote))
    assert type(model).__module__ == "hspnet.models.hspnet.modeling_hspnet" and not marker.exists()


# ----------------------------------------------------------------------------------------------------------------------
# The command line: one line, or the traceback with --debug; library arguments
# ----------------------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_and_plain_errors_are_one_line(images, tmp_path, capsys):
    # in this interpreter: the exit status and the stream contents are main()'s (scripts/predict.py only calls it)
    missing = tmp_path / "no_such_model"
    assert predict_command.main([images["plain"], "--model", str(missing), "--no_progress"]) == 1
    plain = capsys.readouterr()
    assert plain.out == "" and plain.err.splitlines() == [f"hspnet predict: error: {missing}: model folder does not exist"]
    with pytest.raises(FileNotFoundError, match="model folder does not exist") as raised:  # the command's check
        predict_command.main([images["plain"], "--model", str(missing), "--no_progress", "--debug"])  # the traceback
    assert str(raised.value) == f"{missing}: model folder does not exist"


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -2}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": float("inf")}, "threshold"), ({"threshold": -0.1}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"threshold": "0.5"}, "threshold"), ({"top_k": 0}, "top_k"), ({"top_k": -1}, "top_k"), ({"top_k": 1.5}, "top_k"),
    ({"top_k": 99}, "top_k"), ({"threshold": None, "top_k": None}, "threshold, a top_k"),
    ({"on_error": "ignore"}, "on_error"), ({"max_pixels": 0}, "max_pixels"),
])
def test_predict_images_checks_its_arguments(model_dir, images, kwargs, name):
    model, processor = loading.load_model(model_dir)
    with pytest.raises(ValueError, match=name):
        prediction.predict_images(model, processor, [images["plain"]], progress=False, **kwargs)


def test_other_library_arguments_are_checked(model_dir, images, tmp_path):
    model, processor = loading.load_model(model_dir)
    # a single path is one image, not a sequence of characters
    single = prediction.predict_images(model, processor, images["plain"], progress=False)
    assert [r.path for r in single] == [images["plain"]]
    with pytest.raises(ValueError, match="paths must hold paths"):
        prediction.predict_images(model, processor, [images["plain"], 3], progress=False)
    assert prediction.collect_image_paths(images["plain"]) == [images["plain"]]
    with pytest.raises(ValueError, match="extensions"):
        prediction.collect_image_paths([images["plain"]], extensions=[])
    names = ["a", "b"]
    for kwargs, name in (({"threshold": float("nan")}, "threshold"), ({"top_k": 0}, "top_k"),
                         ({"threshold": 2}, "threshold")):
        with pytest.raises(ValueError, match=name):
            prediction.select_labels([0.1, 0.9], names, **kwargs)
    with pytest.raises(ValueError, match="3 scores for 2 label names"):
        prediction.select_labels([0.1, 0.9, 0.3], names)
    with pytest.raises(ValueError, match="NaN"):
        prediction.select_labels([0.1, float("nan")], names)
    for kwargs, name in (({"digits": -1}, "digits"), ({"threshold": -1}, "threshold"), ({"top_k": 0}, "top_k")):
        with pytest.raises(ValueError, match=name):
            prediction.format_table([], **kwargs)
    from hspnet.utils.validation import check_positive_int, check_probability

    for bad in ("0", 0.5, -1, None, True):
        with pytest.raises(ValueError, match="probe"):
            check_positive_int(bad, "probe")
    assert check_positive_int(0, "probe", minimum=0) == 0
    for bad in ("0.5", float("nan"), -0.1, 1.5, True):
        with pytest.raises(ValueError, match="probe"):
            check_probability(bad, "probe")
    assert check_probability(1, "probe") == 1.0 and check_probability(None, "probe") is None
