"""The built-in demo dataset."""


import datasets
import numpy as np

from hspnet.data import demo_hierarchy, draw_demo_image, get_hierarchy, load_demo_dataset
from hspnet.cli.prepare import main

datasets.disable_progress_bars()


def test_demo_schema_and_contents(tmp_path):
    data = load_demo_dataset(cache_dir=tmp_path / "cache", num_train=50, num_test=20)
    assert {split: data[split].num_rows for split in data} == {"train": 40, "validation": 10, "test": 20}
    hierarchy = get_hierarchy(data)
    assert hierarchy == demo_hierarchy()
    assert hierarchy.groups == ["round shape", "polygon", "line"] and hierarchy.num_labels == 12
    row = data["train"][0]
    assert row["image"].mode == "RGB" and row["image"].size == (64, 64)
    assert row["image_id"].startswith("train/")
    seen = set()
    for split in data.values():
        for labels in split["labels"]:
            assert 1 <= len(labels) <= 4 and labels == sorted(set(labels))
            seen.update(labels)
    assert seen == set(range(12))
    assert list(data["test"].features) == ["image", "image_id", "labels"]


def test_builtin_demo_hierarchy_is_what_the_demo_draws():
    """hspnet/data/hierarchies/demo.json names, in order, the objects hspnet.data.demo draws, in their groups."""
    from hspnet.data.demo import DEMO_OBJECTS
    from hspnet.data.hierarchy import builtin_hierarchy

    hierarchy = builtin_hierarchy("demo")
    assert hierarchy.labels == [label for label, _, _, _ in DEMO_OBJECTS]
    assert [hierarchy.groups[g] for g in hierarchy.label_to_group] == [group for _, group, _, _ in DEMO_OBJECTS]
    assert hierarchy.groups == list(dict.fromkeys(group for _, group, _, _ in DEMO_OBJECTS))


def test_demo_is_deterministic(tmp_path):
    a = load_demo_dataset(cache_dir=tmp_path / "a", num_train=30, num_test=10, image_size=32)
    b = load_demo_dataset(cache_dir=tmp_path / "b", num_train=30, num_test=10, image_size=32, num_proc=2)
    for split in a:
        assert a[split]["labels"] == b[split]["labels"]
        assert a[split]["image_id"] == b[split]["image_id"]
    assert np.array_equal(np.asarray(a["test"][3]["image"]), np.asarray(b["test"][3]["image"]))
    other = load_demo_dataset(cache_dir=tmp_path / "a", num_train=30, num_test=10, image_size=32, seed=1)
    assert other["test"]["labels"] != a["test"]["labels"]
    image, labels = draw_demo_image(0, "test", 3, 32)
    assert labels == a["test"][3]["labels"]
    assert np.array_equal(np.asarray(image), np.asarray(a["test"][3]["image"]))


def test_demo_objects_are_large_and_colourful():
    image, labels = draw_demo_image(7, "train", 0, 64)
    pixels = np.asarray(image.resize((32, 32))).reshape(-1, 3).astype(int)
    bright = (pixels.max(axis=1) > 100).mean()
    assert bright > 0.04 * len(labels)  # the objects cover a visible share of the 32x32 image


def test_demo_cli(tmp_path, capsys):
    assert main(["demo", "--num-train", "20", "--num-test", "8", "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "Dataset demo: 12 labels in 3 groups" in out and "magenta diagonal line" in out
    assert "validation" in out


def test_prepare_dataset_dispatch_and_multi_hot(tmp_path):
    import pytest

    from hspnet.data import MissingFileError, prepare_dataset, to_multi_hot

    data = prepare_dataset("demo", cache_dir=tmp_path / "cache", num_train=20, num_test=5, image_size=16)
    targets = to_multi_hot(data["train"]["observed_labels"], 12)
    assert targets.shape == (data["train"].num_rows, 12) and (targets.sum(axis=1) == 1).all()
    with pytest.raises(MissingFileError):
        prepare_dataset("voc")
    with pytest.raises(ValueError, match="Unknown dataset"):
        prepare_dataset("imagenet", root=tmp_path)


def test_cli_push_to_hub(tmp_path, monkeypatch, capsys):
    pushed = {}

    def fake_push(self, repo_id, **kwargs):
        pushed.update(repo_id=repo_id, splits=list(self), **kwargs)

    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", fake_push)
    args = ["demo", "--num-train", "10", "--num-test", "4", "--cache-dir", str(tmp_path / "c"), "-q"]
    assert main([*args, "--push_to_hub", "--hub_dataset_id", "me/demo", "--private"]) == 0
    assert pushed == {"repo_id": "me/demo", "splits": ["train", "validation", "test"], "private": True, "token": None}
    assert "Pushed to https://huggingface.co/datasets/me/demo" in capsys.readouterr().out
