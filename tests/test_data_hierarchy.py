"""Label hierarchies (docs/method.md, sections 5.3 and 5.5): the built-in ones, files (a key or a group named
twice is refused, naming the line), reading them back from datasets, and the automatic one."""

import json
import os

import datasets
import numpy as np
import pytest

from hspnet.data import (
    DatasetFormatError,
    Hierarchy,
    auto_hierarchy,
    builtin_hierarchy,
    cluster_label_embeddings,
    default_num_groups,
    get_hierarchy,
    load_demo_dataset,
    load_hierarchy_file,
    load_image_folder,
    load_prepared_dataset,
    save_prepared_dataset,
)
from tests.helpers import folder_with, raises_at, write_text

datasets.disable_progress_bars()


COCO_SUPERCATEGORIES = [
    "person", "vehicle", "outdoor", "animal", "accessory", "sports",
    "kitchen", "food", "furniture", "electronic", "appliance", "indoor",
]  # fmt: skip


@pytest.mark.parametrize(
    "name, labels, groups", [("coco", 80, 12), ("voc", 20, 4), ("nuswide", 81, 6), ("cub", 312, 20), ("demo", 12, 3)]
)
def test_builtin_sizes(name, labels, groups):
    hierarchy = builtin_hierarchy(name)
    assert (hierarchy.num_labels, hierarchy.num_groups) == (labels, groups)
    assert sorted(set(hierarchy.label_to_group)) == list(range(groups))


