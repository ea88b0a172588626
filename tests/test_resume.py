"""Checkpoints and resuming (`hspnet.training.resume`, `hspnet.training.checkpoint`; docs/method.md section 7.3).

What a checkpoint remembers of its data and options, so that a resume which would change the result is refused
(`dataset_fingerprint`, `settings_differences`); resumes that end bit-identical to an uninterrupted run (after a
kill -9, with ROLE's label estimates, with label sampling); damaged checkpoints named in one line; and untrusted
checkpoints, local or from the Hub: nothing in them runs code (malicious pickles are built here: objects whose
`__reduce__` calls `open(marker, "w")`, so that the marker file exists exactly when an unpickler ran their code) or
moves files outside the run.

The fingerprints expected are computed here from the rows as Python reads them (`dataset[i]`), not by the function."""

import dataclasses
import hashlib
import json
import os
import pickle
import shlex
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value

from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.training.arguments import TrainingConfig
from hspnet.training.loop import train
from hspnet.training.resume import (
    ResumeMismatchError,
    dataset_differences,
    dataset_fingerprint,
    resolve_checkpoint,
    settings_differences,
)
from hspnet.training.run_folder import BEST_MARKER_NAME
from tests.helpers import (
    FakeHub,
    as_argv,
    digest_tree,
    error_line,
    hub_options,
    interrupt_training_at,
    one_thread,
    run_main,
    synchronous_uploads,
    tiny_options,
)

# ----------------------------------------------------------------------------------------------------------------------
# What a checkpoint remembers of its data and options
# ----------------------------------------------------------------------------------------------------------------------


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


def test_settings_differences_by_hand():
    saved = {"batch_size": 8, "seed": 0, "logging_steps": 10, "dataset": "demo", "lr": 0.001,
             "dataset_options": {"num_train": 60, "image_size": 32}, "hub_token": None,
             "run": {"world_size": 1, "mixed_precision": "no", "device": "cuda", "versions": {"torch": "2.12.0"}}}
    current = {"batch_size": 16, "seed": 0, "logging_steps": 1, "dataset": "voc", "lr": 0.001,
               "dataset_options": {"num_train": 50, "image_size": 32}, "output_dir": "elsewhere",
               "run": {"world_size": 2, "mixed_precision": "no", "device": "cpu", "versions": {"torch": "2.13.0"}}}
    dataset, other, notes = settings_differences(saved, current)
    assert dataset == ["dataset 'demo' -> 'voc'", "dataset_options.num_train 60 -> 50"]
    assert other == ["batch_size 8 -> 16", "number of processes 1 -> 2"]
    assert notes == ["device cuda -> cpu", "torch 2.12.0 -> 2.13.0"]
    assert settings_differences(saved, saved) == ([], [], [])


def test_resume_with_other_settings_is_refused_before_anything_changes(run_copy):
    out, options = run_copy
    before = digest_tree(out)
    changed = dict(options, resume_from_checkpoint="latest", batch_size=4, seed=1, logging_steps=3,
                   checkpoints_total_limit=5)
    with pytest.raises(ResumeMismatchError) as caught:
        train(TrainingConfig(**changed))
    message = str(caught.value)
    assert message.startswith(f"cannot resume from {out / 'checkpoints' / 'epoch_0-step_6'}: its run used other "
                              "settings that change the result (batch_size 8 -> 4; seed 0 -> 1)")
    assert "\n" not in message
    after = digest_tree(out)
    assert {k: v for k, v in after.items() if k != "train.log"} == {k: v for k, v in before.items() if k != "train.log"}

    with pytest.raises(ResumeMismatchError, match=r"it was trained on another dataset \(dataset_options.num_train "
                                                  r"60 -> 50\)"):
        train(TrainingConfig(**dict(options, resume_from_checkpoint="latest",
                                    dataset_options=dict(options["dataset_options"], num_train=50))))


def test_resume_on_data_with_other_content_is_refused(run_copy, monkeypatch):
    import hspnet.training.loop as training

    out, options = run_copy
    original = training.load_datasets

    def one_image_less(config):
        datasets, hierarchy = original(config)
        datasets["train"] = datasets["train"].select(range(len(datasets["train"]) - 1))
        return datasets, hierarchy

    monkeypatch.setattr(training, "load_datasets", one_image_less)
    with pytest.raises(ResumeMismatchError, match=r"trained on another dataset \(train split 45 -> 44 images\)"):
        train(TrainingConfig(**dict(options, resume_from_checkpoint="latest")))


