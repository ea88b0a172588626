"""The four benchmark loaders (docs/method.md, section 5.3) on tiny fixture trees in the official layouts, the
authors' list files (5.4) and the two protocols (4.6)."""

import os

import datasets
import pytest

from hspnet.data import builtin_hierarchy, get_build_report, get_hierarchy, load_coco, load_cub, load_nuswide, load_voc
from tests.helpers import (
    COCO_TRAIN,
    COCO_VAL,
    CUB_IMAGES,
    NUS_TEST,
    NUS_TRAIN,
    VOC_TRAIN,
    VOC_VAL,
    coco_expected_labels,
    cub_expected,
    make_coco_tree,
    make_cub_tree,
    make_nuswide_flat,
    make_nuswide_official,
    make_voc_tree,
    nus_expected,
    voc_expected,
    write_text,
)

datasets.disable_progress_bars()


def rows(dataset):
    return {row["image_id"]: row for row in dataset.select_columns([c for c in dataset.column_names if c != "image"])}


def check_single_positives(dataset_dict):
    for split in ("train", "validation"):
        if split not in dataset_dict:
            continue
        for row in rows(dataset_dict[split]).values():
            assert len(row["observed_labels"]) == 1
            assert row["observed_labels"][0] in row["labels"]
    assert "observed_labels" not in dataset_dict["test"].column_names


def test_coco_labels_splits_and_hierarchy(tmp_path):
    root = make_coco_tree(tmp_path / "coco")
    data = load_coco(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert list(data) == ["train", "test"]
    assert data["train"].num_rows == 7 and data["test"].num_rows == 3  # images without annotation excluded
    for split, content, name in (("train", COCO_TRAIN, "train"), ("test", COCO_VAL, "val")):
        expected = coco_expected_labels(name, content)
        for image_id, row in rows(data[split]).items():
            assert row["labels"] == expected[image_id]
    hierarchy = get_hierarchy(data)
    assert hierarchy == builtin_hierarchy("coco")
    assert len(hierarchy.labels) == 80 and len(hierarchy.groups) == 12
    assert hierarchy.labels[:3] == ["person", "bicycle", "car"] and hierarchy.labels[-1] == "toothbrush"
    assert hierarchy.group_of("zebra") == "animal" and hierarchy.group_of("toothbrush") == "indoor"
    report = get_build_report(data)
    assert report["excluded"] == {"train_without_positive": 1, "test_without_positive": 1}
    assert report["protocol"] == "authors"
    check_single_positives(data)
    image = data["train"][0]["image"]
    assert image.size == (8, 8)
    assert data["train"].features["image"] == datasets.Image()
    assert data["train"].features["labels"].feature.names == hierarchy.labels


def test_coco_heldout_validation_and_authors_list(tmp_path):
    root = make_coco_tree(tmp_path / "coco")
    data = load_coco(root, cache_dir=tmp_path / "cache", validation_fraction=0.25, seed=3)
    assert data["train"].num_rows + data["validation"].num_rows == 7
    assert data["validation"].num_rows == 2  # round(0.25 * 7)
    assert not set(data["train"]["image_id"]) & set(data["validation"]["image_id"])
    check_single_positives(data)

    expected = coco_expected_labels("train", COCO_TRAIN)
    chosen = {name: labels[-1] for name, labels in expected.items() if labels}
    listing = write_text(
        tmp_path / "coco_train_singlelabel.txt", "\n".join(f"{n},{label}" for n, label in chosen.items())
    )
    data = load_coco(root, cache_dir=tmp_path / "cache", validation_fraction=0, observed_labels_file=listing)
    got = {row["image_id"]: row["observed_labels"] for row in rows(data["train"]).values()}
    assert got == {name: [label] for name, label in chosen.items()}
    assert get_build_report(data)["observed_list"]["matched"] == len(chosen)


def test_voc_labels_and_difficult(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    data = load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert data["train"].num_rows == 9  # 2008_000041 has only a difficult cat
    assert data["test"].num_rows == 4
    expected = {**voc_expected(VOC_TRAIN), **voc_expected(VOC_VAL)}
    for split in ("train", "test"):
        for image_id, row in rows(data[split]).items():
            assert row["labels"] == expected[image_id]
    assert get_build_report(data)["excluded"] == {"train_without_positive": 1}
    hierarchy = get_hierarchy(data["train"])
    assert hierarchy == builtin_hierarchy("voc")
    assert hierarchy.groups == ["vehicles", "household", "animals", "person"]

    positive = load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0, difficult="positive")
    assert positive["train"].num_rows == 10
    labels = rows(positive["train"])
    assert labels["2008_000041.jpg"]["labels"] == [hierarchy.labels.index("cat")]
    assert labels["2008_000023.jpg"]["labels"] == voc_expected(VOC_TRAIN, "positive")["2008_000023.jpg"]


def test_voc_authors_list_and_plain_voc2012_root(tmp_path):
    root = make_voc_tree(tmp_path / "voc", devkit=False)
    listing = write_text(tmp_path / "voc_train.txt", "2008_000008.jpg,12\n2008_000015.jpg,4\n2008_000019.jpg,11")
    data = load_voc(
        os.path.join(root, "VOC2012"), cache_dir=tmp_path / "cache", validation_fraction=0, observed_labels_file=listing
    )
    assert sorted(data["train"]["image_id"]) == ["2008_000008.jpg", "2008_000015.jpg", "2008_000019.jpg"]
    assert {r["image_id"]: r["observed_labels"] for r in rows(data["train"]).values()} == {
        "2008_000008.jpg": [12],
        "2008_000015.jpg": [4],
        "2008_000019.jpg": [11],
    }
    report = get_build_report(data)
    assert report["excluded"]["train_not_in_observed_list"] == 6


def test_nuswide_official_layout_counts_missing_images(tmp_path):
    missing = "bear\\0006_2224356785.jpg"
    root = make_nuswide_official(tmp_path / "nus", missing={missing})
    anomalous = os.path.join(root, "Groundtruth", "TrainTestLabels", "Labels_lake_Train.txt")
    with open(anomalous) as handle:
        values = handle.read().splitlines()
    values[2] = "-1130179"  # the official file has such a value
    write_text(anomalous, "\n".join(values) + "\n")
    data = load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    expected = {**nus_expected(NUS_TRAIN), **nus_expected(NUS_TEST)}
    assert data["train"].num_rows == 6  # 8 - 1 missing - 1 without concept
    assert data["test"].num_rows == 3
    for split in ("train", "test"):
        for image_id, row in rows(data[split]).items():
            assert row["labels"] == expected[image_id]
    report = get_build_report(data)
    assert report["missing_images"]["count"] == 1
    assert report["missing_images"]["examples"][0].endswith(os.path.join("Flickr", "bear", "0006_2224356785.jpg"))
    assert report["label_value_anomalies"]["count"] == 1
    assert "Labels_lake_Train.txt:3" in report["label_value_anomalies"]["examples"][0]
    assert report["excluded"]["missing_or_unreadable_images"] == 1
    assert get_hierarchy(data) == builtin_hierarchy("nuswide")
    check_single_positives(data)


def test_nuswide_flat_layout(tmp_path):
    root = make_nuswide_flat(tmp_path / "nus")
    data = load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert get_build_report(data)["layout"] == "flat"
    assert data["train"].num_rows == 7 and data["test"].num_rows == 3
    concepts = builtin_hierarchy("nuswide").labels
    row = rows(data["test"])["0104_987987987_m.jpg"]
    assert row["labels"] == sorted(concepts.index(n) for n in ("zebra", "animal", "grass"))


def test_nuswide_flat_single_label_train_list_warns_partial_validation(tmp_path, caplog):
    import logging
    import warnings

    single = {key: names[:1] for key, names in NUS_TRAIN.items()}
    root = make_nuswide_flat(tmp_path / "nus", train=single, train_list="nus_train_singlelabel.txt")
    for attempt in ("build", "cached"):  # the cached load warns as well
        with caplog.at_level(logging.WARNING, logger="hspnet.data.nuswide"):
            with pytest.warns(UserWarning, match=r"nus_train_singlelabel\.txt.*validation labels are PARTIAL"):
                data = load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0.3)
        assert "validation" in data
        assert any("nus_train_singlelabel.txt" in r.getMessage() and "PARTIAL" in r.getMessage()
                   for r in caplog.records), attempt
        caplog.clear()
    assert "partial" in get_build_report(data)["warning"]
    # no validation split (authors' protocol), or a multi-label training list: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*PARTIAL")
        load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0)
        full = make_nuswide_flat(tmp_path / "full")
        load_nuswide(full, cache_dir=tmp_path / "cache", validation_fraction=0.3)


