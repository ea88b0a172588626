"""predict: no silent wrong results, nothing overwritten, every bad input named in one line (issue 10).

Expected values are computed here from first principles (numpy arrays, the EXIF specification, the model's own
forward on the equivalent 8-bit image), never captured from the code under test.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
import errno  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from hspnet.apps import predict as prediction  # noqa: E402
from hspnet.models import loading  # noqa: E402
from hspnet.utils.images import ImageReadError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["cat", "dog", "car", "bus"]
GROUPS = ["animal", "vehicle"]
LABEL_TO_GROUP = [0, 0, 1, 1]
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the counter-clockwise quarter turns (np.rot90's k) that bring the stored pixels upright:
# 3 = stored upside down, 6 = stored turned 90 degrees counter-clockwise (display turns it clockwise), 8 = the converse
ROT90_K = {3: 2, 6: -1, 8: 1}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers shared with tests/test_evaluation_reliability.py
# ---------------------------------------------------------------------------------------------------------------------


def save_model(tiny_clip_dir, folder, labels=LABELS, groups=GROUPS, label_to_group=LABEL_TO_GROUP, seed=0):
    from hspnet import HSPNetForImageClassification

    torch.manual_seed(seed)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=list(labels), groups=list(groups),
                                                   label_to_group=list(label_to_group))
    model.save_pretrained(folder)
    return str(folder)


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


def grey_arrays(seed=0, shape=(24, 40)):
    """A random 16-bit grey array and its 8-bit equivalent, round(v / 257) (65535 / 255 = 257)."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    return wide, np.rint(wide / 257.0).astype(np.uint8)


def write_png_16bit(path, seed=0):
    """A 16-bit grey PNG; returns the 8-bit equivalent as an RGB PIL image."""
    from PIL import Image

    wide, narrow = grey_arrays(seed)
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I")  # really stored as 16 bits
    return Image.fromarray(narrow, mode="L").convert("RGB")


