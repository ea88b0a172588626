"""Custom data (docs/method.md, section 5.5): a folder of images with CSV / JSONL metadata, and any Hugging Face
dataset; how label strings are split (';' by default, label names may contain spaces, one rule per file); files with
a UTF-8 byte-order mark (Excel); the seeds of the held-out test split and of the automatic hierarchy."""

import json
import os

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Image, List, Value

from hspnet.data import (
    BuildOptions,
    DatasetFormatError,
    Hierarchy,
    get_build_report,
    get_hierarchy,
    load_cub,
    load_custom_dataset,
    load_demo_dataset,
    load_hierarchy_file,
    load_image_folder,
    load_nuswide,
    read_observed_labels,
)
from hspnet.cli.prepare import main
from tests.helpers import (
    BOM,
    NUS_TEST,
    NUS_TRAIN,
    all_rows,
    cub_expected,
    folder_with,
    make_cub_tree,
    make_nuswide_official,
    nus_expected,
    raises_at,
    write_image,
    write_text,
)

datasets.disable_progress_bars()


ROWS = [  # file, labels, split
    ("img/a.png", ["cat", "dog"], "train"),
    ("img/b.png", ["dog"], "train"),
    ("img/c.png", ["car", "traffic light"], "train"),
    ("img/d.png", ["bus", "car"], "train"),
    ("img/e.png", ["cat"], "train"),
    ("img/f.png", [], "train"),
    ("img/g.png", ["bus"], "test"),
    ("img/h.png", ["cat", "traffic light"], "test"),
]


GROUPS = {"cat": "animal", "dog": "animal", "car": "vehicle", "bus": "vehicle", "traffic light": "street"}


def make_images(root, rows=ROWS):
    for seed, (name, _, _) in enumerate(rows):
        write_image(os.path.join(root, name), seed=seed)


def as_dict(dataset):
    return {r["image_id"]: r for r in dataset.select_columns([c for c in dataset.column_names if c != "image"])}


def test_folder_with_csv_and_hierarchy_file(tmp_path):
    root = tmp_path / "data"
    make_images(root)
    lines = ["file_name,labels,split"] + [f"{f},{';'.join(labels)},{split}" for f, labels, split in ROWS]
    write_text(root / "metadata.csv", "\n".join(lines) + "\n")
    hierarchy_file = write_text(tmp_path / "groups.csv", "".join(f"{k},{v}\n" for k, v in GROUPS.items()))
    data = load_image_folder(root, hierarchy=hierarchy_file, cache_dir=tmp_path / "cache", validation_fraction=0)
    hierarchy = get_hierarchy(data)
    assert hierarchy.labels == ["bus", "car", "cat", "dog", "traffic light"]  # sorted names
    assert hierarchy.group_of("traffic light") == "street" and hierarchy.group_of("dog") == "animal"
    assert data["train"].num_rows == 5 and data["test"].num_rows == 2
    rows = as_dict(data["train"])
    assert rows["img/a.png"]["labels"] == [2, 3]
    assert rows["img/c.png"]["labels"] == [1, 4]
    assert get_build_report(data)["excluded"] == {"train_without_positive": 1}
    assert data["test"][0]["image"].size == (8, 8)
    for row in rows.values():
        assert row["observed_labels"][0] in row["labels"]


def test_folder_with_split_folders_jsonl_and_indices(tmp_path):
    root = tmp_path / "data"
    names = ["cat", "dog", "car", "bus", "traffic light"]
    for split in ("train", "test"):
        rows = [(f, labels, s) for f, labels, s in ROWS if s == split]
        make_images(root / split, rows)
        write_text(
            root / split / "metadata.jsonl",
            "".join(
                json.dumps({"file_name": f, "labels": [names.index(x) for x in labels]}) + "\n" for f, labels, _ in rows
            ),
        )
    label_file = write_text(tmp_path / "labels.txt", "\n".join(names) + "\n")
    data = load_image_folder(
        root, label_names=label_file, hierarchy=GROUPS, cache_dir=tmp_path / "cache", validation_fraction=0.25
    )
    assert get_hierarchy(data).labels == names
    assert data["train"].num_rows + data["validation"].num_rows == 5
    assert set(as_dict(data["test"])) == {"test/img/g.png", "test/img/h.png"}
    assert as_dict(data["test"])["test/img/h.png"]["labels"] == [0, 4]


