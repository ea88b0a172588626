"""The Hugging Face Hub (`hspnet.hub`): model cards, pushing a model folder (`save_pretrained(push_to_hub=True)`,
`hspnet push`), pushing checkpoints during training (`--hub_strategy`) in the background, surviving failed uploads,
resuming from a pushed state (`--resume_from_checkpoint hub`), only the main process uploading, and tokens that are
used but written nowhere.

No network: the `fake_hub` fixture (`tests.helpers.FakeHub`) records every commit and keeps the repository's files in
a local folder, from which the resume downloads. Expected commits are worked out by hand from the tiny run: 45
training images, batch 8 -> 6 steps per epoch; `checkpointing_steps 4` over 2 epochs saves states at steps 4, 6 (end
of epoch 0), 8 and 12 (end of epoch 1); the first best model is saved at the end of epoch 0."""

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from hspnet import cli
from hspnet.hub import cards, transfer
from hspnet.hub.transfer import HubUploader, model_files, push_folder_to_hub
from hspnet.training.arguments import TrainingConfig
from hspnet.training.ema import ModelEMA
from hspnet.training.loop import train
from hspnet.training.run_folder import BEST_MARKER_NAME
from tests.helpers import (
    FakeHub,
    as_argv,
    error_line,
    hub_options,
    one_thread,
    run_main,
    synchronous_uploads,
    tiny_options,
)

MODEL_FILES = {"config.json", "model.safetensors", "configuration_hspnet.py", "modeling_hspnet.py", "losses.py",
               "preprocessor_config.json"}  # at least these (save_pretrained writes every remote-code file)


STATE_FILES = {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "training_args.json",
               "hspnet_checkpoint.json", "training_state.json", "loss_state.safetensors", "ema.safetensors"}


TOKEN = "hf_SeCrEtToKeN1234567890"


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n")[0][4:])


def no_leftovers(folder: Path):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".hub-")]


# ----------------------------------------------------------------------------------------------------------------------
# cards
# ----------------------------------------------------------------------------------------------------------------------


def test_card_yaml_is_safe_and_the_model_index_is_complete(make_model):
    metadata = cards.card_metadata(
        tags=["hspnet", "custom_code"], license="apache-2.0", datasets=["user/data: with colon"],
        base_model="openai/clip-vit-base-patch16",
        model_index=cards.model_index("HSPNet (COCO-2014, 'RN50')", dataset_type="coco", dataset_name="yes",
                                    dataset_split="test",
                                    metrics=[{"type": "mAP", "value": 75.7, "name": "mAP: published # not measured"}]))
    card = cards.render_card(metadata, "\n# Title\n")
    assert card.endswith("---\n\n# Title\n")
    loaded = card_metadata(card)
    assert loaded == metadata  # quotes, colons, '#', 'yes' all survive
    result = loaded["model-index"][0]["results"][0]
    assert result["dataset"] == {"type": "coco", "name": "yes", "split": "test"}
    assert result["metrics"][0]["value"] == 75.7 and result["task"]["type"] == "image-classification"
    assert list(loaded)[:3] == ["library_name", "pipeline_tag", "tags"]
    with pytest.raises(ValueError, match="YAML round trip"):
        cards.render_card({"x": float("nan")}, "")

    config = make_model().config
    final = cards.model_card(config, dataset="demo", metrics={"mAP": 88.25, "CF1": 70.0, "num_samples": 9},
                           recipe={"seed": 0}, repo_id="me/m", base_model="tiny-random", license="mit")
    meta = card_metadata(final)
    assert meta["license"] == "mit" and meta["datasets"] == ["demo"] and meta["base_model"] == "tiny-random"
    assert [m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]] == ["mAP", "CF1"]
    assert "Training in progress" not in final and "| mAP | 88.25 |" in final
    progress = cards.model_card(config, dataset="demo", metrics=None, recipe={"seed": 0}, repo_id="me/m",
                              progress={"epoch": 3, "epochs": 60, "step": 1234, "total_steps": 38460,
                                        "best_metric": 71.234, "best_epoch": 2, "selection_split": "validation"})
    assert "model-index" not in card_metadata(progress)  # test metrics exist only at the end
    assert ("**Training in progress**: epoch 3 of 60, step 1234 of 38460; best validation mAP so far **71.23** "
            "(epoch 2)") in progress
    assert "replaced by the final one" in progress


