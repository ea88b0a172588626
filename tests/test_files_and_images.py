"""The shared writers (`hspnet.utils.files`: whole or not at all, never into an input, never outside a folder) and the
image reader (`hspnet.utils.images`: 16-bit and float images scaled, EXIF orientation applied) used by every front end,
and the training batches that read images through it (`hspnet.data.batches.make_transform`)."""

import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from hspnet.utils.files import atomic_write, refuse_inputs_as_output, write_json, write_text
from hspnet.utils.images import ImageReadError, open_image, to_rgb


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError):
        with atomic_write(target) as stream:
            stream.write("half of the new")
            raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n' and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_atomic_write_follows_links_and_never_replaces_a_device(tmp_path):
    real = tmp_path / "real.txt"
    write_text(real, "old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_text(fifo, "through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not a regular file renamed over it


@pytest.mark.skipif(not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)),
                    reason="needs the /dev/full character device")
def test_full_device_is_an_error_and_stays_a_device():
    with pytest.raises(OSError):
        write_text("/dev/full", "x" * 100000)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_refuse_inputs_as_output(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    with pytest.raises(ValueError, match="a.png: --output is one of the input files"):
        refuse_inputs_as_output(image, [tmp_path / "b.png", image])
    refuse_inputs_as_output(tmp_path / "new.txt", [image])


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 514, 1028]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    got = np.asarray(open_image(tmp_path / "g16.png"))
    want = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, 32896 -> 128
    assert got.shape == (2, 3, 3) and (got == want[..., None]).all()
    floats = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    got = np.asarray(to_rgb(Image.fromarray(floats)))
    assert (got[..., 0] == np.rint(floats * 255).astype(np.uint8)).all()


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((4, 6, 3), dtype=np.uint8)
    upright[0, :] = 255  # a white top row
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored rotated; orientation 6 = rotate 270 to view
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "r.jpg", exif=exif, quality=100)
    image = np.asarray(open_image(tmp_path / "r.jpg"))
    assert image.shape == (4, 6, 3) and image[0].mean() > 200 and image[-1].mean() < 50


def test_bad_images_are_named(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.jpg: cannot read this file as an image"):
        open_image(tmp_path / "text.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        open_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageReadError, match="more than the 100 allowed"):
        open_image(buffer.getvalue(), max_pixels=100, name="embedded.jpg")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageReadError, match="a FIFO"):
        open_image(tmp_path / "pipe.png")  # returns at once, never blocks on open()


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


def test_path_inside_by_hand(tmp_path):
    from hspnet.utils.files import path_inside, plain_file_name

    root = str(tmp_path)
    assert path_inside(root, "a/b.png", "x") == os.path.join(root, "a", "b.png")
    assert path_inside(root, "a/../b.png", "x") == os.path.join(root, "b.png")
    assert path_inside(root, "a\\b.png", "x") == os.path.join(root, "a", "b.png")
    for bad in ("../b.png", "a/../../b.png", "/abs.png", "\\abs.png", "C:/x.png", "C:x.png", "", "a\0b"):
        with pytest.raises(ValueError, match="^where: "):
            path_inside(root, bad, "where")
    assert plain_file_name("config.json", "x") == "config.json"
    for bad in ("../config.json", "a/b.json", ".hidden", "..", ".", "", None, 3, "a\\b"):
        with pytest.raises(ValueError):
            plain_file_name(bad, "x")


def test_training_transform_scales_16_bit_and_float_images_and_applies_exif(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, List
    from PIL import Image

    from hspnet.data.batches import make_transform

    # 16-bit grey 25700 = 100 * 257 -> 100 in 8 bits; float 0.2 -> 0.2 * 255 = 51; convert("RGB") alone gives 255 / 0
    Image.fromarray(np.full((4, 5), 25700, dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((4, 5), 0.2, dtype=np.float32)).save(tmp_path / "float.tiff")
    # stored 6 wide x 2 high, left half red, right half blue, EXIF orientation 6 (display rotated 90 degrees
    # clockwise): shown 2 wide x 6 high with red on top
    stored = np.zeros((2, 6, 3), dtype=np.uint8)
    stored[:, :3] = (255, 0, 0)
    stored[:, 3:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    files = [str(tmp_path / name) for name in ("grey16.png", "float.tiff", "rotated.png")]
    data = Dataset.from_dict(
        {"image": files, "labels": [[0], [1], [0, 1]]},
        features=Features({"image": ImageFeature(), "labels": List(ClassLabel(names=["a", "b"]))}),
    )
    seen = []

    def recording_processor(images, return_tensors):  # what the model's image processor receives
        seen.extend(np.asarray(image) for image in images)
        return {"pixel_values": torch.zeros(len(images), 3, 2, 2)}

    batch = data.with_transform(make_transform(recording_processor, 2))[:3]
    assert batch["labels"].tolist() == [[1, 0], [0, 1], [1, 1]]
    grey, flt, rotated = seen
    assert grey.shape == (4, 5, 3) and grey.dtype == np.uint8 and (grey == 100).all()
    assert flt.shape == (4, 5, 3) and (flt == 51).all()
    assert rotated.shape == (6, 2, 3)
    assert (rotated[:3] == (255, 0, 0)).all() and (rotated[3:] == (0, 0, 255)).all()


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_writer_gives_new_files_the_users_umask(tmp_path, tiny_clip_dir, umask, file_mode, folder_mode):
    """New files get `0o666 & ~umask` as any program's (never mkstemp's 0600, never wider than the umask allows), a
    replaced file keeps its mode (0640), and the library never calls `os.umask` (process-wide). Run in another
    interpreter (tests/scripts/umask_writers.py), whose umask this test may set."""
    import json
    import subprocess
    import sys

    from tests.helpers import SCRIPTS

    folder = tmp_path / "written"
    folder.mkdir()
    result = subprocess.run([sys.executable, str(SCRIPTS / "umask_writers.py"), str(folder), oct(umask)[2:],
                             str(tiny_clip_dir)], capture_output=True, text=True, env=dict(os.environ,
                                                                                            HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    modes = json.loads(result.stdout.strip().splitlines()[-1])
    model_files = {"model/model.safetensors", "model/config.json", "model/preprocessor_config.json",
                   "model/modeling_hspnet.py", "model/image_processing_hspnet.py"}
    assert model_files <= set(modes) and not [name for name in modes if "/." in name or name.startswith(".")]
    expected = {name: (folder_mode if name in ("model", "sub") else 0o640 if name == "existing.txt" else file_mode)
                for name in modes}
    assert {name: oct(mode) for name, mode in modes.items()} == {name: oct(mode) for name, mode in expected.items()}


def test_training_writes_its_files_with_the_users_umask(tmp_path):
    """A training run's model (transformers writes the weights through a 0600 temporary file) and checkpoints
    (safetensors writes 0600 files) get the permissions of the umask (here 0o022 -> 0644), like its other files; the
    umask is set for this test and put back."""
    import stat as stat_module

    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.helpers import tiny_options

    previous = os.umask(0o022)
    try:
        train(TrainingConfig(**tiny_options(tmp_path, epochs=1, schedule_epochs=1, evaluate_before_training=False)))
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    files = [path for path in out.rglob("*") if path.is_file() and not path.is_symlink()]
    assert out / "model.safetensors" in files and out / "checkpoints" / "epoch_0-step_6" / "ema.safetensors" in files
    modes = {str(path.relative_to(out)): oct(stat_module.S_IMODE(path.stat().st_mode)) for path in files}
    assert modes == {name: oct(0o644) for name in modes}
