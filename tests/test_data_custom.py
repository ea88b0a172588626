"""Custom data: a folder of images with CSV / JSONL metadata, and any Hugging Face dataset."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from datasets import ClassLabel, Dataset, DatasetDict, Image, List, Value  # noqa: E402

import pytest  # noqa: E402

from hspnet.data import (
    BuildOptions,
    Hierarchy,
    get_build_report,
    get_hierarchy,
    load_custom_dataset,
    load_demo_dataset,
    load_image_folder,
)
from hspnet.data.cli import main  # noqa: E402
from tests.fixtures_data import write_image, write_text  # noqa: E402

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
            "--output",
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


# --------------------------------------------------------------------------------------------------------------
# Seeds: `seed` draws the single positives; the held-out test split (`test_seed`) and the automatic hierarchy
# (`hierarchy_seed`) do not move with it


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
             "--test-fraction", "0.2", "--clip-model", "unused", "-q", "--output", str(out),
             "--output-format", "parquet", *extra]
        )
        assert code == 0, capsys.readouterr().err
        assert set(Dataset.from_parquet(str(out / "test.parquet"))["image_id"]) == expected
    assert 5 in seeds_seen  # --hierarchy-seed reaches the clustering