def test_the_model_index_names_the_model_and_the_datasets_own_name(make_model, trained_tiny_model):
    """The model-index entry is named after the Hub repository, else the output folder (never the usage snippet's
    placeholder "path/to/this/folder" -> "folder"), and its dataset is the one the loader recorded, with its title for
    the built-in ones; images of your own are named after their folder (and are no Hub `datasets:` entry)."""
    config = make_model().config
    metrics = {"mAP": 50.0}

    def index(**kwargs):
        card = cards.model_card(config, metrics=metrics, recipe={}, **kwargs)
        return card_metadata(card)["model-index"][0], card_metadata(card).get("datasets")

    entry, datasets = index(dataset="voc", dataset_name="voc", model_name="my-run")
    assert entry["name"] == "my-run" and datasets == ["voc"]
    assert entry["results"][0]["dataset"] == {"type": "pascal_voc", "name": "PASCAL VOC 2012"}
    entry, _ = index(dataset="voc", dataset_name="voc", model_name="my-run", repo_id="me/hspnet-voc")
    assert entry["name"] == "hspnet-voc"
    entry, datasets = index(dataset="folder", dataset_name="my_photos", model_name="out")
    assert entry["results"][0]["dataset"] == {"type": "my_photos", "name": "my_photos"} and datasets is None

    # a run of `hspnet train` on the demo data, saved in a folder named "model"
    trained = card_metadata((Path(trained_tiny_model) / "README.md").read_text())["model-index"][0]
    assert trained["name"] == "model"
    assert trained["results"][0]["dataset"] == {"type": "demo", "name": "hspnet demo (coloured shapes)"}



# ----------------------------------------------------------------------------------------------------------------------
# pushing a model folder
# ----------------------------------------------------------------------------------------------------------------------


