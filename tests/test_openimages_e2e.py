"""Open Images at scale, end to end (docs/large-datasets.md, docs/datasets.md#open-images): official-format files
with 2,000 trainable classes are prepared by the command line into Parquet shards, a tiny model is trained from them
streamed in two processes (`accelerate launch --num_processes 2`, gloo), a run killed inside an epoch and resumed ends
bit-identical to the uninterrupted one, `hspnet evaluate` reports the Open Images protocol (checked against AP
computed here on the verified pairs only), and `hspnet predict` names display names with their MIDs."""

import json

import numpy as np
import pytest
import torch

from hspnet.cli.evaluate import main as evaluate_main
from hspnet.cli.predict import main as predict_main
from hspnet.cli.prepare import main as prepare_main
from tests.helpers import run_streaming_two_process, tiny_options
from tests.openimages_fixtures import large_spec, write_large_openimages

SPEC = dict(num_classes=2000, num_in_hierarchy=600, num_top=12, num_images=64, rows_per_image=5, seed=3)


@pytest.fixture(autouse=True)
def no_pause_after_each_stream(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # see tests/test_streaming.py


def reference_openimages_map(scores, positives, negatives):
    """The protocol written out: per class, the images with a verified label (present or absent) ranked by score;
    AP = the mean over its verified positives of the precision at their rank; the mean over classes with a verified
    positive. `scores` (N, C) float, `positives` / `negatives` (N, C) bool."""
    aps = []
    for c in range(scores.shape[1]):
        verified = positives[:, c] | negatives[:, c]
        if not positives[verified, c].any():
            continue
        order = np.argsort(-scores[verified, c], kind="stable")
        hits = positives[verified, c][order]
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return 100.0 * float(np.mean(aps)), len(aps)


def test_open_images_sharded_streamed_two_processes_resumed_evaluated_and_predicted(tmp_path, tiny_clip_dir):
    root, _ = write_large_openimages(tmp_path / "openimages", **SPEC)
    spec = large_spec(**SPEC)
    shards = tmp_path / "shards"
    assert prepare_main(["openimages", "--dataset_root", str(root), "--cache_dir", str(tmp_path / "cache"),
                         "--output_dir", str(shards), "--shards", "2", "--clip_model", str(tiny_clip_dir),
                         "--protocol", "authors", "-q"]) == 0

    # train streamed in two processes: uninterrupted; killed in step 7 (epoch 1, after the step_6 checkpoint, 2
    # batches into the epoch); resumed
    options = tiny_options(tmp_path, dataset=str(shards), dataset_options={}, streaming=True, shuffle_buffer=16,
                           protocol="authors", epochs=2, schedule_epochs=2, batch_size=8, checkpointing_steps="3")
    runs = {"full": dict(options, output_dir=str(tmp_path / "full")),
            "killed": dict(options, output_dir=str(tmp_path / "killed"))}
    for mode, run in (("full", runs["full"]), ("killed", runs["killed"]), ("resumed", runs["killed"])):
        result = run_streaming_two_process(tmp_path / mode, mode, run, 7)
        if mode == "killed":
            assert result.returncode != 0, result.stderr[-4000:]
            continue
        assert result.returncode == 0, result.stderr[-4000:]
        assert [json.loads((tmp_path / f"{mode}-{rank}.json").read_text())["status"] for rank in (0, 1)] == [0, 0]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step_6" / "training_state.json").read_text())
    assert (state["data"]["epoch"], state["data"]["batches"], state["data"]["world_size"]) == (1, 2, 2)

    from safetensors.torch import load_file

    full, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("full", "killed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert len(names) == SPEC["num_classes"]
    assert config["label_ids"] == spec["trainable"]  # MIDs, in label order
    assert [spec["descriptions"][mid] for mid in config["label_ids"]] == names  # display names

    # evaluate: the Open Images protocol against AP computed here on the verified pairs of the same scores
    assert evaluate_main(["--model_name_or_path", str(tmp_path / "full"), "--dataset", str(shards), "--split", "test",
                          "--no_plot", "--output_dir", str(tmp_path / "eval"), "--cache_dir",
                          str(tmp_path / "cache")]) == 0
    reported = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics_openimages"]

    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification
    from hspnet.data import load_prepared_dataset

    test = load_prepared_dataset(str(shards), cache_dir=str(tmp_path / "cache"))["test"]
    model = HSPNetForImageClassification.from_pretrained(tmp_path / "full").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "full")
    pixels = processor(images=[row["image"].convert("RGB") for row in test], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        scores = model(pixel_values=pixels).logits.numpy()
    index = {name: i for i, name in enumerate(names)}
    dataset_names = test.features["labels"].feature.names
    positives = np.zeros(scores.shape, bool)
    negatives = np.zeros(scores.shape, bool)
    for row, (pos, neg) in enumerate(zip(test["labels"], test["negative_labels"])):
        positives[row, [index[dataset_names[i]] for i in pos]] = True
        negatives[row, [index[dataset_names[i]] for i in neg]] = True
    expected, classes = reference_openimages_map(scores, positives, negatives)
    assert reported["num_classes_evaluated"] == classes and 0 < classes < SPEC["num_classes"]
    assert reported["mAP"] == pytest.approx(expected, abs=1e-4)
    # the training run selected and reported by the same protocol (its test split is the selection split here)
    results = json.loads((tmp_path / "full" / "all_results.json").read_text())
    assert results["test"]["mAP_openimages"] == pytest.approx(expected, abs=1e-4)
    assert results["test"]["mAP_openimages_classes"] == classes

    # predict: display names with their MIDs
    image = tmp_path / "one.png"
    test[0]["image"].convert("RGB").save(image)
    out = tmp_path / "predictions.jsonl"
    assert predict_main([str(image), "--model_name_or_path", str(tmp_path / "full"), "--top_k", "3", "--format",
                         "jsonl", "--output", str(out), "--no_progress"]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 3
    for item in predictions:
        assert spec["descriptions"][item["id"]] == item["label"] and item["id"].startswith("/m/")
