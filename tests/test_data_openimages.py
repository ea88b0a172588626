"""The Open Images loader (hspnet/data/openimages.py) on fixtures in the official formats
(tests/openimages_fixtures.py): V7 and V6 file names, class descriptions with and without a header, duplicate rows,
machine-generated rows, a conflicting pair, images listed but missing, the hierarchy levels and Part edges, the classes
outside the hierarchy, the MIDs from the files to the model's config and `hspnet predict`'s output, single positives
(seeded, independent of the row order), the verified negatives, bad input as one line naming file and line, and
3,000 classes."""

import json
import os
import random
import time

import datasets
import numpy as np
import pytest

from hspnet.data import (
    DatasetFormatError,
    ImageError,
    MissingFileError,
    get_build_report,
    get_hierarchy,
    load_openimages,
    prepare_dataset,
)
from tests.helpers import raises_at, write_text
from tests.openimages_fixtures import (
    DESCRIPTIONS,
    HIERARCHY,
    IDS,
    LEVEL1,
    LEVEL2,
    OUTSIDE,
    PARTS,
    TEST_ROWS,
    TRAIN_ROWS,
    TRAINABLE,
    file_names,
    label_csv,
    node,
    write_large_openimages,
    write_openimages,
)

datasets.disable_progress_bars()

NAMES = [DESCRIPTIONS[mid] for mid in TRAINABLE]
# image -> (positives, verified negatives), by display name: worked out by hand from TRAIN_ROWS / TEST_ROWS
EXPECTED_TRAIN = {
    IDS["a"]: (["Cat", "Dog"], ["Car"]),  # the duplicate Cat row counts once
    IDS["b"]: (["Car", "Bicycle", "Wheel"], ["Cat"]),  # machine rows ignored
    IDS["c"]: (["Apple"], []),  # Hamster is not trainable
    IDS["d"]: (["Person", "Human face", "Golden retriever"], []),  # Dog verified present AND absent: unknown
    IDS["e"]: (["Pug"], ["Tulip"]),
    IDS["f"]: (["Tulip", "Poster, print"], []),
}  # g: a negative only (left out); h: its image is missing
EXPECTED_TEST = {
    IDS["t1"]: (["Cat"], ["Dog", "Car"]),
    IDS["t2"]: (["Dog"], ["Cat"]),  # the machine-generated Car is never a test label
    IDS["t3"]: (["Car", "Bicycle"], []),
    IDS["t5"]: (["Tulip"], []),
}  # t4: negatives only, left out


def load(root, tmp_path, tiny_clip_dir, **options):
    options.setdefault("validation_fraction", 0)
    options.setdefault("on_missing_image", "skip")
    return load_openimages(root, cache_dir=tmp_path / "cache", clip_model=tiny_clip_dir, **options)


def by_names(split):
    names = split.features["labels"].feature.names
    out = {}
    for row in split.select_columns([c for c in split.column_names if c != "image"]):
        out[row["image_id"]] = ([names[i] for i in row["labels"]], [names[i] for i in row["negative_labels"]])
    return out


def plain_rows(data):
    return {split: [{k: v for k, v in row.items() if k != "image"} for row in data[split]] for split in data}


# ----------------------------------------------------------------------------------------------------------------------
# The files: V7 and V6, descriptions with and without a header, duplicates, machine rows, missing images
# ----------------------------------------------------------------------------------------------------------------------