def write_float_tiff(path, seed=1, shape=(24, 40)):
    """A 32-bit float grey TIFF with values in [0, 1]; returns the 8-bit equivalent (round(v * 255)) as RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    narrow = rng.integers(0, 256, size=shape).astype(np.uint8)
    values = np.clip((narrow + rng.uniform(-0.4, 0.4, size=shape)) / 255.0, 0.0, 1.0).astype(np.float32)
    Image.fromarray(values, mode="F").save(path)
    assert Image.open(path).mode == "F"
    return Image.fromarray(narrow, mode="L").convert("RGB")


def write_exif_jpeg(path, orientation=6, seed=2, shape=(24, 40)):
    """A JPEG whose EXIF orientation tag says how to turn it; returns the upright image a viewer shows (the stored
    pixels, decoded without looking at the tag, turned by np.rot90 as the EXIF specification says)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    pixels[: shape[0] // 3] = [250, 20, 20]  # a red band on top of the stored image: not rotation invariant
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as stored:
        stored.load()
        assert stored.getexif().get(EXIF_ORIENTATION) == orientation
        raw = np.asarray(stored.convert("RGB"))  # convert() ignores the tag: the pixels as stored
    return Image.fromarray(np.ascontiguousarray(np.rot90(raw, k=ROT90_K[orientation])))


def write_png_bomb(path, width=10_000, height=10_000):
    """A tiny PNG file whose header claims width x height 1-bit pixels (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 4)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return str(path)


def write_rgb_png(path, seed=3, shape=(24, 40)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


def digest_tree(*paths):
    """{path: sha256} of every regular file under the given files / folders (what 'unchanged' means)."""
    out = {}
    for top in paths:
        top = str(top)
        walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top) else os.walk(top)
        for root, _, files in walk:
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        out[path] = hashlib.sha256(handle.read()).hexdigest()
    return out


def fail_fsync(monkeypatch):
    """Make every os.fsync fail as on a full disk (atomic_write syncs before the rename)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# 1-2. Pixels: 16-bit, float, EXIF orientation
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# 3. Outputs: never an input, atomic, write errors named
# ---------------------------------------------------------------------------------------------------------------------


def test_output_that_is_an_input_is_refused_and_left_intact(model_dir, images, tmp_path, capsys):
    before = digest_tree(images["plain"], images["other"], model_dir)
    for output, what in ((images["other"], "--output is one of the input files"),
                         (os.path.join(model_dir, "config.json"), "--output (a file of the model)")):
        code = prediction.main([images["plain"], images["other"], "--model", model_dir, "--output", output,
                                "--no_progress"])
        line = _one_error_line(capsys)
        assert code == 1 and line.startswith("predict.py: error:") and output in line and what in line
    link = tmp_path / "link.png"  # the same file through a symbolic link
    link.symlink_to(images["plain"])
    assert prediction.main([images["plain"], "--model", model_dir, "--output", str(link), "--no_progress"]) == 1
    assert "one of the input files" in _one_error_line(capsys)
    assert digest_tree(images["plain"], images["other"], model_dir) == before


def test_inputs_are_byte_identical_after_predict(model_dir, images, tmp_path, capsys):
    before = digest_tree(images["plain"], images["other"], model_dir)
    out = tmp_path / "deeper" / "preds.jsonl"  # missing parent folders are created
    assert prediction.main([images["plain"], images["other"], "--model", model_dir, "--output", str(out),
                            "--format", "jsonl", "--no_progress"]) == 0
    assert [json.loads(line)["path"] for line in out.read_text().splitlines()] == [images["plain"], images["other"]]
    assert digest_tree(images["plain"], images["other"], model_dir) == before
    assert sorted(os.listdir(out.parent)) == ["preds.jsonl"]  # no temporary file left


def _dev_full_is_a_device():
    try:
        return stat.S_ISCHR(os.stat("/dev/full").st_mode)
    except OSError:
        return False


def test_full_disk_is_one_line_naming_the_output(model_dir, images, capsys):
    if not _dev_full_is_a_device():  # checked at run time: never write to it when it is not the device
        pytest.skip("needs /dev/full, the always-full character device")
    code = prediction.main([images["plain"], "--model", model_dir, "--output", "/dev/full", "--no_progress"])
    line = _one_error_line(capsys)
    assert code == 1 and line.startswith("predict.py: error: /dev/full: cannot write") and "No space left" in line
    assert _dev_full_is_a_device()  # written directly, never replaced by a regular file


def test_failed_write_leaves_the_previous_output_intact(model_dir, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "preds.txt"
    out.write_text("previous results\n")
    fail_fsync(monkeypatch)
    code = prediction.main([images["plain"], "--model", model_dir, "--output", str(out), "--no_progress"])
    line = _one_error_line(capsys)
    assert code == 1 and f"{out}: cannot write it (No space left on device)" in line
    assert out.read_text() == "previous results\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.txt"]  # the temporary file is removed


def test_output_below_a_file_fails_before_the_work(model_dir, images, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    output = blocker / "preds.txt"
    assert prediction.main([images["plain"], "--model", model_dir, "--output", str(output), "--no_progress"]) == 1
    line = _one_error_line(capsys)
    assert str(output) in line and "is not a folder" in line
    assert blocker.read_text() == "x"


def test_write_output_replaces_atomically_and_keeps_permissions(tmp_path):
    from hspnet.utils.files import write_output

    path = tmp_path / "out.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_output(str(path), "new")
    assert path.read_text() == "new" and (os.stat(path).st_mode & 0o777) == 0o640
    write_output(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_output(str(tmp_path), "x")


# ---------------------------------------------------------------------------------------------------------------------
# 4. Bombs, truncated files, FIFOs / devices / sockets
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [10_000, 20_000])  # above our limit only / above PIL's own hard limit too
def test_decompression_bomb_is_named_or_counted_as_skipped(model_dir, images, tmp_path, side, capsys):
    bomb = write_png_bomb(tmp_path / "bomb.png", side, side)
    model, processor = loading.load_model(model_dir)
    with pytest.raises(ImageReadError, match="bomb.png.*decompression bomb"):
        prediction.predict_images(model, processor, [images["plain"], bomb], progress=False)

    code = prediction.main([images["plain"], bomb, "--model", model_dir, "--no_progress"])
    line = _one_error_line(capsys)  # no DecompressionBombWarning on stderr either
    assert code == 1 and line.startswith(f"predict.py: error: {bomb}: cannot read this file as an image")

    out = tmp_path / "preds.jsonl"
    code = prediction.main([images["plain"], bomb, "--model", model_dir, "--no_progress", "--on_error", "skip",
                            "--format", "jsonl", "--output", str(out)])
    err = capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert code == 0 and [r["path"] for r in records] == [images["plain"], bomb]
    assert "labels" in records[0] and "decompression bomb" in records[1]["error"]
    assert "summary: 1 of 2 image(s) predicted; 1 skipped (1 decompression bomb)" in err


def test_pixel_limit_option(model_dir, images, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (60, 50)).save(tmp_path / "big.png")
    code = prediction.main([str(tmp_path / "big.png"), "--model", model_dir, "--max_image_pixels", "2999",
                            "--no_progress"])
    assert code == 1 and "60x50 pixels, more than the 2,999 allowed" in _one_error_line(capsys)
    assert prediction.main([str(tmp_path / "big.png"), "--model", model_dir, "--max_image_pixels", "3000",
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


@contextlib.contextmanager
def special_files_folder(root, image):
    """``root``: a new folder with a copy of ``image`` (a.png) and, under image names, a FIFO, a socket, a link to a
    device and a broken link; the socket is closed when the block ends."""
    root.mkdir()
    shutil.copy(image, root / "a.png")
    os.mkfifo(root / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(root)  # a short relative name: socket paths are limited to about 100 bytes
    try:
        server.bind("sock.jpg")
    finally:
        os.chdir(cwd)
    (root / "dev.jpg").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(root / "missing.png")
    try:
        yield root
    finally:
        server.close()


def special_files_command_lines(folder, model_dir):
    """The arguments of two `scripts/predict.py` command lines: the folder with special files, then its FIFO named
    explicitly."""
    return [[str(folder), "--model", str(model_dir), "--no_progress"],
            [str(folder / "fifo.png"), "--model", str(model_dir), "--no_progress"]]


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
        assert prediction.main([str(special_folder / name), "--model", model_dir, "--no_progress"]) == 1
        line = _one_error_line(capsys)
        assert str(special_folder / name) in line and reason in line


# ---------------------------------------------------------------------------------------------------------------------
# 5. Broken model folders
# ---------------------------------------------------------------------------------------------------------------------


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
    assert prediction.main([images["plain"], "--model", str(folder), "--no_progress"]) == 1
    line = _one_error_line(capsys)
    assert line.startswith(f"predict.py: error: {folder / culprit}") and message in line


def test_missing_model_and_model_file(images, tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    assert prediction.main([images["plain"], "--model", str(missing), "--no_progress"]) == 1
    assert _one_error_line(capsys) == f"predict.py: error: {missing}: model folder does not exist"
    assert prediction.main([images["plain"], "--model", images["plain"], "--no_progress"]) == 1
    assert "must be a folder" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------------------------------
# 6. The command line: one line, or the traceback with --debug
# ---------------------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback_and_plain_errors_are_one_line(images, tmp_path, capsys):
    # in this interpreter: the exit status and the stream contents are main()'s (scripts/predict.py only calls it)
    missing = tmp_path / "no_such_model"
    assert prediction.main([images["plain"], "--model", str(missing), "--no_progress"]) == 1
    plain = capsys.readouterr()
    assert plain.out == "" and plain.err.splitlines() == [f"predict.py: error: {missing}: model folder does not exist"]
    with pytest.raises(loading.ModelLoadError, match="model folder does not exist") as raised:
        prediction.main([images["plain"], "--model", str(missing), "--no_progress", "--debug"])  # the traceback
    assert str(raised.value) == f"{missing}: model folder does not exist"


# ---------------------------------------------------------------------------------------------------------------------
# 7. Library arguments
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# 8. Reading a model never runs code from it
# ---------------------------------------------------------------------------------------------------------------------


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
    assert prediction.main([images["plain"], "--model", str(pickled), "--no_progress"]) == 1
    assert _one_error_line(capsys).startswith(f"predict.py: error: {pickled}: model folder could not be loaded")
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
