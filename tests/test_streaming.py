"""Streamed, sharded data (docs/large-datasets.md): `hspnet prepare ... --shards N` writes Parquet shards with the
images embedded and a dataset card (`hspnet.data.shards`), `--push_to_hub` uploads them as a Hub dataset in one
commit, and `hspnet train --streaming true` trains from them (`hspnet.training.streaming`): each process reads its
own shards, every epoch has the same known length on every process, the batches do not depend on the number of
loader workers, and a run stopped inside an epoch and resumed ends bit-identical to the uninterrupted run: with one
process (Ctrl-C) and with two (`accelerate launch --num_processes 2`, gloo; SIGKILL), whose gathered evaluation
equals a one-process evaluation."""

import json
import os
import shutil

import pytest
import torch

from hspnet.cli.prepare import main as prepare_main
from tests.helpers import interrupt_training_at, one_thread, run_streaming_two_process, tiny_options

DEMO = ["--num_train", "60", "--num_test", "23", "--image_size", "32", "--validation_fraction", "0.25"]
TRAIN_ROWS = 45  # 60 demo images, 25 % held out


@pytest.fixture(autouse=True)
def no_pause_after_each_stream(monkeypatch):
    """datasets 5.2 sleeps 5 s whenever a shuffled stream of several Parquet shards ends (`datasets.config.
    SLEEP_TIME_ON_THREADS_SHUTDOWN`, a workaround for apache/arrow#45214 that its Parquet reader needs for pyarrow <=
    24 only): every epoch here; not what these tests measure."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The tiny demo set prepared by the command line as 4 training shards: the folder (its source images and data
    cache in the sibling `cache`)."""
    folder = tmp_path_factory.mktemp("shards")
    status = prepare_main(["demo", *DEMO, "--cache_dir", str(folder / "cache"), "--output_dir",
                           str(folder / "out"), "--shards", "4", "--quiet"])
    assert status == 0
    return folder / "out"


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_prepare_writes_self_contained_shards_that_datasets_streams(shards, tmp_path):
    import datasets

    from hspnet.data import demo_hierarchy, get_hierarchy, load_demo_dataset, load_prepared_dataset

    assert _files(shards) == ["README.md", "hierarchy.json", "hspnet_build.json", "report.json",
                              "test/test-00000-of-00002.parquet", "test/test-00001-of-00002.parquet",
                              *[f"train/train-0000{i}-of-00004.parquet" for i in range(4)],
                              "validation/validation-00000-of-00001.parquet"]
    info = json.loads((shards / "hspnet_build.json").read_text())
    assert info["format"] == "shards" and info["dataset"] == "demo"
    assert [f["num_rows"] for f in info["shards"]["train"]["files"]] == [12, 11, 11, 11]  # +-1 row
    assert {split: entry["num_rows"] for split, entry in info["shards"].items()} == {
        "train": 45, "validation": 15, "test": 23}

    # the card's YAML lets datasets find every split, streamed, with the hierarchy in the features
    streamed = datasets.load_dataset(str(shards), streaming=True)
    assert set(streamed) == {"train", "validation", "test"} and streamed["train"].num_shards == 4
    assert sum(1 for _ in streamed["test"]) == 23
    assert get_hierarchy(streamed["train"]) == demo_hierarchy()

    # self-contained: a copy reads the same rows after the source images are gone; every image is embedded bytes
    original = load_demo_dataset(cache_dir=str(shards.parent / "cache"), num_train=60, num_test=23, image_size=32,
                                 validation_fraction=0.25)
    sources = {split: [row["image"]["path"] for row in original[split].cast_column(
        "image", datasets.Image(decode=False))] for split in original}
    expected_bytes = {split: [open(path, "rb").read() for path in paths] for split, paths in sources.items()}
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    shutil.rmtree(os.path.dirname(os.path.dirname(sources["train"][0])))  # the demo's image folder
    loaded = load_prepared_dataset(copy, cache_dir=tmp_path / "cache")
    for split in original:
        rows = loaded[split].cast_column("image", datasets.Image(decode=False))
        assert rows["image_id"] == original[split]["image_id"], split
        assert rows["labels"] == original[split]["labels"], split
        assert [value["bytes"] for value in rows["image"]] == expected_bytes[split], split
        assert all("/" not in value["path"] for value in rows["image"]), split
    assert loaded["train"]["index"] == list(range(TRAIN_ROWS))
    assert loaded["train"]["observed_labels"] == original["train"]["observed_labels"]


