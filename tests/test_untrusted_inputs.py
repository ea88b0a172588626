"""Nothing the project reads runs code or writes outside its run: checkpoints (local and from the Hub), the Hub's
checkpoint index, and the file lists of every dataset format. Hub tokens are masked wherever they come from.

Malicious pickles are built here: objects whose `__reduce__` calls `open(marker, "w")`, so that the marker file
exists exactly when an unpickler ran their code."""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from hspnet.training.arguments import TrainingConfig
from hspnet.training.loop import train
from tests.test_hub import FakeHub, hub_options, synchronous_uploads
from tests.test_training import as_argv, tiny_options
from tests.test_training_reliability import error_line, run_main


class _Evil:
    """Unpickling it creates `marker` (the code of `__reduce__` ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path: Path, marker: Path, kind: str) -> None:
    """A pickle that runs code when loaded: a plain pickle, or a torch zip archive as torch.save writes."""
    if kind == "torch":
        torch.save({"state": _Evil(marker), "weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(pickle.dumps({"state": _Evil(marker)}, protocol=2))


def tree_digest(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """Content hash of every file under `folder` (except under `skip`)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (skip is None or skip not in path.parents):
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """A tiny finished run of one epoch (6 steps) with EMA and label sampling, checkpoints at step 4 and the end."""
    folder = tmp_path_factory.mktemp("untrusted")
    options = tiny_options(folder, epochs=1, schedule_epochs=1, checkpointing_steps="4", label_sample_size=3,
                           checkpoints_total_limit=None, evaluate_before_training=False)
    train(TrainingConfig(**options))
    return folder, options


@pytest.fixture
def run_copy(checkpointed_run, tmp_path):
    source, options = checkpointed_run
    shutil.copytree(source / "out", tmp_path / "run" / "out")
    return tmp_path / "run" / "out", dict(options, output_dir=str(tmp_path / "run" / "out"))


def pickle_files(checkpoint: Path) -> list[str]:
    """The files of a checkpoint that are read by an unpickler."""
    return sorted(p.name for p in checkpoint.iterdir() if p.suffix in (".pkl", ".bin", ".pt"))


def test_a_checkpoint_holds_no_pickle_of_the_projects_own_state(run_copy):
    out, _ = run_copy
    checkpoint = out / "checkpoints" / "step_4"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["ema.safetensors", "label_sampling_0.safetensors", "loss_state.safetensors", "model.safetensors",
                     "optimizer.bin", "random_states_0.pkl", "training_args.json", "training_state.json"]
    # the only pickles are accelerate's optimizer state and random states
    assert pickle_files(checkpoint) == ["optimizer.bin", "random_states_0.pkl"]
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["progress"]["global_step"] == 4 and state["scheduler"]["last_epoch"] == 4


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                                  "scheduler.bin", "extra.pt"])
@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_malicious_pickle_in_a_checkpoint_never_runs(run_copy, tmp_path, capsys, name, kind):
    """Each pickle file of a checkpoint (and pickles it should not hold, such as the `custom_checkpoint_0.pkl` that
    accelerate would unpickle with weights_only=False) replaced by one that runs code: the resume stops with one
    line naming the file, the code never ran and nothing outside the run folder changed."""
    out, options = run_copy
    checkpoint = out / "checkpoints" / "step_4"
    marker = tmp_path / "pwned"
    write_malicious(checkpoint / name, marker, kind)
    outside = tree_digest(tmp_path, skip=out)
    status, lines = run_main(as_argv(options) + ["--resume_from_checkpoint", str(checkpoint)], capsys)
    assert status == 1
    line = error_line(lines)
    assert str(checkpoint / name) in line and "refused" in line
    assert not marker.exists()
    after = tree_digest(tmp_path, skip=out)
    assert after == outside


def test_random_states_that_do_not_load_stop_the_resume(run_copy, capsys):
    """accelerate skips a random-state file it cannot read (and resumes with other random numbers); here the resume
    stops, naming the file: one with entries of the wrong kind, and one that is not a zip archive at all."""
    out, options = run_copy
    checkpoint = out / "checkpoints" / "step_4"
    path = checkpoint / "random_states_0.pkl"
    torch.save({"step": 0, "random_state": "not a state", "numpy_random_seed": None,
                "torch_manual_seed": torch.zeros(3, dtype=torch.uint8)}, path)
    status, lines = run_main(as_argv(options) + ["--resume_from_checkpoint", str(checkpoint)], capsys)
    assert status == 1 and str(path) in error_line(lines) and "Python random state" in error_line(lines)
    path.write_bytes(b"garbage")
    status, lines = run_main(as_argv(options) + ["--resume_from_checkpoint", str(checkpoint)], capsys)
    assert status == 1 and str(path) in error_line(lines) and "truncated or corrupt" in error_line(lines)


