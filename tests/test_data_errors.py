"""Bad annotation files: every case raises a DatasetFormatError (a ValueError) naming the file and line / field:
missing files, malformed lines, labels out of range or unknown, entries given twice (also a key twice in a JSON
object), empty datasets, files cut short (they never build), and file lists whose names lead outside their folder.
Every expected value is worked out by hand from the fixture written in the test, not read from the code."""

import json
import os
from pathlib import Path

import datasets
import pytest

from hspnet.data import (
    DatasetFormatError,
    MissingFileError,
    load_coco,
    load_cub,
    load_image_folder,
    load_nuswide,
    load_voc,
    read_label_list,
    read_observed_labels,
)
from tests.helpers import (
    COCO_TRAIN,
    CUB_IMAGES,
    NUS_TEST,
    VOC_TRAIN,
    VOC_VAL,
    all_rows,
    coco_json,
    folder_with,
    make_coco_tree,
    make_cub_tree,
    make_nuswide_flat,
    make_nuswide_official,
    make_voc_tree,
    raises_at,
    voc_dir,
    voc_xml,
    write_image,
    write_text,
)

datasets.disable_progress_bars()


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


def test_other_json_inputs_with_a_key_twice(tmp_path):
    root = tmp_path / "jsonl"
    write_image(root / "a.png")
    write_text(root / "metadata.jsonl", '{"file_name": "a.png", "labels": ["cat"], "labels": ["dog"]}\n')
    raises_at(
        lambda: load_image_folder(root, hierarchy={"cat": "p"}, cache_dir=tmp_path / "c"),
        "metadata.jsonl",
        line=1,
        field="labels",
    )
    coco = make_coco_tree(tmp_path / "coco", images=False)
    path = os.path.join(coco, "annotations", "instances_val2014.json")
    text = json.dumps(coco_json("val", {139: [1]}), indent=1)
    text = text.replace('"category_id": 1,', '"category_id": 1,\n "category_id": 2,')
    write_text(path, text)
    line = text.split("\n").index(' "category_id": 2,') + 1
    raises_at(
        lambda: load_coco(coco, cache_dir=tmp_path / "c"), "instances_val2014.json", line=line, field="category_id"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Annotation files cut short never build
# ----------------------------------------------------------------------------------------------------------------------


def _cub_labels(cub):
    return os.path.join(cub, "CUB_200_2011", "attributes", "image_attribute_labels.txt")


def _read_lines(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def test_cub_attribute_labels_cut_short(tmp_path):
    cub = make_cub_tree(tmp_path / "cub", images=False, extra_column_line=False)
    lines = _read_lines(_cub_labels(cub))
    assert len(lines) == 8 * 312
    # image i, attribute a is on line (i - 1) * 312 + a: keep image 8's first 100 rows
    write_text(_cub_labels(cub), "\n".join(lines[: 7 * 312 + 100]) + "\n")
    error = raises_at(
        lambda: load_cub(cub, cache_dir=tmp_path / "c"),
        "image_attribute_labels.txt",
        line=7 * 312 + 100,
        match=("image id 8", CUB_IMAGES[7][0], "images.txt line 8", "only 100 of its 312", "attribute 101"),
    )
    assert "cut short" in str(error)
    # the last line cut in the middle of a record
    write_text(_cub_labels(cub), "\n".join(lines[: 7 * 312 + 100] + ["8 101"]))
    raises_at(lambda: load_cub(cub, cache_dir=tmp_path / "c"), "image_attribute_labels.txt", line=7 * 312 + 101)
    # an image in the middle without any row
    write_text(_cub_labels(cub), "\n".join(lines[: 2 * 312] + lines[3 * 312 :]) + "\n")
    raises_at(
        lambda: load_cub(cub, cache_dir=tmp_path / "c"),
        "image_attribute_labels.txt",
        match=("image id 3", "none of its 312 rows", "attribute 1 is missing"),
    )
    # a row given twice: image 1 attribute 5 is line 5
    write_text(_cub_labels(cub), "\n".join(lines + ["1 5 0 1 2.5"]) + "\n")
    raises_at(
        lambda: load_cub(cub, cache_dir=tmp_path / "c"),
        "image_attribute_labels.txt",
        line=8 * 312 + 1,
        match="attribute 5 of image id 1 is listed twice (first on line 5)",
    )


def test_nuswide_files_cut_short(tmp_path):
    nus = make_nuswide_official(tmp_path / "nus", images=False)
    test_list = os.path.join(nus, "ImageList", "TestImagelist.txt")
    entries = list(NUS_TEST)
    write_text(test_list, "".join(f"{p}\n" for p in entries[:3]) + entries[3][:12])  # last line cut mid-record
    raises_at(
        lambda: load_nuswide(nus, cache_dir=tmp_path / "c"),
        "TestImagelist.txt",
        line=4,
        match="does not end with an image extension",
    )
    write_text(test_list, "".join(f"{p}\n" for p in entries[:3]))  # the last line lost: labels have 4 lines
    raises_at(lambda: load_nuswide(nus, cache_dir=tmp_path / "c"), "_Test.txt", match=("has 4 lines, expected 3",))
    nus = make_nuswide_official(tmp_path / "nus2", images=False)
    labels = os.path.join(nus, "Groundtruth", "TrainTestLabels", "Labels_sky_Train.txt")
    write_text(labels, "".join(f"{v}\n" for v in _read_lines(labels)[:5]))  # 5 of 8 lines
    raises_at(
        lambda: load_nuswide(nus, cache_dir=tmp_path / "c"), "Labels_sky_Train.txt", match="has 5 lines, expected 8"
    )


def test_voc_lists_and_xml_cut_short(tmp_path):
    from hspnet.data.hierarchy import builtin_hierarchy

    voc = make_voc_tree(tmp_path / "voc", images=False)
    main_dir = os.path.join(voc_dir(voc), "ImageSets", "Main")
    for split, content in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        for name in builtin_hierarchy("voc").labels:  # the official per-class lists: every image, -1 / 0 / 1
            write_text(
                os.path.join(main_dir, f"{name}_{split}.txt"),
                "".join(f"{image_id} {1 if any(n == name for n, _ in objects) else -1}\n"
                        for image_id, objects in content.items()),
            )  # fmt: skip
    data = load_voc(voc, cache_dir=tmp_path / "c", check_images="none", validation_fraction=0)
    assert data["train"].num_rows == 9  # 2008_000041 has only a difficult object
    train = list(VOC_TRAIN)
    write_text(os.path.join(main_dir, "train.txt"), "".join(f"{i}\n" for i in train[:5]))
    raises_at(
        lambda: load_voc(voc, cache_dir=tmp_path / "c", check_images="none"),
        "train.txt",
        line=5,
        match=("5 image(s)", f"{train[5]!r}", "cut short"),
    )
    write_text(os.path.join(main_dir, "train.txt"), "".join(f"{i}\n" for i in train[:9]) + train[9][:7])
    raises_at(  # the last line cut mid-record: the class lists name an image the list lacks
        lambda: load_voc(voc, cache_dir=tmp_path / "c", check_images="none"), "train.txt", match=repr(train[9])
    )

    voc = make_voc_tree(tmp_path / "voc2", images=False)  # no per-class lists: the cut id has no annotation
    main_dir = os.path.join(voc_dir(voc), "ImageSets", "Main")
    write_text(os.path.join(main_dir, "train.txt"), "".join(f"{i}\n" for i in train[:9]) + train[9][:7])
    with pytest.raises(MissingFileError, match=train[9][:7] + ".xml"):
        load_voc(voc, cache_dir=tmp_path / "c", check_images="none")
    voc = make_voc_tree(tmp_path / "voc3", images=False)
    xml = os.path.join(voc_dir(voc), "Annotations", "2008_000019.xml")
    lines = _read_lines(xml)
    write_text(xml, "\n".join(lines[:20]))
    raises_at(lambda: load_voc(voc, cache_dir=tmp_path / "c"), "2008_000019.xml", line=20, match="invalid XML")


def test_coco_json_cut_short(tmp_path):
    coco = make_coco_tree(tmp_path / "coco", images=False)
    path = os.path.join(coco, "annotations", "instances_train2014.json")
    text = json.dumps(coco_json("train", {9: [1], 25: [24]}), indent=1)
    cut = text[: len(text) // 2]
    write_text(path, cut)
    raises_at(lambda: load_coco(coco, cache_dir=tmp_path / "c"), "instances_train2014.json", match="invalid JSON")


def test_custom_metadata_cut_short(tmp_path):
    lines = ["file_name,labels", "a.png,cat;dog", "b.png,cat", "c.png,dog", "d.png,cat;traf"]
    root = folder_with(tmp_path, lines, newline=False)  # "traffic light" cut to "traf", no line end
    groups = {"cat": "pet", "dog": "pet", "traf": "street"}
    raises_at(
        lambda: load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "c"),
        "metadata.csv",
        line=5,
        field="labels",
        match=("'traf'", "cut short"),
    )
    write_text(root / "metadata.csv", "\n".join(lines) + "\n")  # the same rows, complete: builds
    data = load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "c", test_fraction=0.25,
                             validation_fraction=0)  # fmt: skip
    assert all_rows(data)["d.png"] == [0, 2]  # cat 0, dog 1, traf 2
    write_text(root / "metadata.csv", "\n".join(lines[:4]) + "\nd.png,cat")  # no line end, known label: fine
    load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "c", test_fraction=0.25, validation_fraction=0)
    write_text(root / "metadata.csv", "\n".join(lines[:4]) + '\nd.png,"cat;dog')  # a quote never closed
    raises_at(lambda: load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "c"), "metadata.csv",
              match="malformed CSV")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# File lists that lead outside the dataset
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.png", "img/../../outside.png", "/etc/passwd", "C:/x.png"])
def test_metadata_rows_that_lead_outside_the_dataset_are_refused(tmp_path, name):
    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "img" / f"{index}.png", seed=index)
    write_image(tmp_path / "outside.png", seed=9)
    rows = ["file_name,labels,split", "img/0.png,cat,train", "img/1.png,dog,train", f"{name},cat,train",
            "img/3.png,dog,test"]
    write_text(root / "metadata.csv", "\n".join(rows) + "\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_image_folder(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    error = caught.value
    assert error.file == str(root / "metadata.csv") and error.line == 4 and error.field == "file_name"
    assert repr(name) in str(error)


def test_a_name_that_climbs_and_comes_back_inside_is_accepted(tmp_path):
    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "img" / f"{index}.png", seed=index)
    rows = ["file_name,labels,split", "img/0.png,cat,train", "img/../img/1.png,dog,train", "img/2.png,cat,train",
            "img/3.png,dog,test"]
    write_text(root / "metadata.csv", "\n".join(rows) + "\n")
    groups = write_text(tmp_path / "groups.csv", "cat,animal\ndog,animal\n")
    data = load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert "img/1.png" in data["train"]["image_id"]


