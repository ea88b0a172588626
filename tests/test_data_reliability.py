"""Reliability of the dataset builders (issue 10): one explicit label-separator rule per file, duplicate keys and
groups refused, UTF-8 byte-order marks accepted, outputs replaced as a whole, files cut short never built, images
fully decoded when checked (FIFOs never opened), and every bad input in the CLI ending in one line.

Every expected value below is worked out by hand from the fixture written in the test, not read from the code."""

import json
import os
import struct
import threading
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from datasets import Dataset, Value  # noqa: E402
from PIL import Image  # noqa: E402

from hspnet.data import (
    DatasetFormatError,
    ImageError,
    MissingFileError,
    get_build_report,
    get_hierarchy,
    load_coco,
    load_cub,
    load_custom_dataset,
    load_hierarchy_file,
    load_image_folder,
    load_nuswide,
    load_voc,
    read_observed_labels,
    save_prepared_dataset,
)
from hspnet.data.cli import main  # noqa: E402
from hspnet.data.core import check_image_files  # noqa: E402
from tests.fixtures_data import (  # noqa: E402
    CUB_IMAGES,
    VOC_TRAIN,
    VOC_VAL,
    coco_json,
    cub_expected,
    make_coco_tree,
    make_cub_tree,
    make_nuswide_official,
    make_voc_tree,
    nus_expected,
    NUS_TEST,
    NUS_TRAIN,
    write_image,
    write_text,
)

datasets.disable_progress_bars()
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the bombs are on purpose

BOM = "\ufeff"


def rows_by_id(dataset):
    return {row["image_id"]: row["labels"] for row in dataset.select_columns(["image_id", "labels"])}


def all_rows(data):
    out = {}
    for split in data.values():
        out.update(rows_by_id(split))
    return out


def raises_at(call, file_suffix, line=None, field=None, match=()):
    with pytest.raises(DatasetFormatError) as error:
        call()
    message = str(error.value)
    assert error.value.file is not None and error.value.file.endswith(file_suffix), message
    if line is not None:
        assert error.value.line == line and f"line {line}" in message, message
    if field is not None:
        assert error.value.field == field, message
    for text in (match,) if isinstance(match, str) else match:
        assert text in message, message
    assert "\n" not in message
    return error.value


def finishes(call, timeout=60):
    """Run ``call`` in a thread; fail (instead of hanging the suite) if it does not return within ``timeout``."""
    result = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked (a FIFO was opened?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def folder_with(tmp_path, lines, name="data", images=None, newline=True):
    """A folder with ``metadata.csv`` = ``lines`` and an 8x8 image for every file name in the first column."""
    root = tmp_path / name
    for seed, line in enumerate(lines[1:]):
        write_image(root / line.split(",")[0], seed=seed)
    text = "\n".join(lines) + ("\n" if newline else "")
    write_text(root / "metadata.csv", text)
    return root


# --------------------------------------------------------------------------------------------------------------
# 1. label strings: ';' by default, label names may contain spaces, one rule per file


def test_label_names_may_contain_spaces(tmp_path):
    root = folder_with(
        tmp_path,
        [
            "file_name,labels,split",
            "a.png,tabby cat;dog,train",
            "b.png,tabby cat,train",
            "c.png, black  cat ; dog ,train",  # spaces around a name dropped, inner runs count as one space
            "d.png,dog,test",
        ],
    )
    groups = {"tabby cat": "cat", "black cat": "cat", "dog": "dog"}
    data = load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "cache", validation_fraction=0)
    # labels sorted by name: black cat 0, dog 1, tabby cat 2
    assert get_hierarchy(data).labels == ["black cat", "dog", "tabby cat"]
    assert all_rows(data) == {"a.png": [1, 2], "b.png": [2], "c.png": [0, 1], "d.png": [1]}