def test_resume_with_only_safe_changes_runs(run_copy):
    out, options = run_copy
    results = train(TrainingConfig(**dict(options, resume_from_checkpoint="latest", logging_steps=2,
                                          checkpoints_total_limit=3, report_to="none", num_workers=0,
                                          cache_dir=options["cache_dir"], evaluate_before_training=False)))
    assert results["resumed_from"].endswith("epoch_0-step_6")
    assert "test_before_training" in results  # kept from the checkpoint's run


def test_settings_file_holds_no_secret(run_copy):
    out, options = run_copy
    settings = json.loads((out / "checkpoints" / "epoch_0-step_6" / TRAINING_ARGS_NAME).read_text())
    assert "hub_token" not in settings and settings["batch_size"] == 8
    assert settings["run"]["world_size"] == 1 and settings["run"]["dataset"]["splits"]["train"]["num_images"] == 45
    assert BEST_MARKER_NAME in os.listdir(out)
    # beside the model too, with what evaluation reads (the base CLIP and the seed)
    beside = json.loads((out / "training_args.json").read_text())
    assert beside["clip_model"] == "tiny-random" and beside["seed"] == 0 and "hub_token" not in beside


def test_resume_into_a_folder_without_the_runs_best_model_is_refused(run_copy, tmp_path):
    out, options = run_copy
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(ResumeMismatchError, match=r"saved a best model \(epoch 0\) that .*elsewhere does not hold"):
        train(TrainingConfig(**dict(options, output_dir=str(elsewhere),
                                    resume_from_checkpoint=str(out / "checkpoints" / "epoch_0-step_6"))))


# ----------------------------------------------------------------------------------------------------------------------
# Exact resumes
# ----------------------------------------------------------------------------------------------------------------------


