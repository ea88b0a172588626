"""The images of a dataset: missing and unreadable ones counted, skipped or named in one line; checks that decode
whole images (a truncated file, a decompression bomb) and never open a FIFO (nor does any other input read)."""

import os

import datasets
import pytest

from hspnet.data import ImageError, get_build_report, load_image_folder, load_voc, save_prepared_dataset
from hspnet.cli.prepare import main
from hspnet.data.core import check_image_files
from tests.helpers import (
    finishes,
    folder_with,
    make_voc_tree,
    raises_at,
    voc_dir,
    write_image,
    write_png_bomb,
    write_text,
    write_truncated_jpeg,
)

datasets.disable_progress_bars()
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the bombs are on purpose


def test_missing_and_unreadable_images(tmp_path):
    voc = make_voc_tree(tmp_path / "voc")
    os.remove(os.path.join(voc_dir(voc), "JPEGImages", "2008_000019.jpg"))
    os.remove(os.path.join(voc_dir(voc), "JPEGImages", "2008_000007.jpg"))
    with pytest.raises(ImageError) as error:
        load_voc(voc, cache_dir=tmp_path / "cache")
    assert len(error.value.missing) == 2
    assert "2 missing and 0 unreadable" in str(error.value) and "2008_000019.jpg" in str(error.value)
    assert "on_missing_image='skip'" in str(error.value)

    data = load_voc(voc, cache_dir=tmp_path / "cache", on_missing_image="skip", validation_fraction=0)
    assert data["train"].num_rows == 8 and data["test"].num_rows == 3
    report = get_build_report(data)
    assert report["missing_images"]["count"] == 2
    assert report["bad_images_by_split"] == {"train": 1, "test": 1}

    write_text(os.path.join(voc_dir(voc), "JPEGImages", "2008_000019.jpg"), "this is not a JPEG")
    write_image(os.path.join(voc_dir(voc), "JPEGImages", "2008_000007.jpg"))
    load_voc(voc, cache_dir=tmp_path / "cache2")  # "exists" does not open the files
    with pytest.raises(ImageError) as error:
        load_voc(voc, cache_dir=tmp_path / "cache2", check_images="open")
    assert [path for path, _ in error.value.unreadable] == [os.path.join(voc_dir(voc), "JPEGImages", "2008_000019.jpg")]
    data = load_voc(voc, cache_dir=tmp_path / "cache2", check_images="open", on_missing_image="skip", num_proc=2)
    assert get_build_report(data)["unreadable_images"]["count"] == 1


def test_check_image_files_decodes_whole_images_and_never_opens_fifos(tmp_path):
    good = write_image(tmp_path / "good.jpg")
    truncated = write_truncated_jpeg(tmp_path / "truncated.jpg")
    bomb = write_png_bomb(tmp_path / "bomb.png")
    fifo = str(tmp_path / "fifo.jpg")
    os.mkfifo(fifo)
    folder = str(tmp_path / "folder.jpg")
    os.mkdir(folder)
    missing = str(tmp_path / "missing.jpg")
    paths = [good, truncated, bomb, fifo, folder, missing]
    stamps = {path: (os.stat(path).st_mtime_ns, open(path, "rb").read()) for path in (good, truncated, bomb)}

    exists = finishes(lambda: check_image_files(paths, "exists"))
    assert exists[:3] == [None, None, None] and exists[5] == "missing"
    assert "FIFO" in exists[3] and "folder" in exists[4]
    opened = finishes(lambda: check_image_files(paths, "open", num_proc=2))
    assert opened[0] is None and "truncated" in opened[1]
    assert "10000x10000 pixels" in opened[2] and "decompression bomb" in opened[2]  # the header is enough
    assert opened[3:] == exists[3:]
    assert {path: (os.stat(path).st_mtime_ns, open(path, "rb").read()) for path in stamps} == stamps


def _voc_with_bad_images(tmp_path):
    voc = make_voc_tree(tmp_path / "voc")
    images = os.path.join(voc_dir(voc), "JPEGImages")
    write_truncated_jpeg(os.path.join(images, "2008_000019.jpg"))  # train
    os.remove(os.path.join(images, "2008_000028.jpg"))
    os.mkfifo(os.path.join(images, "2008_000028.jpg"))  # train
    write_png_bomb(os.path.join(images, "2008_000009.jpg"))  # test (a PNG behind a .jpg name: PIL reads it)
    return voc, images


def test_bad_images_are_counted_skips_or_one_line_errors(tmp_path):
    voc, images = _voc_with_bad_images(tmp_path)
    with pytest.raises(ImageError) as error:
        finishes(lambda: load_voc(voc, cache_dir=tmp_path / "c"))  # exists: only the FIFO is a problem
    assert [path for path, _ in error.value.unreadable] == [os.path.join(images, "2008_000028.jpg")]
    with pytest.raises(ImageError) as error:
        finishes(lambda: load_voc(voc, cache_dir=tmp_path / "c", check_images="open"))
    assert sorted(os.path.basename(path) for path, _ in error.value.unreadable) == [
        "2008_000009.jpg", "2008_000019.jpg", "2008_000028.jpg"
    ]  # fmt: skip
    assert "\n" not in str(error.value) and "3 unreadable" in str(error.value)
    data = finishes(
        lambda: load_voc(voc, cache_dir=tmp_path / "c", check_images="open", on_missing_image="skip",
                         validation_fraction=0)
    )  # fmt: skip
    report = get_build_report(data)
    assert report["unreadable_images"]["count"] == 3 and report["bad_images_by_split"] == {"train": 2, "test": 1}
    # train: 10 images - 2 bad - 2008_000041 (difficult only) = 7; test: 4 - 1 = 3
    assert data["train"].num_rows == 7 and data["test"].num_rows == 3


def test_fifos_in_inputs_never_hang(tmp_path):
    voc = make_voc_tree(tmp_path / "voc")
    xml = os.path.join(voc_dir(voc), "Annotations", "2008_000019.xml")
    os.remove(xml)
    os.mkfifo(xml)
    raises_at(lambda: finishes(lambda: load_voc(voc, cache_dir=tmp_path / "c")), "2008_000019.xml", match="FIFO")

    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog"])
    os.remove(root / "metadata.csv")
    os.mkfifo(root / "metadata.csv")
    raises_at(lambda: finishes(lambda: load_image_folder(root, cache_dir=tmp_path / "c")), "metadata.csv",
              match="FIFO")  # fmt: skip

    # no image check at build time: embedding the images refuses the FIFO instead of blocking on it
    voc, images = _voc_with_bad_images(tmp_path / "again")
    data = load_voc(voc, cache_dir=tmp_path / "c", check_images="none")
    with pytest.raises(ImageError, match="2008_000028.jpg"):
        finishes(lambda: save_prepared_dataset(data, tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_folder_command_checks_images(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog", "c.png,cat", "d.png,dog",
                                  "e.jpg,cat"])  # fmt: skip
    write_truncated_jpeg(root / "e.jpg")
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    args = ["folder", "--root", str(root), "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "c"), "-q",
            "--protocol", "authors", "--test-fraction", "0.2"]  # fmt: skip
    assert main(args) == 0  # exists: a truncated file exists
    capsys.readouterr()
    assert main([*args, "--check-images", "open"]) == 1
    err = capsys.readouterr().err
    assert "e.jpg" in err and "truncated" in err and err.count("\n") == 1
    assert main([*args, "--check-images", "open", "--on-missing-image", "skip", "--num-proc", "2"]) == 0
    assert "Unreadable images: 1" in capsys.readouterr().out