def test_prepare_shards_and_push_uploads_one_dataset_commit(tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or RepoUrl(f"https://huggingface.co/datasets/{repo_id}"))
    monkeypatch.setattr(HfApi, "list_repo_files", lambda api, repo_id, **kw: [
        "README.md", "train/train-00007-of-00008.parquet", "notes.txt"])
    monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kw: calls.append(
        ("commit", repo_id, kw, [(type(op).__name__, op.path_in_repo) for op in operations])))
    status = prepare_main(["demo", *DEMO, "--cache_dir", str(tmp_path / "cache"), "--shards", "2", "--push_to_hub",
                           "--hub_dataset_id", "me/demo-shards", "--hub_private_repo", "--hub_token", "hf_secret",
                           "--quiet"])
    assert status == 0
    create, commit = calls
    assert create == ("create", "me/demo-shards", {"repo_type": "dataset", "exist_ok": True, "private": True})
    assert commit[0:2] == ("commit", "me/demo-shards") and commit[2]["repo_type"] == "dataset"
    added = sorted(path for kind, path in commit[3] if kind == "CommitOperationAdd")
    assert added == ["README.md", "hierarchy.json", "hspnet_build.json", "report.json",
                     "test/test-00000-of-00001.parquet", "train/train-00000-of-00002.parquet",
                     "train/train-00001-of-00002.parquet", "validation/validation-00000-of-00001.parquet"]
    # the earlier upload's shard goes in the same commit; files that are not shards are left alone
    assert [path for kind, path in commit[3] if kind == "CommitOperationDelete"] == [
        "train/train-00007-of-00008.parquet"]
    out = capsys.readouterr().out
    assert "Pushed to https://huggingface.co/datasets/me/demo-shards" in out and "hf_secret" not in out


def test_a_new_build_replaces_the_shards_of_the_old_one_and_foreign_files_are_kept_safe(tmp_path):
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    assert prepare_main(["demo", *DEMO, "--cache_dir", cache, "--output_dir", str(out), "--shards", "4", "-q"]) == 0
    assert prepare_main(["demo", *DEMO, "--cache_dir", cache, "--output_dir", str(out), "--shards", "2", "-q"]) == 0
    assert [name for name in _files(out) if name.startswith("train/")] == [
        "train/train-00000-of-00002.parquet", "train/train-00001-of-00002.parquet"]
    (out / "train" / "notes.txt").write_text("mine")
    assert prepare_main(["demo", *DEMO, "--cache_dir", cache, "--output_dir", str(out), "--shards", "2", "-q"]) == 1
    assert (out / "train" / "notes.txt").read_text() == "mine"