def test_default_separator_refuses_files_that_earlier_versions_split_otherwise(tmp_path):
    spaces = folder_with(tmp_path, ["file_name,labels", "a.png,cat dog", "b.png,cat", "c.png,dog", "d.png,dog"])
    raises_at(
        lambda: load_image_folder(spaces, hierarchy={"cat": "pet", "dog": "pet"}, cache_dir=tmp_path / "c"),
        "metadata.csv",
        line=2,
        field="labels",
        match=("'cat dog'", "--label-separator", "space"),
    )
    split = load_image_folder(
        spaces,
        label_separator="space",
        hierarchy={"cat": "pet", "dog": "pet"},
        cache_dir=tmp_path / "c",
        test_fraction=0.25,
        validation_fraction=0,
    )
    assert all_rows(split)["a.png"] == [0, 1]  # cat 0, dog 1
    whole = load_image_folder(
        spaces,
        label_separator=";",  # chosen: "cat dog" is ONE label
        hierarchy={"cat dog": "pet", "cat": "pet", "dog": "pet"},
        cache_dir=tmp_path / "c",
        test_fraction=0.25,
        validation_fraction=0,
    )
    assert get_hierarchy(whole).labels == ["cat", "cat dog", "dog"]
    assert all_rows(whole)["a.png"] == [1]

    pipes = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,cat|dog", "c.png,dog"], name="pipes")
    raises_at(
        lambda: load_image_folder(pipes, hierarchy={"cat": "pet", "dog": "pet"}, cache_dir=tmp_path / "c"),
        "metadata.csv",
        line=3,
        field="labels",
        match=("'|'", "label_separator='|'"),
    )
    data = load_image_folder(
        pipes,
        label_separator="|",
        hierarchy={"cat": "pet", "dog": "pet"},
        cache_dir=tmp_path / "c",
        test_fraction=0.34,
        validation_fraction=0,
    )
    assert all_rows(data)["b.png"] == [0, 1]

    commas = folder_with(tmp_path, ["file_name,labels", 'a.png,"cat,dog"', "b.png,cat", "c.png,dog"], name="commas")
    raises_at(
        lambda: load_image_folder(commas, hierarchy={"cat": "pet", "dog": "pet"}, cache_dir=tmp_path / "c"),
        "metadata.csv",
        line=2,
        match="','",
    )
    data = load_image_folder(
        commas,
        label_separator=",",
        hierarchy={"cat": "pet", "dog": "pet"},
        cache_dir=tmp_path / "c",
        test_fraction=0.34,
        validation_fraction=0,
    )
    assert all_rows(data)["a.png"] == [0, 1]


def test_a_file_that_uses_semicolons_keeps_commas_and_spaces_in_names(tmp_path):
    root = folder_with(
        tmp_path,
        ["file_name,labels", 'a.png,"sofa, couch;tabby cat"', "b.png,tabby cat", "c.png,sofa, couch"],
    )
    # the CSV row c.png has 3 fields: that is a CSV error, not a label question
    raises_at(lambda: load_image_folder(root, hierarchy={}, cache_dir=tmp_path / "c"), "metadata.csv", line=4)
    write_text(
        root / "metadata.csv",
        'file_name,labels\na.png,"sofa, couch;tabby cat"\nb.png,tabby cat\nc.png,"sofa, couch"\n',
    )
    data = load_image_folder(
        root,
        hierarchy={"sofa, couch": "furniture", "tabby cat": "animal"},
        cache_dir=tmp_path / "c",
        test_fraction=0.34,
        validation_fraction=0,
    )
    # labels sorted: "sofa, couch" 0, "tabby cat" 1
    assert all_rows(data) == {"a.png": [0, 1], "b.png": [1], "c.png": [0]}


def test_separator_rule_for_jsonl_and_hugging_face_datasets(tmp_path):
    root = tmp_path / "jsonl"
    for seed, name in enumerate("abc"):
        write_image(root / f"{name}.png", seed=seed)
    rows = [("a.png", ["tabby cat", "dog"]), ("b.png", ["tabby cat"]), ("c.png", ["dog"])]
    write_text(root / "metadata.jsonl", "".join(json.dumps({"file_name": f, "labels": x}) + "\n" for f, x in rows))
    data = load_image_folder(
        root, hierarchy={"tabby cat": "cat", "dog": "dog"}, cache_dir=tmp_path / "c", test_fraction=0.34,
        validation_fraction=0,
    )  # fmt: skip
    assert all_rows(data) == {"a.png": [0, 1], "b.png": [1], "c.png": [0]}  # dog 0, tabby cat 1: lists are lists
    write_text(
        root / "metadata.jsonl",
        "".join(json.dumps({"file_name": f, "labels": " ".join(x)}) + "\n" for f, x in rows),
    )
    raises_at(
        lambda: load_image_folder(root, hierarchy={"dog": "d"}, cache_dir=tmp_path / "c"),
        "metadata.jsonl",
        line=1,
        field="labels",
        match="'tabby cat dog'",
    )

    strings = Dataset.from_dict(
        {"image": [f"/nonexistent/{i}.png" for i in range(4)], "labels": ["cat dog", "cat", "dog", "cat"]},
        features=datasets.Features({"image": Value("string"), "labels": Value("string")}),
    )
    with pytest.raises(DatasetFormatError, match=r"split 'train', row 0.*'cat dog'"):
        load_custom_dataset(strings, hierarchy={"cat": "pet", "dog": "pet"})
    data = load_custom_dataset(
        strings, label_separator="space", hierarchy={"cat": "pet", "dog": "pet"}, test_fraction=0.25,
        validation_fraction=0,
    )  # fmt: skip
    labels = list(data["train"]["labels"]) + list(data["test"]["labels"])
    assert sorted(map(tuple, labels)) == [(0,), (0,), (0, 1), (1,)]