def test_resume_after_kill_matches_uninterrupted_run(uninterrupted_ten_step_run, fresh_training_runs, tmp_path):
    """Kill -9 during step 9, in the second epoch (6 steps per epoch; checkpoints at step 4, at the end of epoch 0 and
    at step 8; step 4 of the session's `fresh_training_runs`), resume a copy of its folder from 'latest' (step 8,
    mid-epoch): the final weights equal those of an uninterrupted run (the session's `uninterrupted_ten_step_run`,
    same options), and so does all_results.json (also the metrics before training, which the resumed run does not
    recompute)."""
    import shutil

    from safetensors.torch import load_file

    from hspnet.training.loop import train

    full, full_out = uninterrupted_ten_step_run
    result = fresh_training_runs["result"]
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
    shutil.copytree(fresh_training_runs["killed_options"]["output_dir"], tmp_path / "killed")
    killed = dict(fresh_training_runs["killed_options"], output_dir=str(tmp_path / "killed"),
                  cache_dir=str(tmp_path / "cache"))
    saved = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert saved == ["epoch_0-step_6", "step_8"]  # checkpoints_total_limit 2 dropped step_4
    assert resolve_checkpoint(str(tmp_path / "killed"), "latest").endswith("step_8")
    with one_thread():
        train(TrainingConfig(**dict(killed, resume_from_checkpoint="latest")))
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()

    final = lambda out: sorted((out / "checkpoints").glob("epoch_*-step_10"))[0]  # noqa: E731
    a = load_file(final(full_out) / "model.safetensors")
    b = load_file(final(tmp_path / "killed") / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    ja = json.loads((full_out / "all_results.json").read_text())
    jb = json.loads((tmp_path / "killed" / "all_results.json").read_text())
    assert ja["test"]["mAP"] == jb["test"]["mAP"]
    assert jb["resumed_from"].endswith("step_8") and ja["resumed_from"] is None
    for key in ("test_before_training", "test", "test_per_class_AP", "best", "history", "selection_split",
                "protocol", "world_size"):
        assert ja[key] == jb[key], key
    assert set(ja) == set(jb)
    assert resolve_checkpoint(str(tmp_path / "killed"), "latest").endswith("epoch_1-step_10")


def _interruption(err):
    """The one line a Ctrl-C printed, and the command in it (split as a shell would)."""
    lines = [line for line in err.splitlines() if line.startswith("training interrupted")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    command = shlex.split(lines[0].split(" with: ", 1)[1])
    assert command[:2] == ["hspnet", "train"]
    return lines[0], command


def test_ctrl_c_names_the_checkpoint_and_its_command_resumes_exactly(uninterrupted_ten_step_run, tmp_path,
                                                                     monkeypatch, capsys):
    """Ctrl-C during step 9 of the 10 of `uninterrupted_ten_step_run` (6 per epoch, checkpoints at 4, 6 and 8): exit
    status 130, ONE line naming the checkpoint of step 8 and a command; that command, run as printed, resumes from
    step 8 and ends with the weights and results of the uninterrupted run, bit for bit."""
    from safetensors.torch import load_file

    from hspnet.cli import main

    full, full_out = uninterrupted_ten_step_run
    out = tmp_path / "out"
    options = dict(full, output_dir=str(out), cache_dir=str(tmp_path / "cache"))
    interrupt_training_at(monkeypatch, 8)
    capsys.readouterr()
    assert main(["train", *as_argv(options)]) == 130
    line, command = _interruption(capsys.readouterr().err)
    assert line.startswith(f"training interrupted after step 8 of 10; last checkpoint: {out / 'checkpoints' / 'step_8'}"
                           "; resume with: hspnet train ")
    assert command[-2:] == ["--resume_from_checkpoint", "latest"]
    assert "training interrupted after step 8 of 10" in (out / "train.log").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0-step_6", "step_8"]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
    monkeypatch.undo()

    assert main(command[1:]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step_8'} at step 8" in (out / "train.log").read_text()
    final = lambda folder: folder / "checkpoints" / "epoch_1-step_10"  # noqa: E731
    a, b = load_file(final(full_out) / "model.safetensors"), load_file(final(out) / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    ja = json.loads((full_out / "all_results.json").read_text())
    jb = json.loads((out / "all_results.json").read_text())
    for key in ("test_before_training", "test", "test_per_class_AP", "best", "history"):
        assert ja[key] == jb[key], key


def test_the_resume_command_repeats_the_options_as_given(tmp_path, monkeypatch, capsys):
    """With the command line it was given (`argv`), the printed command repeats it (the YAML file stays a YAML file,
    a value with a space stays one argument), without an earlier --resume_from_checkpoint or the Hub token; with none
    and no checkpoint, the command starts over."""
    from hspnet.cli import main
    from hspnet.training.arguments import parse_training_args
    from hspnet.training.resume import config_arguments, resume_command

    options = tiny_options(tmp_path / "my runs", epochs=1, schedule_epochs=1, evaluate_before_training=False)
    yaml_file = tmp_path / "my config.yaml"
    yaml_file.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in options.items()
                                 if key not in ("output_dir", "cache_dir")))
    argv = ["--config", str(yaml_file), "--output_dir", options["output_dir"], "--cache-dir", options["cache_dir"],
            "--hub_token", "hf_notarealtoken", "--resume_from_checkpoint=hub", "--seed", "0"]
    config = parse_training_args([a for a in argv if a != "--resume_from_checkpoint=hub"])
    assert resume_command(config, argv) == shlex.join(
        ["hspnet", "train", "--config", str(yaml_file), "--output_dir", options["output_dir"], "--cache-dir",
         options["cache_dir"], "--seed", "0", "--resume_from_checkpoint", "latest"])
    assert resume_command(config, argv, num_processes=2, mixed_precision="bf16", resume=False).startswith(
        "accelerate launch --num_processes 2 -m hspnet train --config ")
    assert resume_command(config, argv, mixed_precision="bf16").endswith(
        " --seed 0 --mixed_precision bf16 --resume_from_checkpoint latest")
    # without the command line: the options that differ from the defaults give the same config back (the token not)
    assert parse_training_args(config_arguments(config)) == dataclasses.replace(config, hub_token=None)
    assert "hf_notarealtoken" not in " ".join(config_arguments(config))

    interrupt_training_at(monkeypatch, 2)  # before the first checkpoint (end of the 6-step epoch)
    capsys.readouterr()
    assert main(["train", *as_argv(options)]) == 130
    line, command = _interruption(capsys.readouterr().err)
    assert line.startswith("training interrupted after step 2 of 6 before any checkpoint was saved, there is nothing "
                           "to resume; start over with: hspnet train ")
    assert "--resume_from_checkpoint" not in command and "--overwrite_output_dir" not in command
    assert parse_training_args(command[2:]) == TrainingConfig(**options)
    assert not (Path(options["output_dir"]) / "checkpoints").exists()
    monkeypatch.undo()
    assert main(command[1:]) == 0  # the printed command starts the run again


def test_ctrl_c_in_an_overwrite_run_leaves_nothing_beside_the_output_folder(run_copy, monkeypatch, capsys):
    """`--overwrite_output_dir` over an earlier run, interrupted: the earlier run is untouched and nothing is left
    beside it (no `out.partial`). Before its first checkpoint the new run leaves nothing at all; after it, its
    staging folder inside `out` keeps the checkpoint, and the printed command continues it and swaps it in."""
    from hspnet.cli import main

    out, options = run_copy
    before = digest_tree(out)
    staging = out / ".hspnet-next-run"
    new_run = dict(options, overwrite_output_dir=True, seed=1, epochs=2, schedule_epochs=2)
    interrupt_training_at(monkeypatch, 3)
    capsys.readouterr()
    assert main(["train", *as_argv(new_run)]) == 130
    line, command = _interruption(capsys.readouterr().err)
    assert line.startswith(f"training interrupted after step 3 of 12 before any checkpoint was saved, there is "
                           f"nothing to resume; {out} still holds the previous run; start over with: hspnet train ")
    assert digest_tree(out) == before and sorted(p.name for p in out.parent.iterdir()) == ["out"]

    monkeypatch.undo()
    interrupt_training_at(monkeypatch, 8)  # after the checkpoint of epoch 0 (step 6)
    assert main(["train", *as_argv(new_run)]) == 130
    line, command = _interruption(capsys.readouterr().err)
    assert line.startswith(f"training interrupted after step 8 of 12; last checkpoint: "
                           f"{staging / 'checkpoints' / 'epoch_0-step_6'}; {out} still holds the previous run, this "
                           f"one is in {staging}; resume with: hspnet train ")
    assert digest_tree(out, skip=staging) == before and sorted(p.name for p in out.parent.iterdir()) == ["out"]
    assert sorted(p.name for p in (staging / "checkpoints").iterdir()) == ["epoch_0-step_6"]
    monkeypatch.undo()

    assert main(command[1:]) == 0
    assert not staging.exists() and sorted(p.name for p in out.parent.iterdir()) == ["out"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0-step_6", "epoch_1-step_12"]
    results = json.loads((out / "all_results.json").read_text())
    assert results["resumed_from"] == str(staging / "checkpoints" / "epoch_0-step_6")
    assert json.loads((out / TRAINING_ARGS_NAME).read_text())["seed"] == 1


def test_resume_restores_the_loss_state_kept_by_the_model(tmp_path):
    """ROLE's label estimates live in the model's loss (`model.loss_module`, outside the weights): a run resumed from
    the end of epoch 0 ends with the weights and estimates of the uninterrupted run only if the checkpoint restored
    them (a fresh loss would restart from its initialisation)."""
    import shutil

    from safetensors.torch import load_file

    from hspnet.training.loop import train

    options = tiny_options(tmp_path, loss="role", loss_kwargs={}, epochs=2, max_train_steps=8,
                           checkpointing_steps="4", checkpoints_total_limit=None, evaluate_before_training=False)
    train(TrainingConfig(**options))
    full = tmp_path / "out"
    shutil.copytree(full, tmp_path / "resumed")
    for name in ("step_8", "epoch_1-step_8"):  # back to the state at the end of epoch 0
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / name)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "epoch_0-step_6"
    train(TrainingConfig(**dict(options, output_dir=str(tmp_path / "resumed"), resume_from_checkpoint=str(checkpoint))))

    def estimates(folder):  # the loss's state, stored beside the weights
        return load_file(folder / "loss_state.safetensors")["label_logits"]

    start = estimates(checkpoint)
    assert start.shape == (45, 12)  # one estimate per training image and label
    runs = (full, tmp_path / "resumed")
    a, b = (load_file(run / "checkpoints" / "epoch_1-step_8" / "model.safetensors") for run in runs)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)
    end_a, end_b = (estimates(run / "checkpoints" / "epoch_1-step_8") for run in runs)
    torch.testing.assert_close(end_a, end_b, atol=0, rtol=0)
    assert not torch.equal(end_a, start)  # the estimates trained in epoch 1


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    """A tiny finished run of one epoch (6 steps) with EMA and label sampling, checkpoints at step 4 and the end."""
    folder = tmp_path_factory.mktemp("untrusted")
    options = tiny_options(folder, epochs=1, schedule_epochs=1, checkpointing_steps="4", label_sample_size=3,
                           checkpoints_total_limit=None, evaluate_before_training=False)
    train(TrainingConfig(**options))
    return folder, options


@pytest.fixture
def checkpointed_copy(checkpointed_run, tmp_path):
    """A copy of `checkpointed_run`'s output: ``(folder, the options that continue it)``."""
    source, options = checkpointed_run
    shutil.copytree(source / "out", tmp_path / "run" / "out")
    return tmp_path / "run" / "out", dict(options, output_dir=str(tmp_path / "run" / "out"))


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


# ----------------------------------------------------------------------------------------------------------------------
# Damaged checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name, damage, expected", [
    ("optimizer.bin", _truncate, "truncated or corrupt checkpoint file"),
    ("model.safetensors", _truncate, "truncated or corrupt checkpoint file"),
    ("random_states_0.pkl", lambda p: p.unlink(), "missing from the checkpoint"),
    ("loss_state.safetensors", _truncate, "truncated or corrupt checkpoint file"),
    ("ema.safetensors", lambda p: p.unlink(), "missing from the checkpoint"),
    ("training_state.json", _truncate, "truncated or corrupt"),
    (TRAINING_ARGS_NAME, _truncate, "truncated or corrupt"),
    (TRAINING_ARGS_NAME, lambda p: p.unlink(), "has no training_args.json"),
])
def test_damaged_checkpoint_is_named(run_copy, capsys, name, damage, expected):
    out, options = run_copy
    checkpoint = out / "checkpoints" / "epoch_0-step_6"
    damage(checkpoint / name)
    status, lines = run_main(as_argv(options) + ["--resume_from_checkpoint", "latest"], capsys)
    assert status == 1
    line = error_line(lines)
    assert expected in line
    assert str(checkpoint / name) in line or (name == TRAINING_ARGS_NAME and str(checkpoint) in line)