def test_cub_attributes_and_split(tmp_path):
    root = make_cub_tree(tmp_path / "cub")
    data = load_cub(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    expected = cub_expected()
    assert data["train"].num_rows == 4  # 5 training images, one without attribute
    assert data["test"].num_rows == 3
    for split, flag in (("train", 1), ("test", 0)):
        for image_id, row in rows(data[split]).items():
            assert expected[image_id] == (flag, row["labels"])
    hierarchy = get_hierarchy(data)
    assert len(hierarchy.labels) == 312 and len(hierarchy.groups) == 20
    assert hierarchy.labels[0] == "curved bill" and hierarchy.group_of(0) == "bill"
    assert hierarchy == builtin_hierarchy("cub")

    listing = write_text(
        tmp_path / "cub_train.txt",
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg, 212\n"
        "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg, 198\n",
    )
    data = load_cub(
        os.path.join(root, "CUB_200_2011"),
        cache_dir=tmp_path / "cache",
        validation_fraction=0,
        observed_labels_file=listing,
    )
    assert {r["image_id"]: r["observed_labels"] for r in rows(data["train"]).values()} == {
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg": [212],
        "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg": [198],
    }


@pytest.mark.parametrize("fraction", [0.0, 0.4])
def test_protocols(tmp_path, fraction):
    root = make_cub_tree(tmp_path / "cub", images_spec=[(f"a/{i}.jpg", int(i < 10), [1 + i % 5, 7]) for i in range(14)])
    data = load_cub(root, cache_dir=tmp_path / "cache", validation_fraction=fraction)
    if fraction:
        assert list(data) == ["train", "validation", "test"]
        assert data["validation"].num_rows == 4 and data["train"].num_rows == 6
        assert get_build_report(data)["protocol"] == "heldout"
    else:
        assert list(data) == ["train", "test"] and data["train"].num_rows == 10
    assert data["test"].num_rows == 4
    assert CUB_IMAGES  # the default fixture is untouched