def test_v7_files_labels_negatives_and_mids(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    data = load(root, tmp_path, tiny_clip_dir)
    assert list(data) == ["train", "test"]
    assert data["train"].column_names == ["image", "image_id", "labels", "observed_labels", "negative_labels"]
    assert data["test"].column_names == ["image", "image_id", "labels", "negative_labels"]
    assert by_names(data["train"]) == EXPECTED_TRAIN
    assert by_names(data["test"]) == EXPECTED_TEST
    for row in data["train"]:
        assert row["image"].filename.endswith(f"train/{row['image_id']}.jpg")
    hierarchy = get_hierarchy(data)
    assert hierarchy.labels == NAMES and hierarchy.label_ids == TRAINABLE  # the trainable list's order
    assert data["train"].features["negative_labels"].feature.names == NAMES

    report = get_build_report(data)
    train = report["annotations"]["train"]
    assert train["duplicate_rows"] == 2  # the repeated Cat row, and Dog's second (conflicting) row
    assert train["conflicting_pairs"]["count"] == 1
    assert train["conflicting_pairs"]["examples"] == [[IDS["d"], "/m/0bt9lr"]]
    assert train["machine_rows_ignored"] == 3 and train["machine_rows_kept"] == 0
    assert train["rows_of_other_classes"] == 1  # Hamster
    assert report["images_without_a_positive_left_out"] == {"train": 1, "test": 1}
    assert report["missing_images"]["count"] == 1 and report["missing_images"]["examples"][0].endswith(
        f"train/{IDS['h']}.jpg")
    assert report["annotations"]["test (test)"]["duplicate_rows"] == 1
    assert report["version"] == "v7"


def test_v6_names_and_descriptions_without_header_give_the_same_dataset(tmp_path, tiny_clip_dir):
    v7 = load(write_openimages(tmp_path / "v7"), tmp_path, tiny_clip_dir)
    v6_root = write_openimages(tmp_path / "v6", version="v6", description_header=False)
    assert os.path.exists(os.path.join(v6_root, "oidv6-class-descriptions.csv"))
    with open(os.path.join(v6_root, "oidv6-class-descriptions.csv"), encoding="utf-8") as handle:
        assert handle.readline().startswith(sorted(DESCRIPTIONS)[0])  # no header
    v6 = load(v6_root, tmp_path, tiny_clip_dir)
    assert plain_rows(v6) == plain_rows(v7)
    assert get_hierarchy(v6) == get_hierarchy(v7)
    assert get_build_report(v6)["version"] == "v6"


def test_both_versions_present_needs_a_choice(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    write_openimages(root, version="v6")
    with pytest.raises(DatasetFormatError, match="both V7 and V6 training labels are present") as error:
        load(root, tmp_path, tiny_clip_dir)
    assert "\n" not in str(error.value)
    assert get_build_report(load(root, tmp_path, tiny_clip_dir, version="v6"))["files"]["train_labels"].endswith(
        "oidv6-train-annotations-human-imagelabels.csv")


def test_machine_rows_are_kept_above_a_threshold_for_training_only(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    data = load(root, tmp_path, tiny_clip_dir, machine_confidence=0.5)
    train = by_names(data["train"])
    assert train[IDS["b"]] == (["Car", "Bicycle", "Wheel", "Person"], ["Cat"])  # 0.7 kept, 0.3 not
    assert train[IDS["g"]] == (["Animal"], ["Cat"])  # now has a positive
    assert by_names(data["test"]) == EXPECTED_TEST  # never in the test split
    counts = get_build_report(data)["annotations"]["train"]
    assert counts["machine_rows_kept"] == 2 and counts["machine_rows_ignored"] == 1
    # the machine-labels file, when present, adds positives; never against a human verification of the pair
    machine = [(IDS["c"], "machine", "/m/0jbk", "0.8"), (IDS["a"], "machine", "/m/0k4j", "0.99")]
    write_text(os.path.join(root, file_names("v7")["machine"]), label_csv(machine))
    train = by_names(load(root, tmp_path, tiny_clip_dir, machine_confidence=0.5)["train"])
    assert train[IDS["c"]] == (["Animal", "Apple"], [])
    assert train[IDS["a"]] == EXPECTED_TRAIN[IDS["a"]]  # Car stays a verified negative
    with pytest.raises(ValueError, match="machine_confidence"):
        load(root, tmp_path, tiny_clip_dir, machine_confidence=1.5)


def test_images_listed_but_missing_follow_on_missing_image(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    with pytest.raises(ImageError) as error:
        load(root, tmp_path, tiny_clip_dir, on_missing_image="error")
    assert error.value.missing == [os.path.join(root, "train", f"{IDS['h']}.jpg")]
    assert "on_missing_image" in str(error.value) and "\n" not in str(error.value)
    data = load(root, tmp_path, tiny_clip_dir)  # skip: left out, counted
    assert sorted(data["train"]["image_id"]) == sorted(EXPECTED_TRAIN)
    assert get_build_report(data)["excluded"] == {"missing_or_unreadable_images": 1}


def test_image_lists_define_the_images_of_each_split(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi", image_lists=True)
    rows = [line for line in open(os.path.join(root, "oidv6-train-images-with-labels-with-rotation.csv"),
                                  encoding="utf-8").read().splitlines() if IDS["f"] not in line]
    write_text(os.path.join(root, "oidv6-train-images-with-labels-with-rotation.csv"), "\n".join(rows) + "\n")
    data = load(root, tmp_path, tiny_clip_dir)
    assert IDS["f"] not in data["train"]["image_id"]
    report = get_build_report(data)
    assert report["annotations"]["train"]["rows_of_images_not_in_the_image_list"] == 2
    assert report["files"]["test_image_list"].endswith("test-images-with-rotation.csv")
    assert IDS["f"] in load(root, tmp_path, tiny_clip_dir, use_image_lists=False)["train"]["image_id"]


def test_validation_as_the_test_split(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    data = load(root, tmp_path, tiny_clip_dir, test_split="validation")
    (image_id,) = data["test"]["image_id"]
    assert data["test"][0]["image"].filename.endswith(f"validation/{image_id}.jpg")
    assert by_names(data["test"]) == {image_id: (["Cat"], [])}


def test_without_trainable_list_the_labels_are_the_classes_with_a_training_positive(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi", trainable=None)
    hierarchy = get_hierarchy(load(root, tmp_path, tiny_clip_dir))
    positive = {row[2] for row in TRAIN_ROWS if row[3] == "1" and row[2] in DESCRIPTIONS}
    assert hierarchy.label_ids == sorted(positive)
    assert "Hamster" in hierarchy.labels  # a verified positive, described, no trainable list to leave it out


def test_display_names_shared_by_two_classes_get_their_mid(tmp_path, tiny_clip_dir):
    descriptions = dict(DESCRIPTIONS, **{"/m/09f_2": "Pug"})  # Tulip renamed: two classes named "Pug"
    data = load(write_openimages(tmp_path / "oi", descriptions=descriptions), tmp_path, tiny_clip_dir)
    hierarchy = get_hierarchy(data)
    assert "Pug (/m/016wkx)" in hierarchy.labels and "Pug (/m/09f_2)" in hierarchy.labels
    assert get_build_report(data)["labels"]["display_names_shared_by_several_classes"] == ["Pug"]


def test_row_order_does_not_change_the_dataset(tmp_path, tiny_clip_dir):
    """Single positives are drawn from (seed, ImageID) and the rows are sorted by ImageID: shuffled files give the same
    dataset; another seed draws other single positives among the same positives."""
    first = load(write_openimages(tmp_path / "a"), tmp_path, tiny_clip_dir, validation_fraction=0.3)
    rows = list(TRAIN_ROWS)
    random.Random(4).shuffle(rows)
    shuffled = load(write_openimages(tmp_path / "b", train_rows=rows, test_rows=TEST_ROWS[::-1]), tmp_path,
                    tiny_clip_dir, validation_fraction=0.3)
    assert plain_rows(shuffled) == plain_rows(first)
    assert {"train", "validation", "test"} == set(first)
    observed = {}
    for seed in range(6):
        data = load(write_openimages(tmp_path / "a"), tmp_path, tiny_clip_dir, seed=seed, validation_fraction=0)
        for row in data["train"]:
            assert len(row["observed_labels"]) == 1 and row["observed_labels"][0] in row["labels"]
            observed.setdefault(row["image_id"], set()).add(row["observed_labels"][0])
    assert len(observed[IDS["b"]]) > 1  # three positives: several seeds pick several of them


# ----------------------------------------------------------------------------------------------------------------------
# Groups: the official hierarchy, its levels and Part edges, the classes outside it
# ----------------------------------------------------------------------------------------------------------------------


def groups_of(hierarchy):
    return {label: hierarchy.group_of(label) for label in hierarchy.labels}


@pytest.mark.parametrize("level, expected", [(1, LEVEL1), (2, LEVEL2)])
def test_groups_from_the_hierarchy_level(tmp_path, tiny_clip_dir, level, expected):
    data = load(write_openimages(tmp_path / "oi"), tmp_path, tiny_clip_dir, group_level=level)
    groups = groups_of(get_hierarchy(data))
    assert {label: groups[label] for label in expected} == expected  # Apple: its first path (Food > Fruit)
    report = get_build_report(data)["groups"]
    assert report["in_hierarchy"] == len(expected) and report["outside_hierarchy"] == len(NAMES) - len(expected)
    names = {mid: name for mid, name in DESCRIPTIONS.items()}
    assert [names[mid] for mid in report["group_ids"]] == get_hierarchy(data).groups


def test_part_edges_count_only_when_asked(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    followed = groups_of(get_hierarchy(load(root, tmp_path, tiny_clip_dir, follow_parts=True)))
    assert {label: followed[label] for label in {**LEVEL1, **PARTS}} == {**LEVEL1, **PARTS}
    report = get_build_report(load(root, tmp_path, tiny_clip_dir))["groups"]
    assert report["outside_hierarchy"] == len(OUTSIDE) + len(PARTS)  # Wheel and Human face: Part edges only


def test_classes_outside_the_hierarchy_join_the_nearest_group(tmp_path, tiny_clip_dir):
    """"nearest": each class the hierarchy does not place joins the hierarchy group whose name's CLIP text embedding
    (the loader's prompt template) is the most similar, computed here independently."""
    from hspnet.data import label_text_embeddings

    hierarchy = get_hierarchy(load(write_openimages(tmp_path / "oi"), tmp_path, tiny_clip_dir))
    assert hierarchy.groups == ["Animal", "Vehicle", "Food", "Person"]  # the hierarchy's only: no "other" group
    outside = [name for name in NAMES if name in OUTSIDE or name in PARTS]  # in label order, as the loader embeds
    vectors = label_text_embeddings(outside + hierarchy.groups, tiny_clip_dir)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    nearest = np.argmax(vectors[: len(outside)] @ vectors[len(outside):].T, axis=1)
    assert {name: hierarchy.group_of(name) for name in outside} == {
        name: hierarchy.groups[int(g)] for name, g in zip(outside, nearest)}


def test_classes_outside_the_hierarchy_clustered_or_dropped(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    clustered = load(root, tmp_path, tiny_clip_dir, outside_hierarchy="cluster", num_groups=2)
    hierarchy = get_hierarchy(clustered)
    assert hierarchy.groups[:4] == ["Animal", "Vehicle", "Food", "Person"] and hierarchy.num_groups == 6
    assert {hierarchy.group_of(name) for name in OUTSIDE + list(PARTS)} == set(hierarchy.groups[4:])
    assert get_build_report(clustered)["groups"]["group_ids"][4:] == [None, None]
    dropped = load(root, tmp_path, tiny_clip_dir, outside_hierarchy="drop")
    hierarchy = get_hierarchy(dropped)
    assert hierarchy.labels == [name for name in NAMES if name in LEVEL1]
    assert hierarchy.label_ids == [mid for mid in TRAINABLE if DESCRIPTIONS[mid] in LEVEL1]
    assert IDS["e"] not in dropped["train"]["image_id"]  # Pug only: no label left


def test_a_given_hierarchy_replaces_the_official_one_and_keeps_the_mids(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi", hierarchy=None)
    with pytest.raises(MissingFileError, match="bbox_labels_600_hierarchy.json"):
        load(root, tmp_path, tiny_clip_dir)
    mapping = {name: ("living" if name in ("Cat", "Dog", "Bird", "Animal", "Person", "Human face", "Golden retriever",
                                           "Pug", "Tulip") else "thing") for name in NAMES}
    hierarchy = get_hierarchy(load(root, tmp_path, tiny_clip_dir, hierarchy=mapping))
    assert hierarchy.groups == ["living", "thing"] and hierarchy.label_ids == TRAINABLE


# ----------------------------------------------------------------------------------------------------------------------
# MIDs: dataset -> saved dataset -> model config -> set_labels -> predict
# ----------------------------------------------------------------------------------------------------------------------


def test_mids_travel_to_the_model_and_its_predictions(tmp_path, tiny_clip_dir):
    from hspnet import HSPNetForImageClassification
    from hspnet.apps.predict import Prediction, format_jsonl
    from hspnet.data import load_prepared_dataset, save_prepared_dataset

    data = load(write_openimages(tmp_path / "oi"), tmp_path, tiny_clip_dir)
    save_prepared_dataset(data, tmp_path / "saved")
    hierarchy = get_hierarchy(load_prepared_dataset(str(tmp_path / "saved")))
    assert hierarchy.label_ids == TRAINABLE
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, **hierarchy.model_kwargs())
    assert model.config.label_ids == TRAINABLE
    model.save_pretrained(tmp_path / "model")
    loaded = HSPNetForImageClassification.from_pretrained(tmp_path / "model")
    assert loaded.config.label_ids == TRAINABLE
    loaded.set_labels(["Dog", "Cat", "zebra"])  # carried by name; a new label has no id
    assert loaded.config.label_ids == ["/m/0bt9lr", "/m/01yrx", None]
    line = format_jsonl([Prediction("x.jpg", [("Cat", 0.9), ("zebra", 0.7)])], 0.5,
                        dict(zip(loaded.config.label_names, loaded.config.label_ids)))
    assert json.loads(line)["predictions"] == [{"label": "Cat", "id": "/m/01yrx", "score": 0.9, "threshold": 0.5},
                                               {"label": "zebra", "score": 0.7, "threshold": 0.5}]
    with pytest.raises(ValueError, match="label_ids has 2 entries"):
        type(model.config).from_dict({**model.config.to_dict(), "label_ids": ["/m/1", "/m/2"]})


# ----------------------------------------------------------------------------------------------------------------------
# Verified negatives as evaluation targets
# ----------------------------------------------------------------------------------------------------------------------


def test_test_split_targets_distinguish_positive_negative_unknown(tmp_path, tiny_clip_dir):
    from hspnet.evaluation.openimages import has_verified_negatives, openimages_targets

    data = load(write_openimages(tmp_path / "oi"), tmp_path, tiny_clip_dir)
    test = data["test"]
    assert has_verified_negatives(test)
    targets = openimages_targets(test, len(NAMES))
    index = {name: i for i, name in enumerate(NAMES)}
    for row, image_id in enumerate(test["image_id"]):
        positives, negatives = EXPECTED_TEST[image_id]
        expected = np.full(len(NAMES), -1)
        expected[[index[n] for n in negatives]] = 0
        expected[[index[n] for n in positives]] = 1
        assert targets[row].tolist() == expected.tolist()
    permutation = list(range(len(NAMES)))[::-1]  # a model whose labels are in reverse order
    assert (openimages_targets(test, len(NAMES), permutation) == targets[:, ::-1]).all()


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the line; a file cut short never builds
# ----------------------------------------------------------------------------------------------------------------------


def _cut(path, at):
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:at])


def test_a_labels_file_cut_short_never_builds(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    path = os.path.join(root, file_names("v7")["train"])
    size = os.path.getsize(path)
    lines = len(TRAIN_ROWS) + 1
    for at, match in ((size - 3, "expected 4 fields"), (size - 2, "Confidence must be a number")):
        write_openimages(root)
        _cut(path, at)  # inside the last row: ",/m/0jbk,1\n" -> ",/m/0jbk" or ",/m/0jbk,"
        raises_at(lambda: load(root, tmp_path, tiny_clip_dir), file_names("v7")["train"], line=lines, match=match)
    write_openimages(root)
    _cut(path, size - 1)  # only the final line end: the last row is complete
    assert by_names(load(root, tmp_path, tiny_clip_dir)["train"]) == EXPECTED_TRAIN


def test_other_files_cut_short_never_build(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    names = file_names("v7")
    descriptions = os.path.join(root, names["descriptions"])
    _cut(descriptions, os.path.getsize(descriptions) - 4)  # the last display name cut
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), names["descriptions"], line=len(DESCRIPTIONS) + 1,
              match="looks cut short")
    write_openimages(root)
    trainable = os.path.join(root, names["trainable"])
    _cut(trainable, os.path.getsize(trainable) - 3)  # "/m/06z37_\n" -> "/m/06z3": no such class
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), names["trainable"], line=len(TRAINABLE),
              match="have no display name")
    write_openimages(root)
    _cut(os.path.join(root, "bbox_labels_600_hierarchy.json"), 200)
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), "bbox_labels_600_hierarchy.json", match="invalid JSON")
    write_openimages(root, machine_rows=[(IDS["a"], "machine", "/m/0k4j", "0.75")])
    machine = os.path.join(root, names["machine"])
    _cut(machine, os.path.getsize(machine) - 2)  # "0.75\n" -> "0.7": looks complete, but has no line end
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir, machine_confidence=0.5), names["machine"], line=2,
              match="looks cut short")


@pytest.mark.parametrize("row, line_text, match, field", [
    (1, "ImageID,Source,LabelName", "expected the header", None),
    (3, f"{IDS['a']},verification,cat,1", "is not a class MID", "LabelName"),
    (4, f"{IDS['a']},verification,/m/01yrx,yes", "Confidence must be a number in [0, 1]", "Confidence"),
    (5, f"{IDS['a']},verification,/m/01yrx,1.5", "Confidence must be a number in [0, 1]", "Confidence"),
    (6, ",verification,/m/01yrx,1", "empty ImageID", "ImageID"),
    (7, "../../etc,verification,/m/01yrx,1", "leads outside", "ImageID"),
])
def test_bad_label_rows_are_named_by_file_and_line(tmp_path, tiny_clip_dir, row, line_text, match, field):
    root = write_openimages(tmp_path / "oi")
    path = os.path.join(root, file_names("v7")["train"])
    lines = open(path, encoding="utf-8").read().splitlines()
    lines[row - 1] = line_text
    write_text(path, "\n".join(lines) + "\n")
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir, on_missing_image="skip"), file_names("v7")["train"],
              line=row, field=field, match=match)