def test_separator_values(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog"])
    with pytest.raises(ValueError, match="label_separator must be one of"):
        load_image_folder(root, label_separator="/", hierarchy={"cat": "p", "dog": "p"}, cache_dir=tmp_path / "c")
    with pytest.raises(SystemExit):
        main(["folder", "--root", str(root), "--label-separator", "/"])
    assert "invalid choice" in capsys.readouterr().err
    spaces = folder_with(tmp_path, ["file_name,labels", "a.png,cat dog", "b.png,cat", "c.png,dog"], name="s")
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    args = ["folder", "--root", str(spaces), "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "c"), "-q",
            "--protocol", "authors", "--test-fraction", "0.34"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("prepare: error: ") and "line 2" in err and err.count("\n") == 1
    assert main([*args, "--label-separator", "space"]) == 0


# --------------------------------------------------------------------------------------------------------------
# 2. duplicate keys and groups named twice in hierarchy (and other JSON) files


def test_hierarchy_json_with_a_key_twice(tmp_path):
    twice = write_text(tmp_path / "h.json", '{\n "cat": "animal",\n "dog": "animal",\n "cat": "vehicle"\n}\n')
    raises_at(lambda: load_hierarchy_file(twice), "h.json", line=4, field="cat", match="'cat' appears twice")
    group = write_text(tmp_path / "g.json", '{\n "animal": ["cat"],\n "vehicle": ["car"],\n "animal": ["dog"]\n}\n')
    raises_at(lambda: load_hierarchy_file(group), "g.json", line=4, field="animal")
    # through a loader, the same error
    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog"])
    raises_at(lambda: load_image_folder(root, hierarchy=str(twice), cache_dir=tmp_path / "c"), "h.json", line=4)


def test_hierarchy_files_naming_a_group_twice(tmp_path):
    listed = write_text(
        tmp_path / "l.json",
        json.dumps({"labels": ["cat", "dog"], "groups": ["animal", "animal"], "label_to_group": [0, 1]}),
    )
    raises_at(lambda: load_hierarchy_file(listed), "l.json", field="groups", match="'animal' is listed twice")
    inner = write_text(tmp_path / "i.json", json.dumps({"animal": ["cat", "cat"]}))
    raises_at(lambda: load_hierarchy_file(inner), "i.json", field="animal", match="twice in group 'animal'")
    table = write_text(tmp_path / "t.csv", "label,group\ncat,animal\ndog,Animal\n")
    raises_at(lambda: load_hierarchy_file(table), "t.csv", line=3, match=("'Animal'", "'animal'", "line 2"))
    mapping = write_text(tmp_path / "m.json", json.dumps({"cat": "animal", "dog": "animal "}))
    raises_at(lambda: load_hierarchy_file(mapping), "m.json", match="'animal '")
    same = write_text(tmp_path / "ok.csv", "cat,animal\ndog,animal\ncar,vehicle\n")
    assert load_hierarchy_file(same).members() == {"animal": ["cat", "dog"], "vehicle": ["car"]}


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


# --------------------------------------------------------------------------------------------------------------
# 3. UTF-8 byte-order marks (Excel) are accepted


def test_files_with_a_byte_order_mark(tmp_path):
    root = tmp_path / "data"
    for seed, name in enumerate("abcd"):
        write_image(root / f"{name}.png", seed=seed)
    write_text(root / "metadata.csv", BOM + "file_name,labels,split\na.png,cat;dog,train\nb.png,dog,train\n"
               "c.png,cat,train\nd.png,cat,test\n")  # fmt: skip
    table = write_text(tmp_path / "h.csv", BOM + "label,group\ncat,animal\ndog,animal\n")
    assert load_hierarchy_file(table).labels == ["cat", "dog"]  # the header line is recognised
    as_json = write_text(tmp_path / "h.json", BOM + json.dumps({"cat": "animal", "dog": "animal"}))
    assert load_hierarchy_file(as_json).groups == ["animal"]
    names = write_text(tmp_path / "names.txt", BOM + "cat\ndog\n")
    data = load_image_folder(
        root, hierarchy=table, label_names=names, cache_dir=tmp_path / "c", validation_fraction=0
    )
    assert all_rows(data) == {"a.png": [0, 1], "b.png": [1], "c.png": [0], "d.png": [0]}
    listing = write_text(tmp_path / "observed.txt", BOM + "a.jpg,3\nb.jpg,4\n")
    assert read_observed_labels(listing, 20) == {"a.jpg": (3, 1), "b.jpg": (4, 2)}

    cub = make_cub_tree(tmp_path / "cub", images=False)
    for name in ("images.txt", "train_test_split.txt", os.path.join("attributes", "image_attribute_labels.txt")):
        path = os.path.join(cub, "CUB_200_2011", name)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        write_text(path, BOM + text)
    data = load_cub(cub, cache_dir=tmp_path / "c", check_images="none", validation_fraction=0)
    expected = cub_expected()
    assert all_rows(data) == {path: labels for path, (_, labels) in expected.items() if labels}

    nus = make_nuswide_official(tmp_path / "nus", images=False)
    labels_dir = os.path.join(nus, "Groundtruth", "TrainTestLabels")
    for name in ("Labels_sky_Train.txt", "Labels_cat_Test.txt"):
        with open(os.path.join(labels_dir, name), encoding="utf-8") as handle:
            text = handle.read()
        write_text(os.path.join(labels_dir, name), BOM + text)
    write_text(os.path.join(nus, "ImageList", "TrainImagelist.txt"), BOM + "".join(f"{p}\n" for p in NUS_TRAIN))
    data = load_nuswide(nus, cache_dir=tmp_path / "c", check_images="none", validation_fraction=0)
    expected = {key: value for key, value in {**nus_expected(NUS_TRAIN), **nus_expected(NUS_TEST)}.items() if value}
    assert all_rows(data) == expected


# --------------------------------------------------------------------------------------------------------------
# 4. --output: the new build replaces the previous one as a whole, foreign files are never deleted silently


def _demo_cli(out, cache, *extra):
    return main(["demo", "--num-train", "10", "--num-test", "4", "--image-size", "8", "--cache-dir", str(cache),
                 "-q", "--output", str(out), *extra])  # fmt: skip


def test_output_replaces_the_previous_build_as_a_whole(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    assert "validation.parquet" in os.listdir(out)
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 0
    assert sorted(os.listdir(out)) == ["hierarchy.json", "hspnet_build.json", "report.json", "test.parquet",
                                       "train.parquet"]  # fmt: skip
    assert Dataset.from_parquet(str(out / "train.parquet")).num_rows == 10  # all training images, none held out
    assert _demo_cli(out, cache) == 0  # arrow
    assert "dataset_dict.json" in os.listdir(out) and not [n for n in os.listdir(out) if n.endswith(".parquet")]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".out.")]  # no temporary left behind

    # a build of an earlier version (no hspnet_build.json) is recognised and replaced
    old = tmp_path / "old"
    old.mkdir()
    for name in ("hierarchy.json", "report.json", "train.parquet", "validation.parquet", "test.parquet"):
        write_text(old / name, "x")
    assert _demo_cli(old, cache, "--output-format", "parquet", "--protocol", "authors") == 0
    assert "validation.parquet" not in os.listdir(old)
    capsys.readouterr()


def test_output_with_foreign_files_is_refused_unless_overwrite(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    write_text(out / "notes.txt", "mine")
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 1
    err = capsys.readouterr().err
    assert "'notes.txt'" in err and "--overwrite" in err and err.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # untouched
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors", "--overwrite") == 0
    assert "notes.txt" not in os.listdir(out) and "validation.parquet" not in os.listdir(out)

    plain = tmp_path / "plain.txt"
    write_text(plain, "a file")
    assert _demo_cli(plain, cache) == 1
    assert "not a folder" in capsys.readouterr().err and plain.read_text() == "a file"


def test_foreign_files_inside_a_saved_split_folder(tmp_path, capsys):
    from hspnet.data.export import foreign_entries

    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache) == 0  # arrow: train/, validation/, test/ folders
    assert foreign_entries(out) == []
    write_text(out / "train" / "cache-0123.arrow", "a datasets cache made from the build")  # part of the build
    write_text(out / "test" / "mine.txt", "not part of the build")
    assert foreign_entries(out) == ["test/mine.txt"]
    assert _demo_cli(out, cache) == 1
    assert "'test/mine.txt'" in capsys.readouterr().err
    assert (out / "test" / "mine.txt").read_text() == "not part of the build"


def test_output_that_is_or_holds_an_input_is_refused(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels", "a.png,cat", "b.png,dog", "c.png,cat", "d.png,dog"])
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    base = ["folder", "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "cache"), "-q", "--protocol",
            "authors", "--test-fraction", "0.25", "--overwrite"]  # fmt: skip
    assert main([*base, "--root", str(root), "--output", str(root)]) == 1
    assert "which this build reads" in capsys.readouterr().err
    assert main([*base, "--root", str(root), "--output", str(tmp_path)]) == 1  # contains the root
    capsys.readouterr()
    assert sorted(os.listdir(root)) == ["a.png", "b.png", "c.png", "d.png", "metadata.csv"]
    assert main([*base, "--root", str(root), "--output", str(tmp_path / "fine")]) == 0


def test_a_failed_build_leaves_the_previous_output_intact(tmp_path, monkeypatch, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert _demo_cli(out, cache, "--output-format", "parquet") == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    calls = []

    def fail_on_second_split(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        with open(path, "wb") as handle:
            handle.write(b"partial")

    monkeypatch.setattr(Dataset, "to_parquet", fail_on_second_split)
    assert _demo_cli(out, cache, "--output-format", "parquet", "--protocol", "authors") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["cache", "out"]  # the temporary build was removed


# --------------------------------------------------------------------------------------------------------------
# 5. annotation files cut short never build


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


def _voc_dir(root):
    return os.path.join(root, "VOCdevkit", "VOC2012")


def test_voc_lists_and_xml_cut_short(tmp_path):
    from hspnet.data.hierarchy import builtin_hierarchy

    voc = make_voc_tree(tmp_path / "voc", images=False)
    main_dir = os.path.join(_voc_dir(voc), "ImageSets", "Main")
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
    main_dir = os.path.join(_voc_dir(voc), "ImageSets", "Main")
    write_text(os.path.join(main_dir, "train.txt"), "".join(f"{i}\n" for i in train[:9]) + train[9][:7])
    with pytest.raises(MissingFileError, match=train[9][:7] + ".xml"):
        load_voc(voc, cache_dir=tmp_path / "c", check_images="none")
    voc = make_voc_tree(tmp_path / "voc3", images=False)
    xml = os.path.join(_voc_dir(voc), "Annotations", "2008_000019.xml")
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


# --------------------------------------------------------------------------------------------------------------
# 6. + 7. image checks: whole decode, bombs, FIFOs; `folder --check-images`


def write_truncated_jpeg(path):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return str(path)


def write_png_bomb(path, width=10_000, height=10_000):
    """A tiny PNG whose header declares ``width x height`` pixels (1-bit grey): 100 million pixels by default."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    data = b"\x89PNG\r\n\x1a\n" + body
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


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
    images = os.path.join(_voc_dir(voc), "JPEGImages")
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
    xml = os.path.join(_voc_dir(voc), "Annotations", "2008_000019.xml")
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


# --------------------------------------------------------------------------------------------------------------
# 8. the CLI: one line naming file, line and field; --debug shows the traceback


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    root = folder_with(tmp_path, ["file_name,labels,split", "a.png,cat,train", "b.png,dog,later"])
    hierarchy = write_text(tmp_path / "h.csv", "cat,pet\ndog,pet\n")
    args = ["folder", "--root", str(root), "--hierarchy", hierarchy, "--cache-dir", str(tmp_path / "c"), "-q"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err == f"prepare: error: {root / 'metadata.csv'}, line 3, field 'split': split must be 'train' or " \
                  "'test', got 'later'\n"  # fmt: skip
    with pytest.raises(DatasetFormatError):
        main([*args, "--debug"])
    with pytest.raises(DatasetFormatError):
        main(["--debug", *args])
    assert main([*args, "--validation-fraction", "1.5"]) == 1
    assert "validation_fraction must be in [0, 1)" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 1
    assert "--overwrite needs --output" in capsys.readouterr().err


def test_prepare_script_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    # the script run as __main__ in this interpreter: `python -m hspnet prepare` already gets a fresh one
    # (test_data_benchmarks.test_cli_entry_points), the script adds only its exit status
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets_scripts", "prepare.py")
    coco = make_coco_tree(tmp_path / "coco", images=False)
    write_text(os.path.join(coco, "annotations", "instances_val2014.json"), '{"images": [\n  {"id": 1,}\n]}')
    monkeypatch.setattr(sys, "argv", [script, "coco", "--root", coco, "--cache-dir", str(tmp_path / "cache"), "-q"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(script, run_name="__main__")
    assert exit_status.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"prepare: error: {os.path.join(coco, 'annotations', 'instances_val2014.json')}, line 2: "
                     "invalid JSON: Expecting property name enclosed in double quotes (column 12)"]  # fmt: skip