def test_a_malicious_pickle_in_a_hub_checkpoint_never_runs(tmp_path, monkeypatch, capsys):
    """A repository's `last-checkpoint/` whose random states are a malicious pickle: `--resume_from_checkpoint hub`
    into a fresh folder stops naming the file; the code never ran."""
    fake_hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    synchronous_uploads(monkeypatch)
    options = hub_options(tmp_path / "pushed", hub_strategy="checkpoint", epochs=1, schedule_epochs=1)
    train(TrainingConfig(**options))
    repo = fake_hub.folder("me/hspnet-demo")
    marker = tmp_path / "pwned"
    for name in ("random_states_0.pkl", "optimizer.bin"):
        original = (repo / "last-checkpoint" / name).read_bytes()
        write_malicious(repo / "last-checkpoint" / name, marker, "torch")
        fresh = dict(options, output_dir=str(tmp_path / f"fresh-{name}"), push_to_hub=False,
                     resume_from_checkpoint="hub")
        status, lines = run_main(as_argv(fresh), capsys)
        assert status == 1
        line = error_line(lines)
        assert name in line and "refused" in line
        assert not marker.exists()
        (repo / "last-checkpoint" / name).write_bytes(original)


@pytest.mark.parametrize("bad_name", ["../other/notes.txt", "/tmp/../x.json", "sub/config.json", ".hidden.json",
                                      "train.log"])
def test_a_hub_checkpoint_index_cannot_move_files_outside_the_run(tmp_path, monkeypatch, capsys, bad_name):
    """`hspnet_checkpoint.json` lists the best model's files; a name that leads outside the output folder (or is not
    a model file) is refused by name before any file is moved; a file beside the run keeps its content."""
    fake_hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    synchronous_uploads(monkeypatch)
    options = hub_options(tmp_path / "pushed", hub_strategy="checkpoint", epochs=1, schedule_epochs=1)
    train(TrainingConfig(**options))
    last = fake_hub.folder("me/hspnet-demo") / "last-checkpoint"
    info = json.loads((last / "hspnet_checkpoint.json").read_text())
    info["best_model_files"] = info["best_model_files"] + [bad_name]
    (last / "hspnet_checkpoint.json").write_text(json.dumps(info))
    evil = last / "best-model" / bad_name.lstrip("/")
    evil.parent.mkdir(parents=True, exist_ok=True)
    evil.write_text("replaced")
    victim = tmp_path / "fresh" / "other" / "notes.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("mine")
    before = tree_digest(tmp_path / "fresh")
    fresh = dict(options, output_dir=str(tmp_path / "fresh" / "out"), push_to_hub=False,
                 resume_from_checkpoint="hub")
    status, lines = run_main(as_argv(fresh), capsys)
    assert status == 1
    line = error_line(lines)
    assert repr(bad_name) in line and "hspnet_checkpoint.json" in line
    assert victim.read_text() == "mine"
    after = {k: v for k, v in tree_digest(tmp_path / "fresh").items() if not k.startswith("out")}
    assert after == before
    # nothing of the repository's best model was taken into the output folder either
    assert not (tmp_path / "fresh" / "out" / "model.safetensors").exists()