def test_folder_without_split_and_automatic_hierarchy(tmp_path, tiny_clip_dir):
    root = tmp_path / "data"
    make_images(root)
    write_text(
        root / "metadata.jsonl",
        "".join(json.dumps({"file_name": f, "labels": " | ".join(labels)}) + "\n" for f, labels, _ in ROWS),
    )
    data = load_image_folder(
        root,
        label_separator="|",  # the strings use "|": chosen explicitly (the default is ";")
        clip_model=tiny_clip_dir,
        num_groups=2,
        cache_dir=tmp_path / "cache",
        test_fraction=0.25,
        validation_fraction=0,
    )
    hierarchy = get_hierarchy(data)
    assert hierarchy.labels == ["bus", "car", "cat", "dog", "traffic light"] and hierarchy.num_groups == 2
    assert all(group in hierarchy.labels for group in hierarchy.groups)
    assert data["test"].num_rows == 2 and data["train"].num_rows == 5
    three = load_image_folder(
        root,
        label_separator="|",
        clip_model=tiny_clip_dir,
        num_groups=3,
        cache_dir=tmp_path / "cache",
        test_fraction=0.25,
        validation_fraction=0,
    )
    assert get_hierarchy(three).num_groups == 3  # the clustering options are part of the cache key


def test_hf_dataset_with_names_and_paths(tmp_path):
    root = tmp_path / "data"
    make_images(root)
    source = DatasetDict(
        {
            split: Dataset.from_dict(
                {
                    "picture": [str(root / f) for f, _, s in ROWS if s == split],
                    "tags": [labels for _, labels, s in ROWS if s == split],
                    "uid": [f for f, _, s in ROWS if s == split],
                }
            )
            for split in ("train", "test")
        }
    )
    listing = write_text(tmp_path / "observed.txt", "img/a.png,3\nimg/c.png,1\nimg/d.png,0\n")
    data = load_custom_dataset(
        source,
        image_column="picture",
        labels_column="tags",
        id_column="uid",
        hierarchy=GROUPS,
        validation_fraction=0,
        observed_labels_file=listing,
    )
    assert data["train"].features["image"] == Image()
    assert get_hierarchy(data).labels == ["bus", "car", "cat", "dog", "traffic light"]
    assert {k: v["observed_labels"] for k, v in as_dict(data["train"]).items()} == {
        "img/a.png": [3],
        "img/c.png": [1],
        "img/d.png": [0],
    }
    assert data["train"][0]["image"].size == (8, 8)
    assert as_dict(data["test"])["img/h.png"]["labels"] == [2, 4]


def test_hf_dataset_with_class_labels_and_strings(tmp_path):
    root = tmp_path / "data"
    make_images(root)
    names = ["cat", "dog", "car", "bus", "traffic light"]
    features = datasets.Features({"image": Image(), "labels": List(ClassLabel(names=names))})
    train = Dataset.from_dict(
        {
            "image": [str(root / f) for f, _, _ in ROWS],
            "labels": [[names.index(x) for x in labels] for _, labels, _ in ROWS],
        },
        features=features,
    )
    data = load_custom_dataset(train, hierarchy=GROUPS, test_fraction=0.25, validation_fraction=0.2, seed=1)
    assert get_hierarchy(data).labels == names  # from the ClassLabel feature
    assert sum(split.num_rows for split in data.values()) == 7  # f.png has no label
    assert list(data) == ["train", "validation", "test"]
    options = BuildOptions(seed=1, validation_fraction=0.2)
    same = load_custom_dataset(train, options, hierarchy=GROUPS, test_fraction=0.25)
    assert same["validation"]["image_id"] == data["validation"]["image_id"]
    with pytest.raises(TypeError, match="cache_dir, check_images, which do not apply"):  # held in memory, not checked
        load_custom_dataset(train, hierarchy=GROUPS, cache_dir=tmp_path / "c", check_images="open")

    strings = Dataset.from_dict(
        {"image": [str(root / f) for f, _, _ in ROWS], "labels": [",".join(labels) for _, labels, _ in ROWS]},
        features=datasets.Features({"image": Value("string"), "labels": Value("string")}),
    )
    data = load_custom_dataset(
        strings, label_separator=",", hierarchy=Hierarchy.from_mapping(GROUPS), test_fraction=0.25
    )
    assert get_hierarchy(data).labels == ["bus", "car", "cat", "dog", "traffic light"]

    single = Dataset.from_dict(
        {"image": [str(root / f) for f, _, _ in ROWS], "label": [i % 2 for i in range(len(ROWS))]},
        features=datasets.Features({"image": Image(), "label": ClassLabel(names=["cat", "dog"])}),
    )
    data = load_custom_dataset(
        single, labels_column="label", hierarchy={"cat": "pet", "dog": "pet"}, test_fraction=0.25
    )
    assert all(len(row) == 1 for row in data["test"]["labels"])


