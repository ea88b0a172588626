"""The cache is keyed by the annotation files' contents and the options: never stale, reused when valid."""

import json
import os

import datasets
import pytest

import hspnet.data.voc as voc_module
from hspnet.data import (
    BuildOptions,
    ImageError,
    get_build_report,
    load_coco,
    load_demo_dataset,
    load_nuswide,
    load_voc,
    prepare_dataset,
)
from tests.helpers import (
    COCO_TRAIN,
    coco_json,
    make_coco_tree,
    make_nuswide_official,
    make_voc_tree,
    voc_xml,
    write_text,
)

datasets.disable_progress_bars()


def labels_of(dataset, image_id):
    for row in dataset.select_columns(["image_id", "labels"]):
        if row["image_id"] == image_id:
            return row["labels"]
    raise KeyError(image_id)


def _forbid_parsing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the annotations were parsed although the cache is valid")

    monkeypatch.setattr(voc_module, "parse_voc_xml", fail)


def test_cached_build_is_reused_without_parsing(tmp_path, monkeypatch):
    root = make_voc_tree(tmp_path / "voc")
    first = load_voc(root, cache_dir=tmp_path / "cache")
    _forbid_parsing(monkeypatch)
    again = load_voc(root, cache_dir=tmp_path / "cache")
    assert again["train"]["image_id"] == first["train"]["image_id"]
    assert get_build_report(again) == get_build_report(first)
    xml = os.path.join(root, "VOCdevkit", "VOC2012", "Annotations", "2008_000008.xml")
    os.utime(xml, (1, 1))  # a new mtime with the same content keeps the cache
    load_voc(root, cache_dir=tmp_path / "cache")
    with pytest.raises(AssertionError, match="parsed"):
        load_voc(root, cache_dir=tmp_path / "cache", force_rebuild=True)


def test_changed_annotation_file_invalidates_the_cache(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    before = load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert labels_of(before["train"], "2008_000019.jpg") == [11]  # dog
    xml = os.path.join(root, "VOCdevkit", "VOC2012", "Annotations", "2008_000019.xml")
    write_text(xml, voc_xml("2008_000019", [("dog", 0), ("sofa", 0)]))
    after = load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert labels_of(after["train"], "2008_000019.jpg") == [11, 17]

    coco = make_coco_tree(tmp_path / "coco")
    data = load_coco(coco, cache_dir=tmp_path / "cache", validation_fraction=0)
    name = "COCO_train2014_000000000025.jpg"
    assert labels_of(data["train"], name) == [22]  # zebra
    changed = coco_json("train", {**COCO_TRAIN, 25: [24, 25]})
    write_text(os.path.join(coco, "annotations", "instances_train2014.json"), json.dumps(changed))
    data = load_coco(coco, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert labels_of(data["train"], name) == [22, 23]  # zebra, giraffe


def test_options_are_part_of_the_key(tmp_path):
    root = make_voc_tree(tmp_path / "voc")
    seeds = {
        seed: {
            r["image_id"]: r["observed_labels"]
            for r in load_voc(root, cache_dir=tmp_path / "cache", seed=seed, validation_fraction=0)[
                "train"
            ].select_columns(["image_id", "observed_labels"])
        }
        for seed in range(6)
    }
    assert len({json.dumps(value, sort_keys=True) for value in seeds.values()}) > 1
    assert list(load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0.3)) == [
        "train",
        "validation",
        "test",
    ]
    assert list(load_voc(root, cache_dir=tmp_path / "cache", validation_fraction=0)) == ["train", "test"]
    assert (
        load_voc(root, cache_dir=tmp_path / "cache", difficult="positive", validation_fraction=0)["train"].num_rows
        == 10
    )

    listing = write_text(tmp_path / "voc_train.txt", "2008_000008.jpg,12\n")
    one = load_voc(root, cache_dir=tmp_path / "cache", observed_labels_file=listing, validation_fraction=0)
    assert one["train"]["observed_labels"] == [[12]]
    write_text(listing, "2008_000008.jpg,14\n")  # same path, new content
    two = load_voc(root, cache_dir=tmp_path / "cache", observed_labels_file=listing, validation_fraction=0)
    assert two["train"]["observed_labels"] == [[14]]


def test_one_build_options_or_its_fields_as_keywords(tmp_path):
    root = make_voc_tree(tmp_path / "voc")  # 9 training images with a positive (a 10th is difficult-only), 4 test
    options = BuildOptions(seed=3, validation_fraction=0.3, cache_dir=tmp_path / "cache")
    from_object = load_voc(root, options)
    from_keywords = load_voc(root, seed=3, validation_fraction=0.3, cache_dir=tmp_path / "cache")
    sizes = {split: len(rows) for split, rows in from_object.items()}
    assert sizes == {"train": 6, "validation": 3, "test": 4}  # round(0.3 * 9) held out
    for split in from_object:
        assert from_object[split]["image_id"] == from_keywords[split]["image_id"]
        if split != "test":
            assert from_object[split]["observed_labels"] == from_keywords[split]["observed_labels"]
    overridden = load_voc(root, options, validation_fraction=0)  # a keyword overrides the object's field
    assert {split: len(rows) for split, rows in overridden.items()} == {"train": 9, "test": 4}
    assert options.validation_fraction == 0.3  # the object itself is left as it was
    assert prepare_dataset("voc", root, options)["validation"]["image_id"] == from_object["validation"]["image_id"]

    with pytest.raises(TypeError, match=r"load_voc\(\) got an unexpected option 'validation_fration' \(did you "
                                        r"mean 'validation_fraction'\?\); it takes root, difficult, hierarchy and "
                                        r"the build options seed, validation_fraction"):  # fmt: skip
        load_voc(root, validation_fration=0)
    with pytest.raises(TypeError, match="options must be a BuildOptions, got dict"):
        load_voc(root, {"seed": 1})
    with pytest.raises(TypeError, match=r"load_demo_dataset\(\) got an unexpected option 'num_tset' \(did you mean "
                                        r"'num_test'\?\)"):  # fmt: skip
        load_demo_dataset(num_tset=3, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="seed must be an integer"):  # the fields are checked however they come
        load_voc(root, options, seed="1")


def test_nuswide_skips_missing_images_unless_the_options_say_otherwise(tmp_path):
    root = make_nuswide_official(tmp_path / "nus", missing={"bear\\0006_2224356785.jpg"})
    skipped = load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert get_build_report(skipped)["missing_images"]["count"] == 1
    with pytest.raises(ImageError, match="1 missing"):
        load_nuswide(root, cache_dir=tmp_path / "cache", validation_fraction=0, on_missing_image="error")
    with pytest.raises(ImageError, match="1 missing"):  # an explicit BuildOptions is used as given
        load_nuswide(root, BuildOptions(cache_dir=tmp_path / "cache", validation_fraction=0))