# --- file lists of the datasets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.png", "img/../../outside.png", "/etc/passwd", "C:/x.png"])
def test_metadata_rows_that_lead_outside_the_dataset_are_refused(tmp_path, name):
    from hspnet.data import DatasetFormatError, load_image_folder
    from tests.fixtures_data import write_image, write_text

    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "img" / f"{index}.png", seed=index)
    write_image(tmp_path / "outside.png", seed=9)
    rows = ["file_name,labels,split", "img/0.png,cat,train", "img/1.png,dog,train", f"{name},cat,train",
            "img/3.png,dog,test"]
    write_text(root / "metadata.csv", "\n".join(rows) + "\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_image_folder(root, cache_dir=tmp_path / "cache", validation_fraction=0)
    error = caught.value
    assert error.file == str(root / "metadata.csv") and error.line == 4 and error.field == "file_name"
    assert repr(name) in str(error)


def test_a_name_that_climbs_and_comes_back_inside_is_accepted(tmp_path):
    from hspnet.data import load_image_folder
    from tests.fixtures_data import write_image, write_text

    root = tmp_path / "data"
    for index in range(4):
        write_image(root / "img" / f"{index}.png", seed=index)
    rows = ["file_name,labels,split", "img/0.png,cat,train", "img/../img/1.png,dog,train", "img/2.png,cat,train",
            "img/3.png,dog,test"]
    write_text(root / "metadata.csv", "\n".join(rows) + "\n")
    groups = write_text(tmp_path / "groups.csv", "cat,animal\ndog,animal\n")
    data = load_image_folder(root, hierarchy=groups, cache_dir=tmp_path / "cache", validation_fraction=0)
    assert "img/1.png" in data["train"]["image_id"]


def test_official_file_lists_that_lead_outside_their_folder_are_refused(tmp_path):
    """COCO's `file_name`, VOC's image ids, CUB's `images.txt` and NUS-WIDE's lists, each with one name leading
    outside: the error names the file and the line (or the JSON field)."""
    from hspnet.data import DatasetFormatError, load_coco, load_cub, load_nuswide, load_voc
    from tests import fixtures_data as fx

    coco = fx.make_coco_tree(tmp_path / "coco")
    path = Path(coco) / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "../../secret.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetFormatError) as caught:
        load_coco(coco, cache_dir=tmp_path / "c1")
    assert caught.value.file == str(path) and caught.value.field == "images[1].file_name"

    voc = Path(fx.make_voc_tree(tmp_path / "voc")) / "VOCdevkit" / "VOC2012"
    listing = voc / "ImageSets" / "Main" / "train.txt"
    listing.write_text(listing.read_text() + "../../../../escape\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_voc(tmp_path / "voc", cache_dir=tmp_path / "c2")
    assert caught.value.file == str(listing) and caught.value.line == len(fx.VOC_TRAIN) + 1

    cub = fx.make_cub_tree(tmp_path / "cub")
    images = Path(cub) / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    lines[2] = "3 /etc/passwd"
    images.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError) as caught:
        load_cub(cub, cache_dir=tmp_path / "c3")
    assert caught.value.file == str(images) and caught.value.line == 3

    nus = fx.make_nuswide_flat(tmp_path / "nus")
    listing = Path(nus) / "nus_train.txt"
    lines = listing.read_text().splitlines()
    lines[1] = "../../x_m.jpg," + lines[1].split(",", 1)[1]
    listing.write_text("\n".join(lines))
    with pytest.raises(DatasetFormatError) as caught:
        load_nuswide(nus, cache_dir=tmp_path / "c4")
    assert caught.value.file == str(listing) and caught.value.line == 2


def test_path_inside_by_hand(tmp_path):
    from hspnet.utils.files import path_inside, plain_file_name

    root = str(tmp_path)
    assert path_inside(root, "a/b.png", "x") == os.path.join(root, "a", "b.png")
    assert path_inside(root, "a/../b.png", "x") == os.path.join(root, "b.png")
    assert path_inside(root, "a\\b.png", "x") == os.path.join(root, "a", "b.png")
    for bad in ("../b.png", "a/../../b.png", "/abs.png", "\\abs.png", "C:/x.png", "C:x.png", "", "a\0b"):
        with pytest.raises(ValueError, match="^where: "):
            path_inside(root, bad, "where")
    assert plain_file_name("config.json", "x") == "config.json"
    for bad in ("../config.json", "a/b.json", ".hidden", "..", ".", "", None, 3, "a\\b"):
        with pytest.raises(ValueError):
            plain_file_name(bad, "x")


# --- secrets ----------------------------------------------------------------------------------------------------------

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

    from hspnet.utils.redaction import RedactTokens, redact

    import huggingface_hub.constants

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


# --- exact resume -----------------------------------------------------------------------------------------------------


def test_resume_with_label_sampling_is_bit_identical(checkpointed_run, tmp_path):
    """Label sampling draws from its own generator, whose state is in the checkpoint: a run resumed from step 4 (mid
    epoch 0 of 6 steps) ends with the weights of the uninterrupted run."""
    from safetensors.torch import load_file

    source, options = checkpointed_run
    shutil.copytree(source / "out", tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "epoch_0-step_6")
    train(TrainingConfig(**dict(options, output_dir=str(tmp_path / "out"), resume_from_checkpoint="latest")))
    a = load_file(source / "out" / "checkpoints" / "epoch_0-step_6" / "model.safetensors")
    b = load_file(tmp_path / "out" / "checkpoints" / "epoch_0-step_6" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    ga = load_file(source / "out" / "checkpoints" / "epoch_0-step_6" / "label_sampling_0.safetensors")["state"]
    gb = load_file(tmp_path / "out" / "checkpoints" / "epoch_0-step_6" / "label_sampling_0.safetensors")["state"]
    assert torch.equal(ga, gb)


# --- smaller ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, expected", [
    ("checkpointing_steps", "0", "checkpointing_steps must be 'epoch', a number of steps >= 1 or null"),
    ("logging_steps", "0", "logging_steps must be >= 1, got 0"),
    ("max_train_steps", "0", "max_train_steps must be >= 1 (or null: no limit but the epochs), got 0"),
    ("max_train_steps", "-1", "max_train_steps must be >= 1 (or null: no limit but the epochs), got -1"),
])
def test_step_options_are_validated(tmp_path, capsys, option, value, expected):
    options = tiny_options(tmp_path)
    status, lines = run_main(as_argv(options) + [f"--{option}", value], capsys)
    assert status == 1 and expected in error_line(lines)
    assert not Path(options["output_dir"]).exists()
