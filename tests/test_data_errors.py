"""Bad input: every case raises a DatasetFormatError (a ValueError) naming the file and line / field, or, for
images, lists them with a count; the CLI prints one error line and exits with status 1."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402

from hspnet.data import (
    DatasetFormatError,
    ImageError,
    MissingFileError,
    get_build_report,
    load_coco,
    load_cub,
    load_image_folder,
    load_nuswide,
    load_voc,
    read_label_list,
    read_observed_labels,
)
from hspnet.data.cli import main  # noqa: E402
from tests.fixtures_data import (  # noqa: E402
    COCO_TRAIN,
    coco_json,
    make_coco_tree,
    make_cub_tree,
    make_nuswide_flat,
    make_nuswide_official,
    make_voc_tree,
    voc_xml,
    write_image,
    write_text,
)

datasets.disable_progress_bars()


def voc_dir(root):
    return os.path.join(root, "VOCdevkit", "VOC2012")


@pytest.mark.parametrize("loader", [load_coco, load_voc, load_nuswide, load_cub, load_image_folder])
def test_missing_root(tmp_path, loader):
    with pytest.raises(MissingFileError) as error:
        loader(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
    assert "nowhere" in str(error.value)


@pytest.mark.parametrize("loader", [load_coco, load_voc, load_nuswide, load_cub, load_image_folder])
def test_root_without_the_layout(tmp_path, loader):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError):
        loader(tmp_path / "empty", cache_dir=tmp_path / "cache")


def test_missing_annotation_files(tmp_path):
    coco = make_coco_tree(tmp_path / "coco", images=False)
    os.remove(os.path.join(coco, "annotations", "instances_val2014.json"))
    with pytest.raises(MissingFileError, match="instances_val2014.json"):
        load_coco(coco, cache_dir=tmp_path / "cache")

    voc = make_voc_tree(tmp_path / "voc", images=False)
    os.remove(os.path.join(voc_dir(voc), "Annotations", "2008_000019.xml"))
    with pytest.raises(MissingFileError, match="2008_000019.xml"):
        load_voc(voc, cache_dir=tmp_path / "cache")

    nus = make_nuswide_official(tmp_path / "nus", images=False)
    os.remove(os.path.join(nus, "Groundtruth", "TrainTestLabels", "Labels_zebra_Test.txt"))
    with pytest.raises(MissingFileError, match="Labels_zebra_Test.txt"):
        load_nuswide(nus, cache_dir=tmp_path / "cache")

    cub = make_cub_tree(tmp_path / "cub", images=False)
    os.remove(os.path.join(cub, "CUB_200_2011", "attributes", "image_attribute_labels.txt"))
    with pytest.raises(MissingFileError, match="image_attribute_labels.txt"):
        load_cub(cub, cache_dir=tmp_path / "cache")

    with pytest.raises(MissingFileError, match="observed-labels file"):
        load_voc(
            make_voc_tree(tmp_path / "voc2"), observed_labels_file=tmp_path / "nope.txt", cache_dir=tmp_path / "cache"
        )


def _raises_at(call, file_suffix, line=None, match=None):
    with pytest.raises(DatasetFormatError) as error:
        call()
    assert error.value.file is not None and error.value.file.endswith(file_suffix), error.value
    if line is not None:
        assert error.value.line == line, error.value
        assert f"line {line}" in str(error.value)
    if match is not None:
        assert match in str(error.value)
    return error.value


def test_malformed_lines_name_file_and_line(tmp_path):
    listing = write_text(tmp_path / "voc_train.txt", "2008_000008.jpg,12\n2008_000015.jpg 4\n")
    _raises_at(lambda: read_observed_labels(listing, 20), "voc_train.txt", 2, "file_name,label indices")
    listing = write_text(tmp_path / "voc_val.txt", "2008_000002.jpg,19\n\n2008_000003.jpg,14 x\n")
    _raises_at(lambda: read_label_list(listing, 20), "voc_val.txt", 3, "not an integer")
    listing = write_text(tmp_path / "two.txt", "a.jpg,1 2\n")
    _raises_at(lambda: read_observed_labels(listing, 20), "two.txt", 1, "exactly one label")

    voc = make_voc_tree(tmp_path / "voc", images=False)
    write_text(os.path.join(voc_dir(voc), "ImageSets", "Main", "val.txt"), "2008_000002\n2008_000003 1\n")
    _raises_at(lambda: load_voc(voc, cache_dir=tmp_path / "cache"), "val.txt", 2)
    voc = make_voc_tree(tmp_path / "voc_xml", images=False)
    write_text(os.path.join(voc_dir(voc), "Annotations", "2008_000019.xml"), "<annotation>\n<object>\n</annotation>\n")
    _raises_at(lambda: load_voc(voc, cache_dir=tmp_path / "cache"), "2008_000019.xml", 3, "invalid XML")

    cub = make_cub_tree(tmp_path / "cub", images=False)
    labels = os.path.join(cub, "CUB_200_2011", "attributes", "image_attribute_labels.txt")
    with open(labels) as handle:
        lines = handle.read().splitlines()
    lines[9] = "1 x 1 3 2.5"
    write_text(labels, "\n".join(lines) + "\n")
    _raises_at(lambda: load_cub(cub, cache_dir=tmp_path / "cache"), "image_attribute_labels.txt", 10)
    lines[9] = "1 10"
    write_text(labels, "\n".join(lines) + "\n")
    _raises_at(lambda: load_cub(cub, cache_dir=tmp_path / "cache"), "image_attribute_labels.txt", 10)
    write_text(os.path.join(cub, "CUB_200_2011", "images.txt"), "1 a.jpg\nnot-a-number b.jpg\n")
    _raises_at(lambda: load_cub(cub, cache_dir=tmp_path / "cache"), "images.txt", 2)

    nus = make_nuswide_official(tmp_path / "nus", images=False)
    path = os.path.join(nus, "Groundtruth", "TrainTestLabels", "Labels_sky_Test.txt")
    write_text(path, "0\n1\nyes\n0\n")
    _raises_at(lambda: load_nuswide(nus, cache_dir=tmp_path / "cache"), "Labels_sky_Test.txt", 3, "expected 0 or 1")
    write_text(path, "0\n1\n")
    _raises_at(
        lambda: load_nuswide(nus, cache_dir=tmp_path / "cache"), "Labels_sky_Test.txt", None, "has 2 lines, expected 4"
    )

    coco = make_coco_tree(tmp_path / "coco", images=False)
    write_text(os.path.join(coco, "annotations", "instances_val2014.json"), '{"images": [\n  {"id": 1,}\n]}')
    _raises_at(lambda: load_coco(coco, cache_dir=tmp_path / "cache"), "instances_val2014.json", 2, "invalid JSON")

    folder = tmp_path / "folder"
    write_image(folder / "a.png")
    write_text(folder / "metadata.csv", "file_name,labels\na.png,cat\na.png,dog,extra\n")
    _raises_at(lambda: load_image_folder(folder, cache_dir=tmp_path / "cache"), "metadata.csv", 3, "expected 2 fields")
    os.remove(folder / "metadata.csv")
    write_text(
        folder / "metadata.jsonl", '{"file_name": "a.png", "labels": ["cat"]}\n{"file_name": "b.png", "labels": [\n'
    )
    _raises_at(lambda: load_image_folder(folder, cache_dir=tmp_path / "cache"), "metadata.jsonl", 2, "invalid JSON")


def test_label_index_out_of_range(tmp_path):
    listing = write_text(tmp_path / "voc_train.txt", "2008_000008.jpg,12\n2008_000015.jpg,20\n")
    _raises_at(lambda: read_observed_labels(listing, 20), "voc_train.txt", 2, "out of range (0..19)")
    voc = make_voc_tree(tmp_path / "voc")
    _raises_at(lambda: load_voc(voc, observed_labels_file=listing, cache_dir=tmp_path / "cache"), "voc_train.txt", 2)

    nus = make_nuswide_flat(tmp_path / "nus")
    write_text(os.path.join(nus, "nus_val.txt"), "0101_324234234_m.jpg,3 81\n")
    _raises_at(lambda: load_nuswide(nus, cache_dir=tmp_path / "cache"), "nus_val.txt", 1, "out of range (0..80)")

    coco = make_coco_tree(tmp_path / "coco", images=False)
    data = coco_json("train", COCO_TRAIN)
    data["annotations"][3]["category_id"] = 999
    write_text(os.path.join(coco, "annotations", "instances_train2014.json"), json.dumps(data))
    error = _raises_at(lambda: load_coco(coco, cache_dir=tmp_path / "cache"), "instances_train2014.json")
    assert error.field == "annotations[3].category_id" and "999" in str(error)

    cub = make_cub_tree(tmp_path / "cub", images=False)
    path = os.path.join(cub, "CUB_200_2011", "attributes", "image_attribute_labels.txt")
    with open(path, "a") as handle:
        handle.write("1 313 1 3 1.0\n")
    _raises_at(
        lambda: load_cub(cub, cache_dir=tmp_path / "cache"),
        "image_attribute_labels.txt",
        8 * 312 + 1,
        "attribute id 313",
    )

    folder = tmp_path / "folder"
    write_image(folder / "a.png")
    write_text(folder / "metadata.csv", "file_name,labels\na.png,0;5\n")
    _raises_at(
        lambda: load_image_folder(folder, label_names=["cat", "dog"], cache_dir=tmp_path / "cache"),
        "metadata.csv",
        2,
        "out of range",
    )


def test_unknown_label_name(tmp_path):
    voc = make_voc_tree(tmp_path / "voc", images=False)
    write_text(os.path.join(voc_dir(voc), "Annotations", "2008_000015.xml"), voc_xml("2008_000015", [("unicorn", 0)]))
    error = _raises_at(
        lambda: load_voc(voc, cache_dir=tmp_path / "cache"), "2008_000015.xml", match="unknown label name 'unicorn'"
    )
    assert error.field == "object/name"

    folder = tmp_path / "folder"
    write_image(folder / "a.png")
    write_image(folder / "b.png")
    write_text(folder / "metadata.csv", "file_name,labels\na.png,cat\nb.png,cat;unicorn\n")
    error = _raises_at(
        lambda: load_image_folder(
            folder, label_names=["cat", "dog"], hierarchy={"cat": "animal", "dog": "animal"}, cache_dir=tmp_path / "c"
        ),
        "metadata.csv",
        3,
        "unknown label name 'unicorn'",
    )
    assert error.field == "labels"

    write_text(folder / "metadata.csv", "file_name,labels\na.png,cat\nb.png,dog\n")
    hierarchy = write_text(tmp_path / "h.csv", "label,group\ncat,animal\n")
    _raises_at(lambda: load_image_folder(folder, hierarchy=hierarchy, cache_dir=tmp_path / "c"), "h.csv", match="'dog'")


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


def test_duplicated_entries(tmp_path):
    voc = make_voc_tree(tmp_path / "voc", images=False)
    write_text(os.path.join(voc_dir(voc), "ImageSets", "Main", "train.txt"), "2008_000008\n2008_000015\n2008_000008\n")
    _raises_at(lambda: load_voc(voc, cache_dir=tmp_path / "cache"), "train.txt", 3, "listed twice (first on line 1)")

    voc = make_voc_tree(tmp_path / "voc2")
    write_text(os.path.join(voc_dir(voc), "ImageSets", "Main", "val.txt"), "2008_000002\n2008_000008\n")
    with pytest.raises(DatasetFormatError, match="listed twice .*train.* and test"):
        load_voc(voc, cache_dir=tmp_path / "cache")

    listing = write_text(tmp_path / "list.txt", "a.jpg,1\nb.jpg,2\na.jpg,3\n")
    _raises_at(lambda: read_label_list(listing, 20), "list.txt", 3, "listed twice")

    coco = make_coco_tree(tmp_path / "coco", images=False)
    data = coco_json("train", COCO_TRAIN)
    data["images"].append(dict(data["images"][0]))
    write_text(os.path.join(coco, "annotations", "instances_train2014.json"), json.dumps(data))
    error = _raises_at(
        lambda: load_coco(coco, cache_dir=tmp_path / "cache"), "instances_train2014.json", match="listed twice"
    )
    assert error.field == f"images[{len(data['images']) - 1}].id"

    folder = tmp_path / "folder"
    for name in "abcd":
        write_image(folder / f"{name}.png")
    write_text(folder / "metadata.csv", "file_name,labels\na.png,cat\nb.png,dog\nc.png,dog\nd.png,cat\na.png,dog\n")
    _raises_at(
        lambda: load_image_folder(folder, hierarchy={"cat": "pet", "dog": "pet"}, cache_dir=tmp_path / "c"),
        "metadata.csv",
        6,
    )
    merged = load_image_folder(
        folder,
        hierarchy={"cat": "pet", "dog": "pet"},
        on_duplicate="merge",
        test_fraction=0.25,
        validation_fraction=0,
        cache_dir=tmp_path / "c",
    )
    all_rows = {
        r["image_id"]: r["labels"] for split in merged.values() for r in split.select_columns(["image_id", "labels"])
    }
    assert all_rows["a.png"] == [0, 1]


def test_empty_dataset(tmp_path):
    voc = make_voc_tree(tmp_path / "voc", images=False)
    write_text(os.path.join(voc_dir(voc), "ImageSets", "Main", "train.txt"), "")
    with pytest.raises(DatasetFormatError, match="train split is empty"):
        load_voc(voc, cache_dir=tmp_path / "cache", check_images="none")

    folder = tmp_path / "folder"
    write_text(folder / "metadata.csv", "file_name,labels\n")
    with pytest.raises(DatasetFormatError, match="lists no image"):
        load_image_folder(folder, hierarchy={"cat": "pet"}, cache_dir=tmp_path / "cache")
    write_text(folder / "metadata.csv", "")
    with pytest.raises(DatasetFormatError, match="no header"):
        load_image_folder(folder, hierarchy={"cat": "pet"}, cache_dir=tmp_path / "cache")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["voc", "--root", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "cache"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prepare: error: ") and "Traceback" not in err and "nowhere" in err
    assert err.count("\n") == 1  # one line

    voc = make_voc_tree(tmp_path / "voc")
    os.remove(os.path.join(voc_dir(voc), "JPEGImages", "2008_000019.jpg"))
    assert main(["voc", "--root", voc, "--cache-dir", str(tmp_path / "cache"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "1 missing" in err and "--on-missing-image skip" in err and err.count("\n") == 1
    assert main(["voc", "--root", voc, "--cache-dir", str(tmp_path / "cache"), "-q", "--on-missing-image", "skip"]) == 0
    out = capsys.readouterr().out
    assert "Missing images: 1" in out