def test_bad_descriptions_trainable_and_hierarchy_are_named(tmp_path, tiny_clip_dir):
    names = file_names("v7")
    root = write_openimages(tmp_path / "oi")
    write_text(os.path.join(root, names["descriptions"]), "LabelName,DisplayName\n/m/01yrx,Cat\n/m/01yrx,Kitten\n")
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), names["descriptions"], line=3, match="described twice")
    write_openimages(root)
    write_text(os.path.join(root, names["trainable"]), "/m/01yrx\n/m/0bt9lr\n/m/01yrx\n")
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), names["trainable"], line=3, match="listed twice")
    bad = node("/m/0bl9f", sub=[node("/m/0jbk", sub=[{"Label": "/m/01yrx"}])])
    write_openimages(root, hierarchy=bad)
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), "bbox_labels_600_hierarchy.json",
              field="Subcategory[0].Subcategory[0]", match="'LabelName'")
    write_openimages(root, hierarchy=dict(HIERARCHY, Part="/m/0dzct"))
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), "bbox_labels_600_hierarchy.json", field="Part")
    os.remove(os.path.join(root, names["test"]))
    with pytest.raises(MissingFileError, match="oidv7-test-annotations-human-imagelabels.csv"):
        load(root, tmp_path, tiny_clip_dir)