def test_push_to_hub_commits_exactly_the_model_files(trained_with_checkpoints, monkeypatch, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    out, _ = trained_with_checkpoints
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["files"] = sorted(op.path_in_repo for op in operations)
        calls["card"] = next(op for op in operations if op.path_in_repo == "README.md").path_or_fileobj
        return None

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    push_folder_to_hub(str(out), "someone/hspnet-demo")
    assert calls["repo"] == "someone/hspnet-demo"
    # exactly what save_pretrained writes (config, weights, every remote-code file, image processor) plus the card:
    # a remote-code file left out would break `trust_remote_code` loading from the Hub
    from hspnet import HSPNetForImageClassification

    saved = tmp_path / "saved"
    HSPNetForImageClassification.from_pretrained(out).save_pretrained(saved)
    expected = sorted([p.name for p in saved.iterdir()] + ["README.md", "training_args.json"])
    assert {"config.json", "model.safetensors", "modeling_hspnet.py", "configuration_hspnet.py",
            "preprocessor_config.json"} <= set(expected)
    assert calls["files"] == expected
    assert not {"all_results.json", "train.log", ".hspnet-best.json"} & set(calls["files"])
    # the run's options travel with the model (evaluation reads the base CLIP and the seed there); no secret
    args = json.loads((out / "training_args.json").read_text())
    assert args["clip_model"] == "tiny-random" and args["seed"] == 0 and args["batch_size"] == 8
    assert "hub_token" not in args and args["run"]["world_size"] == 1
    card = Path(calls["card"]).read_text() if not isinstance(calls["card"], bytes) else calls["card"].decode()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["pipeline_tag"] == "image-classification" and metadata["datasets"] == ["demo"]
    with pytest.raises(ValueError, match="hub_model_id"):
        push_folder_to_hub(str(out), None)


def test_save_pretrained_push_to_hub_passes_options_and_uploads_the_processor(make_model, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["private"] = kwargs.get("private")
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["repo"], calls["message"] = repo_id, kwargs.get("commit_message")
        calls["files"] = sorted(op.path_in_repo for op in operations)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    make_model().save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/m", commit_message="hello",
                                 private=True)
    assert calls["repo"] == "me/m" and calls["message"] == "hello" and calls["private"] is True
    assert "preprocessor_config.json" in calls["files"] and "model.safetensors" in calls["files"]
    assert "modeling_hspnet.py" in calls["files"] and "losses.py" in calls["files"]


# ----------------------------------------------------------------------------------------------------------------------
# what each strategy pushes during training, and when
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint", "all_checkpoints"])
def test_each_strategy_pushes_its_files_at_each_save(strategy, tmp_path, fake_hub, monkeypatch):
    synchronous_uploads(monkeypatch)
    options = hub_options(tmp_path, hub_strategy=strategy)
    results = train(TrainingConfig(**options))
    out = Path(options["output_dir"])

    steps = [c["step"] for c in fake_hub.commits]
    final = fake_hub.commits[-1]
    model_and_card = set(model_files(str(out)))
    assert MODEL_FILES | {"README.md"} <= model_and_card
    assert final["message"] == "End of training" and final["step"] is None
    assert set(final["files"]) == model_and_card  # never checkpoints, logs or all_results.json
    in_progress = {"end": [], "every_save": [6, 8, 12], "checkpoint": [4, 6, 8, 12],
                   "all_checkpoints": [4, 6, 8, 12]}[strategy]  # step 4: no best model yet, only a state to push
    assert steps == in_progress + [None]
    assert [c["epoch"] for c in fake_hub.periodic()] == [{4: 0, 6: 0, 8: 1, 12: 1}[s] for s in in_progress]
    names = {4: "step_4", 6: "epoch_0-step_6", 8: "step_8", 12: "epoch_1-step_12"}
    for commit in fake_hub.periodic():
        files, step = set(commit["files"]), commit["step"]
        expected = set() if step == 4 else set(model_and_card)
        if strategy in ("checkpoint", "all_checkpoints"):
            state = STATE_FILES | ({f"best-model/{n}" for n in model_and_card - {"README.md"}} if step != 4 else set())
            folders = ["last-checkpoint"] + ([f"checkpoints/{names[step]}"] if strategy == "all_checkpoints" else [])
            expected |= {f"{folder}/{name}" for folder in folders for name in state}
        assert files == expected, (step, sorted(files ^ expected))
        assert commit["thread"] == "hspnet-hub-upload" and commit["pid"] == os.getpid()
    assert fake_hub.repos[0]["repo_id"] == "me/hspnet-demo" and fake_hub.repos[0]["exist_ok"]

    # the repository at the end: the final model and card; the last state; all_checkpoints: every state
    repo = fake_hub.folder("me/hspnet-demo")
    card = (repo / "README.md").read_text()
    assert "Training in progress" not in card and card == (out / "README.md").read_text()
    assert card_metadata(card)["model-index"][0]["results"][0]["metrics"][0]["type"] == "mAP"
    assert (repo / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    tops = {p.split("/")[0] for p in fake_hub.files()}
    if strategy in ("checkpoint", "all_checkpoints"):
        assert STATE_FILES == set(os.listdir(out / "checkpoints" / "epoch_1-step_12")) | {"hspnet_checkpoint.json"}
        info = json.loads((repo / "last-checkpoint" / "hspnet_checkpoint.json").read_text())
        assert (info["name"], info["step"], info["epoch"]) == ("epoch_1-step_12", 12, 1)
        assert info["best_model"] == json.loads((out / BEST_MARKER_NAME).read_text())
        assert (repo / "last-checkpoint" / "model.safetensors").read_bytes() == (
            out / "checkpoints" / "epoch_1-step_12" / "model.safetensors").read_bytes()
    if strategy == "all_checkpoints":  # the Hub keeps every state, the output folder the newest 2
        assert {p.split("/")[1] for p in fake_hub.files() if p.startswith("checkpoints/")} == set(names.values())
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_1-step_12", "step_8"]
    else:
        assert "checkpoints" not in tops
    if strategy in ("end", "every_save"):
        assert "last-checkpoint" not in tops
    assert results["hub"] == json.loads((out / "all_results.json").read_text())["hub"]
    assert results["hub"] == {"repo_id": "me/hspnet-demo", "strategy": strategy, "uploads_done": len(in_progress),
                              "uploads_failed": 0, "uploads_superseded": 0,
                              "last_uploaded": {"step": 12, "epoch": 1} if in_progress else None,
                              "last_error": None, "final_upload": "done"}
    no_leftovers(out)


def test_the_card_pushed_during_training_says_it_is_in_progress(tmp_path, fake_hub, monkeypatch):
    synchronous_uploads(monkeypatch)
    cards = {}
    original_commit = transfer._commit

    def commit(api, repo_id, files, message):
        for path_in_repo, local in files:
            if path_in_repo == "README.md":
                cards[message] = Path(local).read_text()
        return original_commit(api, repo_id, files, message)

    monkeypatch.setattr(transfer, "_commit", commit)
    train(TrainingConfig(**hub_options(tmp_path, hub_strategy="every_save", epochs=2)))
    in_progress = cards["Training in progress, epoch 0, step 6"]
    assert "**Training in progress**: epoch 0 of 2, step 6 of 12; best validation mAP so far" in in_progress
    assert "(epoch 0)" in in_progress and "model-index" not in card_metadata(in_progress)
    assert "epoch 1 of 2, step 12 of 12" in cards["Training in progress, epoch 1, step 12"]
    assert "Training in progress" not in cards["End of training"]
    assert "model-index" in card_metadata(cards["End of training"])


# ----------------------------------------------------------------------------------------------------------------------
# in the background, from snapshots
# ----------------------------------------------------------------------------------------------------------------------


def test_uploads_run_in_the_background_from_snapshots(tmp_path, fake_hub, monkeypatch):
    """The first upload (step 4) is held until the run has saved steps 6 and 8 (training is not blocked); by then the
    local step_4 folder has been rotated away, yet the upload sends step 4's files as they were. Step 6, still
    waiting, is replaced by step 8, whose commit carries step 6's folder (all_checkpoints keeps every state)."""
    import hashlib

    saves, saved_digest, held = [], {}, {}
    original = HubUploader.save

    def save(self, **kwargs):
        checkpoint = Path(kwargs["checkpoint"])
        saved_digest[checkpoint.name] = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
        queued = original(self, **kwargs)
        saves.append(kwargs["step"])
        return queued

    monkeypatch.setattr(HubUploader, "save", save)
    out = tmp_path / "out"

    def hold_the_first(record):
        if record["step"] != 4:
            return
        deadline = time.time() + 300
        while len(saves) < 3 and time.time() < deadline:
            time.sleep(0.05)
        held["saves_meanwhile"] = list(saves)
        held["step_4_still_local"] = (out / "checkpoints" / "step_4").exists()

    fake_hub.before_commit = hold_the_first
    results = train(TrainingConfig(**hub_options(tmp_path, hub_strategy="all_checkpoints")))
    assert held == {"saves_meanwhile": [4, 6, 8], "step_4_still_local": False}
    assert [c["step"] for c in fake_hub.commits] == [4, 8, 12, None]
    assert {f.split("/")[1] for f in fake_hub.commits[1]["files"] if f.startswith("checkpoints/")} == {
        "epoch_0-step_6", "step_8"}
    repo = fake_hub.folder("me/hspnet-demo")
    for name, digest in saved_digest.items():
        assert hashlib.sha256((repo / "checkpoints" / name / "model.safetensors").read_bytes()).hexdigest() == digest
    assert results["hub"]["uploads_superseded"] == 1 and results["hub"]["uploads_done"] == 3
    assert "step 8 replaces it" in (out / "train.log").read_text()
    no_leftovers(out)


def test_states_held_for_a_retry_are_bounded_and_copies_work_without_hard_links(tmp_path, fake_hub, monkeypatch):
    """HubUploader alone: the Hub fails 4 saves in a row (all_checkpoints, keep_checkpoints 2), then the final upload
    works. Only the 2 newest states not uploaded are held for the retry (the others are reported); without hard
    links the snapshots are copies, so a local file rewritten after its save is sent as it was at save time."""
    import logging

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    failing = {"on": True}
    fake_hub.fail_commit = lambda record: OSError("503 Service Unavailable") if failing["on"] else None
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"best")
    uploader = HubUploader("me/hspnet-demo", folder=str(out), strategy="all_checkpoints", keep_checkpoints=2,
                           log=logging.getLogger("test-hub"))
    for step in range(1, 5):
        checkpoint = out / "checkpoints" / f"step_{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(f"state {step}".encode())
        assert uploader.save(step=step, epoch=0, model_folder=str(out),
                             model_file_names=["config.json", "model.safetensors"], card="in progress",
                             checkpoint=str(checkpoint), checkpoint_info={"run_id": "r"})
        uploader.wait()
        (checkpoint / "model.safetensors").write_bytes(b"rewritten in place")
    assert [c["step"] for c in fake_hub.commits] == [1, 2, 3, 4] and all("failed" in c for c in fake_hub.commits)
    failing["on"] = False
    (out / "README.md").write_text("final card")
    uploader.final(str(out), ["README.md", "config.json", "model.safetensors"])
    uploader.close()
    assert set(fake_hub.commits[-1]["files"]) == {"README.md", "config.json", "model.safetensors"} | {
        f"checkpoints/step_{s}/{name}" for s in (3, 4) for name in (
            "model.safetensors", "hspnet_checkpoint.json", "best-model/config.json", "best-model/model.safetensors")}
    repo = fake_hub.folder("me/hspnet-demo")
    assert (repo / "checkpoints" / "step_3" / "model.safetensors").read_bytes() == b"state 3"
    assert (repo / "README.md").read_text() == "final card"
    report = uploader.report()
    assert (report["uploads_failed"], report["uploads_done"], report["final_upload"]) == (4, 0, "done")
    assert report["checkpoints_not_uploaded"] == ["step_1", "step_2"]
    assert not uploader.save(step=5, epoch=0, model_folder=str(out), model_file_names=["config.json"], card=None)
    no_leftovers(out)


# ----------------------------------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------------------------------


def test_failed_uploads_are_survived_reported_and_retried_and_the_token_stays_secret(tmp_path, fake_hub, monkeypatch,
                                                                                     capsys):
    """The repository cannot be created at the first save (network down), and the commit of step 8 fails with an
    error that quotes the token. Training goes on; each next save uploads what is current, with the states that
    failed (all_checkpoints); all_results.json counts both failures; the token is used but written nowhere."""
    synchronous_uploads(monkeypatch)
    fake_hub.fail_create_repo = lambda call: (OSError("Connection refused") if len(fake_hub.repos) == 1 else None)
    fake_hub.fail_commit = lambda record: (
        OSError(f"503 Server Error: Service Unavailable (request headers: Authorization: Bearer {TOKEN})")
        if record["step"] == 8 else None)
    options = hub_options(tmp_path, hub_strategy="all_checkpoints", hub_token=TOKEN, hub_private_repo=True)
    results = train(TrainingConfig(**options))
    out = Path(options["output_dir"])

    assert [(c["step"], "failed" in c) for c in fake_hub.commits] == [(6, False), (8, True), (12, False),
                                                                       (None, False)]
    retried = {f.split("/")[1] for f in fake_hub.commits[0]["files"] if f.startswith("checkpoints/")}
    assert retried == {"step_4", "epoch_0-step_6"}  # step 4 failed (no repository): sent with step 6
    retried = {f.split("/")[1] for f in fake_hub.commits[2]["files"] if f.startswith("checkpoints/")}
    assert retried == {"step_8", "epoch_1-step_12"}
    assert {p.split("/")[1] for p in fake_hub.files() if p.startswith("checkpoints/")} == {
        "step_4", "epoch_0-step_6", "step_8", "epoch_1-step_12"}
    report = results["hub"]
    assert (report["uploads_done"], report["uploads_failed"], report["final_upload"]) == (2, 2, "done")
    assert "step 8" in report["last_error"] and "503 Server Error" in report["last_error"]
    assert json.loads((out / "all_results.json").read_text())["hub"] == report
    log = (out / "train.log").read_text()
    assert "the upload of step 4 to me/hspnet-demo failed: OSError: Connection refused" in log
    assert "the upload of step 8 to me/hspnet-demo failed: OSError: 503 Server Error" in log

    # the token reached the Hub calls ...
    assert {c["token"] for c in fake_hub.commits} == {TOKEN} and {r["token"] for r in fake_hub.repos} == {TOKEN}
    assert [r["private"] for r in fake_hub.repos] == [True, True]  # created private (retried after the failure)
    # ... and nothing else: logs, results, settings in every checkpoint, cards, the files pushed, the console
    everywhere = [p for p in list(out.rglob("*")) + list(fake_hub.root.rglob("*")) if p.is_file()]
    assert any(p.name == "training_args.json" for p in everywhere)
    for path in everywhere:
        assert TOKEN.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert "***" in report["last_error"]


def test_a_failed_final_upload_exits_1_with_one_line(tmp_path, fake_hub, monkeypatch, capsys):
    synchronous_uploads(monkeypatch)
    fake_hub.fail_commit = lambda record: (OSError("502 Bad Gateway") if record["step"] is None else None)
    options = hub_options(tmp_path, hub_strategy="every_save", epochs=1, schedule_epochs=1)
    status, lines = run_main(as_argv(options), capsys)
    assert status == 1
    out = os.path.abspath(options["output_dir"])
    line = error_line(lines)
    assert line == (f"hspnet train: error: the final upload to the Hub repository me/hspnet-demo failed (OSError: 502 Bad "
                    f"Gateway); the trained model is intact in {out} (upload it later with: hspnet push "
                    f"{out} me/hspnet-demo)")
    assert {"model.safetensors", "config.json", "README.md"} <= set(os.listdir(out))
    report = json.loads(Path(out, "all_results.json").read_text())["hub"]
    assert report["final_upload"] == "failed" and "502 Bad Gateway" in report["last_error"]
    assert report["uploads_done"] == 1  # the in-progress upload at the end of epoch 0 went through
    no_leftovers(Path(out))

    # the command the message gives uploads the folder (model files and card only, one commit)
    fake_hub.fail_commit = lambda record: None
    assert cli.main(["push", out, "me/hspnet-demo"]) == 0
    assert set(fake_hub.commits[-1]["files"]) == set(model_files(out))


# ----------------------------------------------------------------------------------------------------------------------
# resume from the Hub
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def torch_on_one_thread():
    with one_thread():
        yield


def test_resume_from_the_hub_in_a_fresh_folder_matches_an_uninterrupted_run(uninterrupted_ten_step_run, tmp_path,
                                                                            fake_hub, monkeypatch,
                                                                            torch_on_one_thread):
    """Run A trains 10 steps uninterrupted (the session's `uninterrupted_ten_step_run`, on one thread: so are the
    runs here). Run B pushes with hub_strategy all_checkpoints and dies during step 9 (its last pushed state: step_8,
    mid-epoch 1, with the best model of epoch 0). Run C, on "another machine" (a fresh output folder, no local
    checkpoint), resumes from the Hub and ends bit-identical to A; so does run D, resumed from the older pushed state
    `hub:checkpoints/epoch_0-step_6`."""
    from safetensors.torch import load_file

    full, out_a = uninterrupted_ten_step_run

    synchronous_uploads(monkeypatch)
    pushed = dict(full, output_dir=str(tmp_path / "died"), cache_dir=str(tmp_path / "cache"), push_to_hub=True,
                  hub_model_id="me/hspnet-demo", hub_strategy="all_checkpoints")
    calls = {"n": 0}
    original = ModelEMA.update

    def update(self, model):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("the machine went away")
        return original(self, model)

    monkeypatch.setattr(ModelEMA, "update", update)
    with pytest.raises(RuntimeError, match="went away"):
        train(TrainingConfig(**pushed))
    monkeypatch.setattr(ModelEMA, "update", original)
    assert [c["step"] for c in fake_hub.commits] == [4, 6, 8]
    info = json.loads((fake_hub.folder("me/hspnet-demo") / "last-checkpoint" / "hspnet_checkpoint.json").read_text())
    assert (info["name"], info["step"], info["best_model"]["epoch"]) == ("step_8", 8, 0)

    resumed = dict(pushed, output_dir=str(tmp_path / "elsewhere" / "out"), resume_from_checkpoint="hub",
                   cache_dir=str(tmp_path / "elsewhere" / "cache"))
    results = train(TrainingConfig(**resumed))
    assert fake_hub.downloads == [{"repo_id": "me/hspnet-demo", "allow_patterns": ["last-checkpoint/*"],
                                   "token": None}]
    assert results["resumed_from"].endswith(os.path.join("checkpoints", "step_8"))
    out_c = Path(resumed["output_dir"])
    assert "downloaded last-checkpoint/ of the Hub repository me/hspnet-demo (step 8, epoch 1)" in (
        out_c / "train.log").read_text()

    final = lambda out: next((out / "checkpoints").glob("epoch_*-step_10"))  # noqa: E731
    a, c = load_file(final(out_a) / "model.safetensors"), load_file(final(out_c) / "model.safetensors")
    assert a.keys() == c.keys()
    for key in a:
        torch.testing.assert_close(a[key], c[key], atol=0, rtol=0, msg=key)
    assert (out_a / "model.safetensors").read_bytes() == (out_c / "model.safetensors").read_bytes()
    ja, jc = (json.loads((out / "all_results.json").read_text()) for out in (out_a, out_c))
    for key in ("test_before_training", "test", "test_per_class_AP", "best", "history", "selection_split"):
        assert ja[key] == jc[key], key
    assert [c["step"] for c in fake_hub.commits] == [4, 6, 8, 10, None]  # C goes on pushing
    no_leftovers(out_c)

    older = dict(resumed, output_dir=str(tmp_path / "third" / "out"), push_to_hub=False,
                 resume_from_checkpoint="hub:checkpoints/epoch_0-step_6")
    results = train(TrainingConfig(**older))
    assert fake_hub.downloads[-1]["allow_patterns"] == ["checkpoints/epoch_0-step_6/*"]
    assert results["resumed_from"].endswith(os.path.join("checkpoints", "epoch_0-step_6"))
    out_d = Path(older["output_dir"])
    assert (out_a / "model.safetensors").read_bytes() == (out_d / "model.safetensors").read_bytes()
    d = load_file(final(out_d) / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], d[key], atol=0, rtol=0, msg=key)