def test_prepared_dataset_keeps_its_hierarchy_and_cli(tmp_path, capsys):
    demo = load_demo_dataset(cache_dir=tmp_path / "cache", num_train=30, num_test=10, image_size=16)
    again = load_custom_dataset(demo, test_split="test", validation_fraction=0)  # no CLIP needed
    assert get_hierarchy(again) == get_hierarchy(demo)

    root = tmp_path / "data"
    make_images(root)
    lines = ["file_name,labels"] + [f"{f},{';'.join(labels)}" for f, labels, _ in ROWS]
    write_text(root / "metadata.csv", "\n".join(lines) + "\n")
    hierarchy = Hierarchy.from_mapping(GROUPS).save(tmp_path / "h.json")
    code = main(
        [
            "folder",
            "--root",
            str(root),
            "--hierarchy",
            hierarchy,
            "--cache-dir",
            str(tmp_path / "cache"),
            "-q",
            "--output_dir",
            str(tmp_path / "out"),
            "--output-format",
            "parquet",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "traffic light" in out and "Wrote the prepared dataset" in out
    assert sorted(os.listdir(tmp_path / "out")) == [
        "hierarchy.json",
        "hspnet_build.json",
        "report.json",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Label strings: ';' by default, label names may contain spaces, one rule per file
# ----------------------------------------------------------------------------------------------------------------------


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


def test_labels_that_look_split_by_another_separator_are_refused(tmp_path):
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
    assert err.startswith("hspnet prepare: error: ") and "line 2" in err and err.count("\n") == 1
    assert main([*args, "--label-separator", "space"]) == 0


# ----------------------------------------------------------------------------------------------------------------------
# UTF-8 byte-order marks (Excel) are accepted
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# Seeds: `seed` draws the single positives; the held-out test split (`test_seed`) and the automatic hierarchy
# (`hierarchy_seed`) do not move with it
# ----------------------------------------------------------------------------------------------------------------------


def _many_images_source(n=200):
    names = ["cat", "dog", "car", "bus", "traffic light"]
    return Dataset.from_dict(
        {
            "image": [f"/nonexistent/{i:04d}.png" for i in range(n)],  # never opened
            "labels": [[names[i % 5], names[(i + 1) % 5], names[(i + 3) % 5]] for i in range(n)],
            "uid": [f"id{i:04d}" for i in range(n)],
        },
        features=datasets.Features({"image": Value("string"), "labels": List(Value("string")), "uid": Value("string")}),
    )


def test_held_out_test_split_does_not_depend_on_seed():
    source = _many_images_source()

    def load(**kwargs):
        data = load_custom_dataset(
            source, id_column="uid", hierarchy=GROUPS, test_fraction=0.2, validation_fraction=0, **kwargs
        )
        observed = {r["image_id"]: r["observed_labels"][0] for r in as_dict(data["train"]).values()}
        return set(data["test"]["image_id"]), observed, get_build_report(data)

    test0, observed0, report = load(seed=0)
    test1, observed1, _ = load(seed=1)
    assert len(test0) == 40
    assert test1 == test0  # the same test images for every seed ...
    assert set(observed1) == set(observed0)
    changed = sum(observed0[key] != observed1[key] for key in observed0)
    assert changed > 40  # ... while the single positives change (about 2/3 of 160 images)
    assert "test_seed 0" in report["test_split"]
    other, _, _ = load(seed=0, test_seed=1)
    assert len(other) == 40 and other != test0  # test_seed is what chooses the test split
    try:
        load_custom_dataset(source, hierarchy=GROUPS, test_seed=True)
    except ValueError as error:
        assert "test_seed" in str(error)
    else:
        raise AssertionError("test_seed=True must be rejected")


def test_folder_test_split_and_hierarchy_seed_independent_of_seed(tmp_path, monkeypatch, capsys):
    from hspnet.data import custom

    root = tmp_path / "data"
    names = ["cat", "dog", "car", "bus", "traffic light"]
    rows = [(f"img/{i:02d}.png", [names[i % 5], names[(i + 2) % 5]], None) for i in range(30)]
    make_images(root, rows)
    write_text(
        root / "metadata.csv",
        "file_name,labels\n" + "".join(f"{f},{';'.join(labels)}\n" for f, labels, _ in rows),
    )
    seeds_seen = []

    def fake_auto_hierarchy(label_names, **kwargs):
        seeds_seen.append(kwargs["seed"])
        return Hierarchy.from_mapping(GROUPS)

    monkeypatch.setattr(custom, "build_auto_hierarchy", fake_auto_hierarchy)

    def load(**kwargs):
        data = load_image_folder(
            root, clip_model="unused", cache_dir=tmp_path / "cache", test_fraction=0.2, validation_fraction=0, **kwargs
        )
        observed = {r["image_id"]: r["observed_labels"] for r in as_dict(data["train"]).values()}
        return set(data["test"]["image_id"]), observed

    test0, observed0 = load(seed=0)
    test3, observed3 = load(seed=3)
    assert len(test0) == 6 and test3 == test0
    assert observed3 != observed0
    assert seeds_seen == [0, 0]  # the clustering seed is hierarchy_seed (0), not seed
    load(seed=3, hierarchy_seed=7)
    assert seeds_seen[-1] == 7
    moved, _ = load(seed=0, test_seed=2)
    assert moved != test0  # test_seed is part of the cache key

    # the CLI: --test-seed reaches the loader, --seed does not move the test split
    for extra, expected in ((["--seed", "3", "--hierarchy-seed", "5"], test0), (["--test-seed", "2"], moved)):
        out = tmp_path / f"out{'_'.join(extra)}"
        code = main(
            ["folder", "--root", str(root), "--cache-dir", str(tmp_path / "cache"), "--protocol", "authors",
             "--test-fraction", "0.2", "--clip-model", "unused", "-q", "--output_dir", str(out),
             "--output-format", "parquet", *extra]
        )
        assert code == 0, capsys.readouterr().err
        assert set(Dataset.from_parquet(str(out / "test.parquet"))["image_id"]) == expected
    assert 5 in seeds_seen  # --hierarchy-seed reaches the clustering


def test_single_label_rows_with_spaces_are_one_label_unless_a_word_is_a_label(tmp_path, capsys):
    """No ';' anywhere, so no row is written with two labels: a field with spaces is one label, unless one of its
    words is a whole label field of another row (then spaces may separate labels: refused, line and field named)."""
    from hspnet.cli import main as hspnet_main

    rows = ["file_name,labels,split", "a.png,tabby cat,train", "b.png,golden retriever,train", "c.png,dog,train",
            "d.png, tabby  cat ,test", "e.png,golden retriever,test", "f.png,dog,test"]
    root = folder_with(tmp_path, rows)
    groups = {"tabby cat": "pet", "golden retriever": "pet", "dog": "pet"}
    data = load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "c", validation_fraction=0)
    # labels sorted by name: dog 0, golden retriever 1, tabby cat 2
    assert get_hierarchy(data).labels == ["dog", "golden retriever", "tabby cat"]
    assert all_rows(data) == {"a.png": [2], "b.png": [1], "c.png": [0], "d.png": [2], "e.png": [1], "f.png": [0]}
    hierarchy = write_text(tmp_path / "h.csv", "tabby cat,pet\ngolden retriever,pet\ndog,pet\n")
    assert hspnet_main(["prepare", "folder", "--root", str(root), "--hierarchy", hierarchy, "--cache-dir",
                        str(tmp_path / "c2"), "--quiet", "--validation-fraction", "0"]) == 0, capsys.readouterr().err

    # 'cat' is a label of its own at line 4: "tabby cat" may be one label or 'tabby' and 'cat'
    ambiguous = folder_with(tmp_path, ["file_name,labels", "a.png,tabby cat", "b.png,dog", "c.png,cat",
                                       "d.png,dog"], name="ambiguous")
    raises_at(lambda: load_image_folder(ambiguous, hierarchy={"tabby cat": "p", "cat": "p", "dog": "p"},
                                        cache_dir=tmp_path / "c"),
              "metadata.csv", line=2, field="labels",
              match=("'tabby cat'", "'cat' is a label of its own at line 4", "--label-separator ';'", "'space'"))
    capsys.readouterr()
    assert hspnet_main(["prepare", "folder", "--root", str(ambiguous), "--hierarchy", hierarchy, "--cache-dir",
                        str(tmp_path / "c2"), "--quiet"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"hspnet prepare: error: {ambiguous / 'metadata.csv'}, line 2, field 'labels': the labels "
                           "'tabby cat' contain a space"), line
    # words that are all numbers (label indices separated by spaces?)
    indices = folder_with(tmp_path, ["file_name,labels", "a.png,0 1", "b.png,1 2"], name="indices")
    raises_at(lambda: load_image_folder(indices, label_names=["x", "y", "z"], hierarchy={"x": "p", "y": "p", "z": "p"},
                                        cache_dir=tmp_path / "c"),
              "metadata.csv", line=2, field="labels", match=("'0 1'", "numbers"))