def test_builtin_contents_match_the_authors():
    coco = builtin_hierarchy("coco")
    assert coco.groups == COCO_SUPERCATEGORIES
    assert coco.label_to_group[:15] == [0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    assert coco.members()["indoor"] == ["book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"]
    voc = builtin_hierarchy("voc")
    assert voc.label_to_group == [0, 0, 2, 0, 1, 0, 0, 2, 1, 2, 1, 2, 2, 0, 3, 1, 2, 1, 0, 1]
    nus = builtin_hierarchy("nuswide")
    assert nus.groups == ["activity", "program", "scene", "people", "object", "graphics"]
    assert nus.labels[0] == "airport" and nus.labels[-1] == "zebra" and nus.group_of("map") == "graphics"
    cub = builtin_hierarchy("cub")
    # the authors' CUB groups are the body part named by the last word of each attribute
    assert all(label.split()[-1] == cub.group_of(index) for index, label in enumerate(cub.labels))
    assert builtin_hierarchy("NUS-WIDE") == nus and builtin_hierarchy("VOC2012") == voc
    with pytest.raises(ValueError, match="No built-in hierarchy"):
        builtin_hierarchy("imagenet")


def test_hierarchy_validation():
    with pytest.raises(ValueError, match="duplicate label"):
        Hierarchy(["a", "a"], ["g"], [0, 0])
    with pytest.raises(ValueError, match="outside"):
        Hierarchy(["a", "b"], ["g"], [0, 1])
    with pytest.raises(ValueError, match="no label"):
        Hierarchy(["a", "b"], ["g", "h", "i"], [0, 1])
    with pytest.raises(ValueError, match="entries for"):
        Hierarchy(["a", "b"], ["g"], [0])
    hierarchy = Hierarchy(["a", "b", "c"], ["g", "h"], [1, 0, 1])
    assert hierarchy.members() == {"g": ["b"], "h": ["a", "c"]}
    assert Hierarchy.from_dict(hierarchy.to_dict()) == hierarchy


def test_hierarchy_files(tmp_path):
    full = Hierarchy(["cat", "dog", "car"], ["animal", "vehicle"], [0, 0, 1])
    assert load_hierarchy_file(full.save(tmp_path / "h.json")) == full
    path = write_text(tmp_path / "map.json", json.dumps({"car": "vehicle", "cat": "animal", "dog": "animal"}))
    assert load_hierarchy_file(path, label_names=["cat", "dog", "car"]) == full
    path = write_text(tmp_path / "groups.json", json.dumps({"animal": ["cat", "dog"], "vehicle": ["car"]}))
    assert load_hierarchy_file(path, label_names=["cat", "dog", "car"]) == full
    path = write_text(
        tmp_path / "h.csv", "label,group\n# comment\ncat,animal\ndog,animal\n\ncar,vehicle\nbus,vehicle\n"
    )
    assert load_hierarchy_file(path, label_names=["cat", "dog", "car"]) == full  # 'bus' ignored
    path = write_text(tmp_path / "h.tsv", "cat\tanimal\ndog\tanimal\ncar\tvehicle\n")
    assert load_hierarchy_file(path) == full

    bad = write_text(tmp_path / "bad.csv", "cat,animal\ndog\n")
    with pytest.raises(DatasetFormatError) as error:
        load_hierarchy_file(bad)
    assert error.value.line == 2 and "bad.csv" in str(error.value)
    twice = write_text(tmp_path / "twice.csv", "cat,animal\ncat,pet\n")
    with pytest.raises(DatasetFormatError, match="listed twice"):
        load_hierarchy_file(twice)
    with pytest.raises(DatasetFormatError, match="'car'"):
        load_hierarchy_file(write_text(tmp_path / "part.csv", "cat,animal\n"), label_names=["cat", "car"])
    with pytest.raises(DatasetFormatError, match="line 1"):
        load_hierarchy_file(write_text(tmp_path / "broken.json", "{nope"))


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


def test_get_hierarchy_round_trips(tmp_path):
    data = load_demo_dataset(cache_dir=tmp_path / "cache", num_train=20, num_test=6, image_size=16)
    expected = builtin_hierarchy("demo")
    assert get_hierarchy(data) == expected
    assert get_hierarchy(data["test"]) == expected
    assert get_hierarchy(data["train"].features) == expected
    saved = save_prepared_dataset(data, tmp_path / "arrow")
    assert get_hierarchy(saved) == expected  # a save_to_disk folder
    assert get_hierarchy(datasets.load_from_disk(saved)) == expected
    assert get_hierarchy(os.path.join(saved, "hierarchy.json")) == expected
    parquet = save_prepared_dataset(data, tmp_path / "parquet", embed_images=False)
    reloaded = load_prepared_dataset(parquet, cache_dir=tmp_path / "cache")
    assert get_hierarchy(reloaded) == expected
    assert reloaded["train"][0]["image"].size == (16, 16)
    plain = datasets.Dataset.from_dict({"labels": [[0]]})
    with pytest.raises(ValueError, match="no label hierarchy"):
        get_hierarchy(plain)


def test_cluster_label_embeddings_recovers_planted_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    truth = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    embeddings = np.stack([centres[g] + rng.normal(size=16) * 0.3 for g in truth])
    names = [f"label{i}" for i in range(10)]
    for method in ("kmeans", "agglomerative"):
        hierarchy = cluster_label_embeddings(names, embeddings, num_groups=3, method=method, seed=1)
        assert hierarchy.label_to_group == truth  # groups numbered by their first label
        for group, members in hierarchy.members().items():
            assert group in members  # named after one of its labels
    assert default_num_groups(80) == 9 and default_num_groups(20) == 4 and default_num_groups(1) == 1
    assert cluster_label_embeddings(names, embeddings).num_groups == 3  # round(sqrt(10))
    with pytest.raises(ValueError, match="num_groups"):
        cluster_label_embeddings(names, embeddings, num_groups=11)


def test_auto_hierarchy_on_tiny_clip(tiny_clip_dir):
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer, tiny_clip_model

    labels = ["cat", "dog", "car", "bus", "red apple", "banana", "person"]
    first = auto_hierarchy(labels, clip_model=tiny_clip_dir, num_groups=3, seed=0)
    assert first.labels == labels and first.num_groups == 3
    assert all(group in members for group, members in first.members().items())
    assert auto_hierarchy(labels, clip_model=tiny_clip_dir, num_groups=3, seed=0) == first
    agglomerative = auto_hierarchy(labels, clip_model=tiny_clip_dir, method="agglomerative")
    assert agglomerative.num_groups == default_num_groups(len(labels))
    instance = auto_hierarchy(
        labels, clip_model=tiny_clip_model(seed=0), tokenizer=byte_level_clip_tokenizer(), num_groups=3, seed=0
    )
    assert instance == first  # save_tiny_clip(seed=0) saves the same weights
    other = auto_hierarchy(labels, clip_model=tiny_clip_dir, num_groups=3, template="an image of {}")
    assert other.labels == labels