def test_resume_from_the_hub_needs_an_empty_folder_and_a_pushed_state(tmp_path, fake_hub, capsys):
    options = tiny_options(tmp_path, hub_model_id="me/hspnet-demo", resume_from_checkpoint="hub")
    out = Path(options["output_dir"])
    out.mkdir()
    (out / "config.json").write_text("{}")
    status, lines = run_main(as_argv(options), capsys)
    assert status == 1
    assert "already holds a run" in error_line(lines) and "--resume_from_checkpoint latest" in error_line(lines)

    fresh = dict(options, output_dir=str(tmp_path / "fresh"))
    status, lines = run_main(as_argv(fresh), capsys)
    assert status == 1
    assert ("cannot download last-checkpoint/ of the Hub repository me/hspnet-demo (OSError: 404 Client Error"
            in error_line(lines))
    fake_hub.folder("me/hspnet-demo").mkdir(parents=True)  # a repository without pushed states
    status, lines = run_main(as_argv(fresh), capsys)
    assert status == 1
    assert ("last-checkpoint/ of the Hub repository me/hspnet-demo holds no training state pushed by hspnet"
            in error_line(lines))
    assert not [p for p in (tmp_path / "fresh").iterdir() if p.name.startswith(".hub-")]
    status, lines = run_main(as_argv(dict(fresh, resume_from_checkpoint="hub:../x")), capsys)
    assert status == 1 and "expected 'hub' or 'hub:FOLDER_IN_THE_REPOSITORY'" in error_line(lines)