# ----------------------------------------------------------------------------------------------------------------------
# Untrusted checkpoints: nothing in them runs code or moves files outside the run
# ----------------------------------------------------------------------------------------------------------------------


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


def pickle_files(checkpoint: Path) -> list[str]:
    """The files of a checkpoint that are read by an unpickler."""
    return sorted(p.name for p in checkpoint.iterdir() if p.suffix in (".pkl", ".bin", ".pt"))


def test_a_checkpoint_holds_no_pickle_of_the_projects_own_state(checkpointed_copy):
    out, _ = checkpointed_copy
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
def test_a_malicious_pickle_in_a_checkpoint_never_runs(checkpointed_copy, tmp_path, capsys, name, kind):
    """Each pickle file of a checkpoint (and pickles it should not hold, such as the `custom_checkpoint_0.pkl` that
    accelerate would unpickle with weights_only=False) replaced by one that runs code: the resume stops with one
    line naming the file, the code never ran and nothing outside the run folder changed."""
    out, options = checkpointed_copy
    checkpoint = out / "checkpoints" / "step_4"
    marker = tmp_path / "pwned"
    write_malicious(checkpoint / name, marker, kind)
    outside = digest_tree(tmp_path, skip=out)
    status, lines = run_main(as_argv(options) + ["--resume_from_checkpoint", str(checkpoint)], capsys)
    assert status == 1
    line = error_line(lines)
    assert str(checkpoint / name) in line and "refused" in line
    assert not marker.exists()
    after = digest_tree(tmp_path, skip=out)
    assert after == outside


def test_random_states_that_do_not_load_stop_the_resume(checkpointed_copy, capsys):
    """accelerate skips a random-state file it cannot read (and resumes with other random numbers); here the resume
    stops, naming the file: one with entries of the wrong kind, and one that is not a zip archive at all."""
    out, options = checkpointed_copy
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
    before = digest_tree(tmp_path / "fresh")
    fresh = dict(options, output_dir=str(tmp_path / "fresh" / "out"), push_to_hub=False,
                 resume_from_checkpoint="hub")
    status, lines = run_main(as_argv(fresh), capsys)
    assert status == 1
    line = error_line(lines)
    assert repr(bad_name) in line and "hspnet_checkpoint.json" in line
    assert victim.read_text() == "mine"
    after = {k: v for k, v in digest_tree(tmp_path / "fresh").items() if not k.startswith("out")}
    assert after == before
    # nothing of the repository's best model was taken into the output folder either
    assert not (tmp_path / "fresh" / "out" / "model.safetensors").exists()