def test_an_image_in_two_splits_is_refused(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi", test_rows=TEST_ROWS + [(IDS["c"], "verification", "/m/01yrx", "1")])
    raises_at(lambda: load(root, tmp_path, tiny_clip_dir), file_names("v7")["test"], line=len(TEST_ROWS) + 2,
              match="in both the training labels and the test labels")


def test_options_are_checked_and_prepare_dataset_knows_the_name(tmp_path, tiny_clip_dir):
    root = write_openimages(tmp_path / "oi")
    for options, match in (({"group_level": 0}, "group_level"), ({"outside_hierarchy": "other"}, "outside_hierarchy"),
                           ({"version": "v5"}, "version"), ({"test_split": "val"}, "test_split")):
        with pytest.raises(ValueError, match=match):
            load(root, tmp_path, tiny_clip_dir, **options)
    with pytest.raises(TypeError, match="group_levels"):
        load(root, tmp_path, tiny_clip_dir, group_levels=2)
    data = prepare_dataset("Open-Images", root, cache_dir=tmp_path / "cache", clip_model=tiny_clip_dir,
                           on_missing_image="skip", validation_fraction=0)
    assert by_names(data["test"]) == EXPECTED_TEST
    assert prepare_dataset("oi", root, cache_dir=tmp_path / "cache", clip_model=tiny_clip_dir,
                           on_missing_image="skip", validation_fraction=0)["train"].num_rows == len(EXPECTED_TRAIN)


def test_hspnet_prepare_openimages(tmp_path, tiny_clip_dir, capsys):
    from hspnet.cli.prepare import main

    root = write_openimages(tmp_path / "oi")
    argv = ["openimages", "--dataset_root", root, "--clip_model", tiny_clip_dir, "--cache_dir",
            str(tmp_path / "cache"), "-q", "--group_level", "2", "--follow_parts", "--json"]
    assert main(argv) == 1
    assert "--on_missing_image skip" in capsys.readouterr().err
    assert main(argv + ["--on_missing_image", "skip", "--machine_confidence", "0.5"]) == 0
    stats = json.loads(capsys.readouterr().out.split("\nPrepared dataset")[0])
    assert stats["label_ids"] == TRAINABLE and stats["report"]["machine_confidence"] == 0.5
    assert stats["groups"][:4] == ["Animal", "Cat", "Dog", "Bird"]  # level 2, in the order of the hierarchy file


# ----------------------------------------------------------------------------------------------------------------------
# Scale: 3,000 classes, ~10,000 rows
# ----------------------------------------------------------------------------------------------------------------------


def test_three_thousand_classes_build_quickly(tmp_path, tiny_clip_dir):
    root, spec = write_large_openimages(tmp_path / "oi", num_classes=3000, num_images=2000, rows_per_image=5)
    assert len(spec["train_rows"]) + len(spec["test_rows"]) > 12_000
    start = time.perf_counter()
    data = load(root, tmp_path, tiny_clip_dir)
    seconds = time.perf_counter() - start
    hierarchy = get_hierarchy(data)
    assert hierarchy.num_labels == 3000 and len(hierarchy.label_ids) == 3000 and hierarchy.num_groups == 12
    report = get_build_report(data)
    assert report["groups"]["in_hierarchy"] == 600 and report["groups"]["outside_hierarchy"] == 2400
    assert report["annotations"]["train"]["duplicate_rows"] == 200
    assert data["train"].num_rows == 2000 and data["test"].num_rows == 500
    # parsing and grouping (without the CLIP embeddings of 2,400 names by the tiny tower) take well under a second
    # on one core; the bound leaves room for a loaded machine
    assert seconds < 60, f"building 3,000 classes took {seconds:.1f} s"
    row = data["test"][0]
    expected = {(mid, value) for image_id, _, mid, value in spec["test_rows"] if image_id == row["image_id"]}
    assert {(hierarchy.label_ids[i], "1") for i in row["labels"]} | {
        (hierarchy.label_ids[i], "0") for i in row["negative_labels"]} == expected