def test_official_file_lists_that_lead_outside_their_folder_are_refused(tmp_path):
    """COCO's `file_name`, VOC's image ids, CUB's `images.txt` and NUS-WIDE's lists, each with one name leading
    outside: the error names the file and the line (or the JSON field)."""
    from hspnet.data import DatasetFormatError, load_coco, load_cub, load_nuswide, load_voc
    from tests import helpers as fx

    coco = fx.make_coco_tree(tmp_path / "coco")
    path = Path(coco) / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "../../secret.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError) as caught:
        load_coco(coco, cache_dir=tmp_path / "c1")
    assert caught.value.file == str(path) and caught.value.field == "images[1].file_name"

    voc = Path(fx.make_voc_tree(tmp_path / "voc")) / "VOCdevkit" / "VOC2012"
    listing = voc / "ImageSets" / "Main" / "train.txt"
    listing.write_text(listing.read_text() + "../../../../escape\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_voc(tmp_path / "voc", cache_dir=tmp_path / "c2")
    assert caught.value.file == str(listing) and caught.value.line == len(fx.VOC_TRAIN) + 1

    cub = fx.make_cub_tree(tmp_path / "cub")
    images = Path(cub) / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    lines[2] = "3 /etc/passwd"
    images.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_cub(cub, cache_dir=tmp_path / "c3")
    assert caught.value.file == str(images) and caught.value.line == 3

    nus = fx.make_nuswide_flat(tmp_path / "nus")
    listing = Path(nus) / "nus_train.txt"
    lines = listing.read_text().splitlines()
    lines[1] = "../../x_m.jpg," + lines[1].split(",", 1)[1]
    listing.write_text("\n".join(lines))
    with pytest.raises(DatasetFormatError) as caught:
        load_nuswide(nus, cache_dir=tmp_path / "c4")
    assert caught.value.file == str(listing) and caught.value.line == 2