# ----------------------------------------------------------------------------------------------------------------------
# distributed: only the main process uploads
# ----------------------------------------------------------------------------------------------------------------------


def test_only_the_main_process_uploads_in_a_distributed_run(two_process_runs):
    """Step 3 of the session's 2-process launch (`two_process_runs`: hub_strategy checkpoint, checkpointing_steps 2,
    one epoch, with tracking), with `tests.helpers.FakeHub` installed in both processes: rank 1 makes no Hub call."""
    result, reports = two_process_runs["result"], two_process_runs["reports"]
    assert result.returncode == 0, result.stderr[-4000:]
    calls = {rank: reports[rank]["hub_run"] for rank in ("0", "1")}
    assert (calls["1"]["commits"], calls["1"]["repos"]) == ([], [])
    # 45 images over 2 processes with batch 8: 3 steps per epoch; states at step 2 and at the end (step 3)
    assert [c["step"] for c in calls["0"]["commits"]] == [2, 3, None]
    assert "random_states_1.pkl" in " ".join(calls["0"]["commits"][0]["files"])


def test_hspnet_train_command_has_the_hub_options(capsys):
    from hspnet.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hspnet train") and "--hub_strategy" in text and "all_checkpoints" in text


# ----------------------------------------------------------------------------------------------------------------------
# tokens: used, and written nowhere
# ----------------------------------------------------------------------------------------------------------------------


