"""Single-positive generation, the held-out validation split, and the authors' list formats."""

import os
from collections import Counter

import datasets
import pytest

from hspnet.data import (
    load_demo_dataset,
    load_voc,
    read_label_list,
    read_observed_labels,
    select_single_positive,
    validation_image_ids,
)
from tests.helpers import VOC_TRAIN, make_voc_tree, write_text

datasets.disable_progress_bars()


def test_choice_is_a_positive_deterministic_and_seeded():
    labels = [3, 7, 11, 19]
    for key in ("a.jpg", "b.jpg", "dir/c.jpg"):
        choice = select_single_positive(labels, seed=0, key=key)
        assert choice in labels
        assert select_single_positive(list(reversed(labels)), seed=0, key=key) == choice  # order of labels irrelevant
    keys = [f"img{i}.jpg" for i in range(200)]
    assert [select_single_positive(labels, 0, k) for k in keys] != [select_single_positive(labels, 1, k) for k in keys]
    assert select_single_positive([5], seed=123, key="x") == 5
    with pytest.raises(ValueError, match="no positive"):
        select_single_positive([], seed=0, key="x")


def test_choice_is_roughly_uniform():
    labels = [0, 1, 2, 3]
    counts = Counter(select_single_positive(labels, seed=0, key=f"COCO_{i:06d}.jpg") for i in range(8000))
    assert set(counts) == set(labels)
    expected = 8000 / 4
    chi2 = sum((counts[label] - expected) ** 2 / expected for label in labels)
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001


def test_validation_split():
    ids = [f"{i:05d}.jpg" for i in range(1000)]
    held = validation_image_ids(ids, 0.2, seed=0)
    assert len(held) == 200 and held <= set(ids)
    assert validation_image_ids(list(reversed(ids)), 0.2, seed=0) == held  # order-independent
    assert validation_image_ids(ids, 0.2, seed=1) != held
    assert validation_image_ids(ids, 0.0, seed=0) == set()
    assert len(validation_image_ids(ids[:3], 0.2, seed=0)) == 1


def _observed(data):
    return {
        split: {
            r["image_id"]: r["observed_labels"][0] for r in data[split].select_columns(["image_id", "observed_labels"])
        }
        for split in data
        if split != "test"
    }


def test_same_output_whatever_the_order_and_the_workers(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    one = load_voc(root, cache_dir=tmp_path / "c1", seed=5, num_proc=1, check_images="open")
    two = load_voc(root, cache_dir=tmp_path / "c2", seed=5, num_proc=2, check_images="open")
    assert _observed(one) == _observed(two)
    assert one["train"]["image_id"] == two["train"]["image_id"]

    listing = os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Main", "train.txt")
    write_text(listing, "".join(f"{i}\n" for i in reversed(list(VOC_TRAIN))))
    reordered = load_voc(root, cache_dir=tmp_path / "c3", seed=5)
    assert _observed(reordered) == _observed(one)  # same images in validation, same observed labels


def test_single_positive_properties_on_the_demo(tmp_path):
    data = load_demo_dataset(cache_dir=tmp_path / "cache", num_train=300, num_test=20, image_size=16, seed=0)
    multi = 0
    for split in ("train", "validation"):
        for row in data[split].select_columns(["labels", "observed_labels"]):
            assert len(row["observed_labels"]) == 1 and row["observed_labels"][0] in row["labels"]
            multi += len(row["labels"]) > 1
    assert multi > 100
    other = load_demo_dataset(cache_dir=tmp_path / "cache", num_train=300, num_test=20, image_size=16, seed=0)
    assert _observed(other) == _observed(data)


def test_authors_list_formats(tmp_path):
    coco = write_text(
        tmp_path / "coco_train_singlelabel.txt",
        "COCO_train2014_000000480023.jpg,52\nCOCO_train2014_000000050518.jpg,41",
    )
    assert read_observed_labels(coco, 80) == {
        "COCO_train2014_000000480023.jpg": (52, 1),
        "COCO_train2014_000000050518.jpg": (41, 2),
    }
    cub = write_text(tmp_path / "cub_train.txt", "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg, 212\n")
    assert read_observed_labels(cub, 312) == {"001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg": (212, 1)}
    voc = write_text(tmp_path / "voc_val.txt", "2008_000002.jpg,19\r\n2008_000003.jpg,14 18\r\n")
    assert read_label_list(voc, 20) == [("2008_000002.jpg", [19], 1), ("2008_000003.jpg", [14, 18], 2)]
    nus = write_text(
        tmp_path / "nus_val.txt", "123940_1158315062_02a15f03aa_m.jpg,42 60 79\n5685_371239549_0626a41ef1_m.jpg,\n"
    )
    assert read_label_list(nus, 81) == [
        ("123940_1158315062_02a15f03aa_m.jpg", [42, 60, 79], 1),
        ("5685_371239549_0626a41ef1_m.jpg", [], 2),
    ]
    cub_val = write_text(tmp_path / "cub_val.txt", "a/b.jpg, 4 97 134\n")
    assert read_label_list(cub_val, 312) == [("a/b.jpg", [4, 97, 134], 1)]
