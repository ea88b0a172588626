"""`hspnet.training.resume`: what a checkpoint remembers of its data and options, so a resume that would change the result is
refused (`dataset_fingerprint`, `settings_differences`; more in `test_training_reliability.py`).

The fingerprints expected are computed here from the rows as Python reads them (`dataset[i]`), not by the function."""

import hashlib
import json
from types import SimpleNamespace

from datasets import ClassLabel, Dataset, Features, List, Value

from hspnet.training.resume import dataset_differences, dataset_fingerprint

NAMES = [f"label {i}" for i in range(50)]
HIERARCHY = SimpleNamespace(labels=NAMES, groups=["a", "b"], label_to_group=[i % 2 for i in range(50)])


def _split(rows, observed=True):
    columns = {"image_id": Value("string"), "labels": List(ClassLabel(names=NAMES))}
    if observed:
        columns["observed_labels"] = List(ClassLabel(names=NAMES))
    data = {"image_id": [r[0] for r in rows], "labels": [r[1] for r in rows]}
    if observed:
        data["observed_labels"] = [r[1][:1] for r in rows]
    return Dataset.from_dict(data, features=Features(columns))


def _expected_content(split, columns):
    rows = [split[i] for i in range(len(split))]
    value = [[row[column] for row in rows] for column in columns]
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def test_fingerprint_hashes_ids_and_labels_in_row_order_through_an_index_mapping():
    rows = [(f"img/{i}.jpg", sorted({i % 50, (7 * i) % 50})) for i in range(30)]
    train = _split(rows).shuffle(seed=1).select(range(20))  # an indices mapping over the Arrow table
    test = _split(rows[:5], observed=False)
    got = dataset_fingerprint(HIERARCHY, {"train": train, "test": test})
    assert got["labels"] == NAMES and got["groups"] == ["a", "b"] and got["label_to_group"] == HIERARCHY.label_to_group
    assert got["splits"]["train"] == {
        "num_images": 20, "content": _expected_content(train, ["image_id", "observed_labels", "labels"])}
    assert got["splits"]["test"] == {"num_images": 5, "content": _expected_content(test, ["image_id", "labels"])}
    # the same rows in another order, or one label changed, are other data
    reordered = dataset_fingerprint(HIERARCHY, {"train": _split(rows).shuffle(seed=2).select(range(20)), "test": test})
    assert dataset_differences(got, reordered) and not dataset_differences(got, got)
    changed = [(image_id, labels) for image_id, labels in rows[:5]]
    changed[0] = (changed[0][0], [49])
    other = dataset_fingerprint(HIERARCHY, {"train": train, "test": _split(changed, observed=False)})
    assert other["splits"]["test"]["content"] != got["splits"]["test"]["content"]
    # the dataset passed in keeps its own format
    assert train.format["type"] is None


def test_an_option_newer_than_the_checkpoint_counts_as_its_default():
    from hspnet.training.resume import settings_differences

    run = {"world_size": 1, "mixed_precision": "no", "device": "cpu", "versions": {}}
    saved = {"seed": 0, "torch_compile": False, "run": run}  # written before torch_compile_backend / _mode existed
    current = {"seed": 0, "torch_compile": False, "torch_compile_backend": None, "torch_compile_mode": None, "run": run}
    assert settings_differences(saved, current) == ([], [], [])
    changed = dict(current, torch_compile=True, torch_compile_backend="aot_eager")
    assert settings_differences(saved, changed)[1] == ["torch_compile False -> True",
                                                      "torch_compile_backend None -> 'aot_eager'"]
    # an option the current version does not know stays a difference
    assert settings_differences(dict(saved, retired=1), current)[1] == ["retired 1 -> (not set)"]


def test_compile_backend_and_mode_imply_torch_compile_and_are_checked():
    import pytest

    from hspnet.training.arguments import TrainingConfig

    assert TrainingConfig(torch_compile_backend="aot_eager").torch_compile is True
    assert TrainingConfig(torch_compile_mode="max-autotune").torch_compile is True
    assert TrainingConfig().torch_compile is False
    with pytest.raises(ValueError, match="torch_compile_backend must be one of .* got 'inductr'"):
        TrainingConfig(torch_compile_backend="inductr")
    with pytest.raises(ValueError, match="torch_compile_mode must be one of .* got 'fast'"):
        TrainingConfig(torch_compile_mode="fast")