ENV_TOKEN = "hf_OnlyInTheEnvironment0123456789"


def test_a_token_from_the_environment_is_written_nowhere(tmp_path, monkeypatch, capsys):
    """No --hub_token: the token is HF_TOKEN. Every upload fails with an error text quoting it (periodic uploads
    and the final one): it appears in no file of the run, the fake Hub, and not on stdout / stderr."""
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    fake_hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    synchronous_uploads(monkeypatch)
    fake_hub.fail_commit = lambda record: OSError(
        f"401 Unauthorized (request headers: Authorization: Bearer {ENV_TOKEN})")
    options = hub_options(tmp_path, hub_strategy="checkpoint", epochs=1, schedule_epochs=1)
    status, lines = run_main(as_argv(options), capsys)
    assert status == 1
    line = error_line(lines)
    assert "401 Unauthorized" in line and "***" in line and ENV_TOKEN not in line
    out = Path(options["output_dir"])
    log = (out / "train.log").read_text()
    assert "401 Unauthorized" in log and "Bearer ***" in log
    results = json.loads((out / "all_results.json").read_text())
    assert results["hub"]["final_upload"] == "failed" and "***" in results["hub"]["last_error"]
    files = [p for p in list(tmp_path.rglob("*")) if p.is_file()]
    assert any(p.name == "train.log" for p in files)
    for path in files:
        assert ENV_TOKEN.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert ENV_TOKEN not in captured.out + captured.err + "\n".join(lines)


def test_redaction_masks_every_token_in_effect(monkeypatch, tmp_path):
    import logging

    import huggingface_hub.constants

    from hspnet.utils.redaction import RedactTokens, redact

    monkeypatch.setenv("HF_TOKEN", "hf_environment_token")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "token"))  # `hf auth login`'s
    (tmp_path / "token").write_text("hf_stored_login_token")
    from huggingface_hub import get_token

    monkeypatch.delenv("HF_TOKEN")
    assert get_token() == "hf_stored_login_token"  # the stored login is what huggingface_hub would use
    monkeypatch.setenv("HF_TOKEN", "hf_environment_token")
    text = "a hf_environment_token b hf_stored_login_token c hf_explicit_token d"
    assert redact(text, "hf_explicit_token") == "a *** b *** c *** d"
    record = logging.LogRecord("x", logging.WARNING, "f", 1, "failed: %s", ("Bearer hf_environment_token",), None)
    assert RedactTokens().filter(record) and record.getMessage() == "failed: Bearer ***"