def test_a_hub_dataset_id_is_read_like_its_folder(shards, monkeypatch):
    """The plumbing of a Hub dataset (no network here): `hspnet_build.json` is downloaded, the splits are loaded by
    the repository id with their files' paths inside it, with the token."""
    import datasets
    import huggingface_hub

    from hspnet.data.shards import open_sharded_dataset

    asked, original = [], datasets.load_dataset
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: asked.append(
        (repo_id, filename, kw)) or str(shards / filename))

    def load_dataset(source, **kwargs):
        asked.append((source, sorted(kwargs["data_files"]), kwargs.get("streaming", False), kwargs["token"]))
        return original(str(shards), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    opened = open_sharded_dataset("me/demo-shards", token="hf_x", cache_dir=str(shards.parent / "cache"))
    assert asked[0] == ("me/demo-shards", "hspnet_build.json", {"repo_type": "dataset", "token": "hf_x"})
    assert asked[1:] == [("me/demo-shards", ["validation"], False, "hf_x"), ("me/demo-shards", ["test"], False, "hf_x"),
                         ("me/demo-shards", ["train"], True, "hf_x")]  # the features (hierarchy) of the stream
    assert len(opened["test"]) == 23 and json.loads(opened["test"].info.description)["hspnet"]["dataset"] == "demo"
    assert sum(1 for _ in opened["train"].open()) == TRAIN_ROWS
    assert asked[-1] == ("me/demo-shards", ["train"], True, "hf_x")


def test_a_streamed_epoch_has_a_known_length_disjoint_shards_and_any_number_of_workers(shards):
    from hspnet.data.batches import make_transform
    from hspnet.data.shards import open_sharded_dataset
    from hspnet.models.hspnet.image_processing_hspnet import HSPNetImageProcessor
    from hspnet.training.streaming import StreamedBatches, StreamedLoader, node_stream

    split = open_sharded_dataset(str(shards), cache_dir=str(shards.parent / "cache"))["train"]

    def epoch(rank, world, number, skip=0):
        batches = StreamedBatches(node_stream(split, 0, 16, rank, world), -(-TRAIN_ROWS // world), 8, rank)
        batches.epoch, batches.skip = number, skip
        return len(batches), [[row["index"] for row in batch] for batch in batches]

    # one process: every image once per epoch, 6 batches (the last one of 5), reshuffled each epoch, repeatable
    steps, zero = epoch(0, 1, 0)
    assert steps == 6 and [len(b) for b in zero] == [8, 8, 8, 8, 8, 5]
    assert sorted(sum(zero, [])) == list(range(TRAIN_ROWS))
    assert epoch(0, 1, 0)[1] == zero and epoch(0, 1, 1)[1] != zero
    assert epoch(0, 1, 0, skip=4)[1] == zero[4:]  # a resume skips whole batches of the same order
    # two processes: ceil(45 / 2) = 23 rows each (8, 8, 7), from disjoint shards covering the split; the process
    # whose shards hold 22 rows starts its stream again for the 23rd
    for number in (0, 1, 2):
        (steps0, rank0), (steps1, rank1) = epoch(0, 2, number), epoch(1, 2, number)
        assert steps0 == steps1 == 3 and [len(b) for b in rank0] == [len(b) for b in rank1] == [8, 8, 7]
        seen0, seen1 = sum(rank0, []), sum(rank1, [])
        assert not set(seen0) & set(seen1) and set(seen0) | set(seen1) == set(range(TRAIN_ROWS)), number
        short = seen0 if len(set(seen0)) == 22 else seen1
        assert len(set(short)) == 22 and short[-1] == short[0]
    with pytest.raises(ValueError, match=r"has 4 shard\(s\), which 3 processes cannot share evenly \(each reads whole "
                                         r"shards of its own\): prepare it with --shards a multiple of 3 \(e.g. 6\)"):
        node_stream(split, 0, 16, 0, 3)

    # through the loader: the same batches, pixels included, with 0 or 2 decoding workers
    transform = make_transform(HSPNetImageProcessor(size={"shortest_edge": 32}), 12)

    def loaded(workers):
        batches = StreamedBatches(node_stream(split, 0, 16, 0, 1), TRAIN_ROWS, 8)
        loader = StreamedLoader(batches, transform, num_workers=workers, device=torch.device("cpu"), description={})
        loader.set_epoch(1)
        return list(loader.skipping(1))

    plain, workers = loaded(0), loaded(2)
    assert len(plain) == len(workers) == 5
    for a, b in zip(plain, workers):
        assert a.keys() == b.keys() == {"pixel_values", "labels", "observed_labels", "index"}
        for key in a:
            assert torch.equal(a[key], b[key]), key


def _same_weights(a, b):
    from safetensors.torch import load_file

    a, b = load_file(a), load_file(b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _same_results(full, resumed):
    a, b = (json.loads((folder / "all_results.json").read_text()) for folder in (full, resumed))
    for key in ("test_before_training", "test", "test_per_class_AP", "best", "history", "world_size"):
        assert a[key] == b[key], key
    assert a["resumed_from"] is None and b["resumed_from"]


def test_a_streamed_run_stopped_inside_an_epoch_resumes_bit_identical(shards, tmp_path, monkeypatch):
    """One process, 6 steps per epoch, checkpoints every 4 steps: stopped in step 9 (epoch 1), resumed from step_8
    (2 batches into epoch 1, recorded as the data position): the weights of step 10 and the results equal the
    uninterrupted run's."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    options = tiny_options(tmp_path, dataset=str(shards), dataset_options={}, streaming=True, shuffle_buffer=16,
                           max_train_steps=10, epochs=3, checkpointing_steps="4", num_workers=0)
    full = dict(options, output_dir=str(tmp_path / "full"))
    stopped = dict(options, output_dir=str(tmp_path / "stopped"))
    with one_thread():
        train(TrainingConfig(**full))
        with monkeypatch.context() as patch:
            interrupt_training_at(patch, 8)
            with pytest.raises(KeyboardInterrupt):
                train(TrainingConfig(**stopped))
        state = json.loads((tmp_path / "stopped" / "checkpoints" / "step_8" / "training_state.json").read_text())
        assert state["data"] == {"kind": "stream", "epoch": 1, "batches": 2, "steps_per_epoch": 6, "num_rows": 45,
                                 "num_shards": 4, "world_size": 1, "rows_per_process": 45, "seed": 0,
                                 "shuffle_buffer": 16}
        results = train(TrainingConfig(**dict(stopped, resume_from_checkpoint="latest")))
    assert results["resumed_from"].endswith("step_8")
    _same_weights(tmp_path / "full" / "checkpoints" / "epoch_1-step_10" / "model.safetensors",
                  tmp_path / "stopped" / "checkpoints" / "epoch_1-step_10" / "model.safetensors")
    _same_results(tmp_path / "full", tmp_path / "stopped")

    # another shuffle buffer is another run: refused before anything is loaded
    from hspnet.training.resume import ResumeMismatchError

    with pytest.raises(ResumeMismatchError, match=r"shuffle_buffer 16 -> 8"):
        train(TrainingConfig(**dict(stopped, shuffle_buffer=8, resume_from_checkpoint="latest")))


def test_streaming_refuses_what_it_cannot_stream(shards, tmp_path):
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    options = tiny_options(tmp_path, dataset=str(shards), dataset_options={}, streaming=True, epochs=1,
                           schedule_epochs=1)
    with pytest.raises(ValueError, match="max_train_samples does not apply to a streamed run"):
        TrainingConfig(**dict(options, max_train_samples=10))
    with pytest.raises(ValueError, match=r"loss 'role' keeps a state for every training image"):
        train(TrainingConfig(**dict(options, loss="role", loss_kwargs={})))
    from hspnet.data.errors import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="not a folder written by `hspnet prepare --shards N`"):
        train(TrainingConfig(**dict(options, dataset=str(shards.parent / "cache"))))


def test_open_images_shards_keep_their_ids_and_negatives_and_train_streamed(tmp_path, tiny_clip_dir):
    """Every dataset prepare knows shards the same way: Open Images' MIDs (`label_ids`) travel in the shards' features
    to the trained model, its verified negatives stay in the evaluation splits."""
    from hspnet.data import get_hierarchy
    from hspnet.data.shards import open_sharded_dataset
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.openimages_fixtures import TRAINABLE, write_openimages

    root = write_openimages(tmp_path / "root")
    assert prepare_main(["openimages", "--dataset_root", root, "--cache_dir", str(tmp_path / "cache"), "--output_dir",
                         str(tmp_path / "out"), "--shards", "2", "--clip_model", str(tiny_clip_dir), "--protocol",
                         "authors", "--on_missing_image", "skip", "-q"]) == 0
    opened = open_sharded_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert get_hierarchy(opened["train"]).label_ids == TRAINABLE and opened["train"].num_shards == 2
    assert "negative_labels" in opened["test"].column_names
    options = tiny_options(tmp_path, dataset=str(tmp_path / "out"), dataset_options={}, streaming=True,
                           protocol="authors", epochs=1, schedule_epochs=1, batch_size=2,
                           output_dir=str(tmp_path / "out-model"))
    with one_thread():
        train(TrainingConfig(**options))
    assert json.loads((tmp_path / "out-model" / "config.json").read_text())["label_ids"] == TRAINABLE


def test_two_processes_stream_disjoint_shards_resume_exactly_and_evaluate_as_one(shards, tmp_path):
    """`accelerate launch --num_processes 2` (gloo): 3 steps per epoch per process (23 rows each), checkpoints every 2
    steps; the processes train on disjoint shards; a run killed (SIGKILL) in step 5 (epoch 1) and resumed from step_4
    ends with the uninterrupted run's weights and results; the gathered test metrics equal a one-process evaluation
    of the model."""
    options = tiny_options(tmp_path, dataset=str(shards), dataset_options={}, streaming=True, shuffle_buffer=16,
                           max_train_steps=5, epochs=3, checkpointing_steps="2")
    full = dict(options, output_dir=str(tmp_path / "full"))
    killed = dict(options, output_dir=str(tmp_path / "killed"))
    reports = {}
    for mode, run_options in (("full", full), ("killed", killed), ("resumed", killed)):
        result = run_streaming_two_process(tmp_path / mode, mode, run_options, 4)
        if mode == "killed":
            assert result.returncode != 0 and not list(tmp_path.glob("killed-*.json")), result.stderr[-4000:]
            continue
        assert result.returncode == 0, result.stderr[-4000:]
        reports[mode] = [json.loads((tmp_path / f"{mode}-{rank}.json").read_text()) for rank in (0, 1)]
        assert [r["status"] for r in reports[mode]] == [0, 0], result.stderr[-4000:]

    # epoch 0: 3 batches (8, 8, 7) on each process, from disjoint shards that cover the split
    epoch0 = [[index for number, batch in r["seen"] if number == 0 for index in batch] for r in reports["full"]]
    assert [len(rows) for rows in epoch0] == [23, 23]
    assert not set(epoch0[0]) & set(epoch0[1]) and set(epoch0[0]) | set(epoch0[1]) == set(range(TRAIN_ROWS))
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["epoch_1-step_5", "step_4"]
    state = json.loads((tmp_path / "killed" / "checkpoints" / "step_4" / "training_state.json").read_text())
    assert (state["data"]["epoch"], state["data"]["batches"], state["data"]["world_size"]) == (1, 1, 2)

    _same_weights(tmp_path / "full" / "checkpoints" / "epoch_1-step_5" / "model.safetensors",
                  tmp_path / "killed" / "checkpoints" / "epoch_1-step_5" / "model.safetensors")
    _same_results(tmp_path / "full", tmp_path / "killed")

    # the 2-process test metrics (23 images: an uneven split, gathered) equal one process's evaluation of the model
    from accelerate import Accelerator
    from transformers import AutoImageProcessor

    from hspnet import HSPNetForImageClassification
    from hspnet.data import load_prepared_dataset
    from hspnet.data.batches import eval_dataloader
    from hspnet.evaluation.loop import evaluate_model

    results = json.loads((tmp_path / "full" / "all_results.json").read_text())
    assert results["world_size"] == 2
    model = HSPNetForImageClassification.from_pretrained(tmp_path / "full").eval()
    test = load_prepared_dataset(shards, cache_dir=tmp_path / "cache")["test"]
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(eval_dataloader(test, AutoImageProcessor.from_pretrained(tmp_path / "full"), 12,
                                                  batch_size=8))
    with one_thread():
        metrics, _ = evaluate_model(model, loader, accelerator, 12, "test (one process)")
    assert metrics["num_samples"] == results["test"]["num_samples"] == 23
    assert metrics == results["test"]  # every metric, exactly (the same batches of 8, split between the processes)
