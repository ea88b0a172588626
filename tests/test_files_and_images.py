"""The shared writers (`hspnet.utils.files`) and image reader (`hspnet.utils.images`) used by every front end."""

import io
import os
import stat

import numpy as np
import pytest
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
