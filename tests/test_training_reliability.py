"""Issue 10 for training: no silent wrong results, nothing overwritten, every bad input named in one line.

Images (16-bit, float, EXIF), the output-folder lock, `--overwrite_output_dir` through a staging folder, the resume
settings check, damaged checkpoints, a diverging loss, and the one-line errors of scripts/train.py. Expected values
are worked out by hand in each test (pixel values, step numbers, line numbers), never read back from the code."""

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hspnet.training.run_folder import BEST_MARKER_NAME, LOCK_NAME, OutputDirInUseError, OutputDirLock
from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.training.resume import ResumeMismatchError, settings_differences
from hspnet.training.arguments import TrainingConfig
from hspnet.training.loop import TrainingDivergedError, train
from tests.test_training import REPO, as_argv, tiny_options

STEPS_PER_EPOCH = 6  # tiny_options: 60 demo images, 25 % held out -> 45 training images, batch 8 -> 6 steps


def load_train_main():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_main(argv, capsys):
    """scripts/train.py's main in this process: (exit status, stderr lines)."""
    capsys.readouterr()
    status = load_train_main()(argv)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def error_line(lines):
    """The single `train.py: error:` line (and check there is exactly one and no traceback)."""
    errors = [line for line in lines if line.startswith("train.py: error:")]
    assert len(errors) == 1, lines[-20:]
    assert not any(line.startswith("Traceback") for line in lines), lines[-20:]
    return errors[0]


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def poison(monkeypatch, at: int, mode: str):
    """The model's loss (SPLC) made NaN / inf (or given NaN gradients) at its `at`-th call, i.e. optimizer step `at`
    (evaluation computes no loss)."""
    from hspnet.models.hspnet.losses import SPLCLoss

    original, calls = SPLCLoss.forward, []

    def forward(self, logits, targets, **kwargs):
        calls.append(1)
        loss = original(self, logits, targets, **kwargs)
        if len(calls) == at:
            if mode == "grad":  # forward value unchanged (+0), backward d sqrt(|x|)/dx at 0 = inf, times 0 = NaN
                return loss + 0.0 * (logits - logits.detach()).abs().sqrt().sum()
            return loss * float(mode)
        return loss

    monkeypatch.setattr(SPLCLoss, "forward", forward)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished tiny run of one epoch (6 steps) with its checkpoint `epoch_0-step_6`; tests copy it."""
    tmp_path = tmp_path_factory.mktemp("one-epoch")
    options = tiny_options(tmp_path, epochs=1, schedule_epochs=1)
    train(TrainingConfig(**options))
    return tmp_path, options


@pytest.fixture
def run_copy(one_epoch_run, tmp_path):
    source, options = one_epoch_run
    shutil.copytree(source / "out", tmp_path / "out")
    return tmp_path / "out", dict(options, output_dir=str(tmp_path / "out"))


# --- 1. images -------------------------------------------------------------------------------------------------------


def test_training_transform_scales_16_bit_and_float_images_and_applies_exif(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, List
    from PIL import Image

    from hspnet.data.batches import make_transform

    # 16-bit grey 25700 = 100 * 257 -> 100 in 8 bits; float 0.2 -> 0.2 * 255 = 51; convert("RGB") alone gives 255 / 0
    Image.fromarray(np.full((4, 5), 25700, dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((4, 5), 0.2, dtype=np.float32)).save(tmp_path / "float.tiff")
    # stored 6 wide x 2 high, left half red, right half blue, EXIF orientation 6 (display rotated 90 degrees
    # clockwise): shown 2 wide x 6 high with red on top
    stored = np.zeros((2, 6, 3), dtype=np.uint8)
    stored[:, :3] = (255, 0, 0)
    stored[:, 3:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    files = [str(tmp_path / name) for name in ("grey16.png", "float.tiff", "rotated.png")]
    data = Dataset.from_dict(
        {"image": files, "labels": [[0], [1], [0, 1]]},
        features=Features({"image": ImageFeature(), "labels": List(ClassLabel(names=["a", "b"]))}),
    )
    seen = []

    def recording_processor(images, return_tensors):  # what the model's image processor receives
        seen.extend(np.asarray(image) for image in images)
        return {"pixel_values": torch.zeros(len(images), 3, 2, 2)}

    batch = data.with_transform(make_transform(recording_processor, 2))[:3]
    assert batch["labels"].tolist() == [[1, 0], [0, 1], [1, 1]]
    grey, flt, rotated = seen
    assert grey.shape == (4, 5, 3) and grey.dtype == np.uint8 and (grey == 100).all()
    assert flt.shape == (4, 5, 3) and (flt == 51).all()
    assert rotated.shape == (6, 2, 3)
    assert (rotated[:3] == (255, 0, 0)).all() and (rotated[3:] == (0, 0, 255)).all()


# --- 3. the output-folder lock ---------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    handle = open(os.path.join(sys.argv[1], sys.argv[2]), "a+")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00"}))
    handle.flush()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def hold_lock(folder):
    """A separate process holding the lock of `folder` as a training run does (`flock` on the lock file, which holds
    its PID, host and start time), returned once it holds it. It imports nothing of hspnet: a second of interpreter
    start instead of five of imports."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), LOCK_NAME], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_output_dir_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    folder = tmp_path / "out"
    lock = OutputDirLock(str(folder)).acquire()
    record = json.loads((folder / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"]
    with pytest.raises(OutputDirInUseError, match=rf"output_dir '{folder}' is in use by another training run "
                                                  rf"\(pid {os.getpid()} on host "):
        OutputDirLock(str(folder)).acquire()
    lock.release()
    assert not (folder / LOCK_NAME).exists()

    holder = hold_lock(folder)
    try:
        with pytest.raises(OutputDirInUseError, match=rf"pid {holder.pid} on host .*, started 2026-01-01 00:00:00"):
            OutputDirLock(str(folder)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_NAME).exists()  # the file of the killed holder stays, its lock does not
    lock = OutputDirLock(str(folder)).acquire()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_second_training_on_a_locked_output_dir_fails_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        status, lines = run_main(as_argv(tiny_options(tmp_path)), capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert status == 1
    line = error_line(lines)
    assert f"output_dir '{out}' is in use by another training run (pid {holder.pid} on host" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # it stopped before writing anything
    assert not (tmp_path / "cache").exists()  # ... and before loading any data


def test_locked_output_dir_stops_every_process_of_a_distributed_run(two_process_runs):
    """Only the main process takes the lock; the other one learns that it failed instead of waiting forever (step 2
    of the session's 2-process launch, `two_process_runs`: train.py's `main` on a folder `hold_lock` holds)."""
    result, reports, out = two_process_runs["result"], two_process_runs["reports"], two_process_runs["locked_out"]
    assert reports["0"] and reports["1"], result.stderr[-4000:]
    assert [reports[rank]["locked"]["status"] for rank in ("0", "1")] == [1, 1]  # exit status 1 on every process
    assert f"train.py: error: output_dir '{out}' is in use by another training run" in result.stderr
    assert "train.py: error: process 0 stopped: output_dir" in result.stderr  # the other process
    assert max(reports[rank]["locked"]["seconds"] for rank in ("0", "1")) < 250


# --- 4. --overwrite_output_dir ---------------------------------------------------------------------------------------


def test_overwrite_replaces_the_folder_only_when_the_new_run_is_complete(run_copy, monkeypatch):
    out, options = run_copy
    before = digest_tree(out)
    new_run = dict(options, overwrite_output_dir=True, seed=1, epochs=2, schedule_epochs=2)
    # a new run that fails midway (NaN loss at step 8, after its first epoch) leaves the old folder as it was
    poison(monkeypatch, at=8, mode="nan")
    with pytest.raises(TrainingDivergedError, match=rf"{out} is unchanged"):
        train(TrainingConfig(**new_run))
    assert digest_tree(out) == before
    staging = out.parent / "out.partial"
    assert sorted(p.name for p in (staging / "checkpoints").iterdir()) == ["epoch_0-step_6"]
    monkeypatch.undo()

    # the same command with --resume_from_checkpoint latest continues that new run, then swaps it in as a whole:
    # no file or checkpoint of the old run is left
    train(TrainingConfig(**dict(new_run, resume_from_checkpoint="latest")))
    assert not staging.exists() and not (out.parent / "out.replaced").exists()
    assert not (out / LOCK_NAME).exists()
    after = digest_tree(out)
    assert after["model.safetensors"] != before["model.safetensors"]
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["epoch_0-step_6", "epoch_1-step_12"]
    for checkpoint in checkpoints:
        assert json.loads((checkpoint / TRAINING_ARGS_NAME).read_text())["seed"] == 1
    results = json.loads((out / "all_results.json").read_text())
    assert [h["step"] for h in results["history"]] == [6, 12] and results["resumed_from"].endswith("epoch_0-step_6")
    assert "test_before_training" in results

    # a fresh overwrite run over that one, complete: replaced again
    train(TrainingConfig(**dict(options, overwrite_output_dir=True, seed=2, evaluate_before_training=False)))
    assert not staging.exists() and not (out.parent / "out.replaced").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_0-step_6"]
    assert json.loads((out / "all_results.json").read_text())["resumed_from"] is None
    assert "test_before_training" not in json.loads((out / "all_results.json").read_text())


def test_overwrite_refuses_a_folder_with_files_no_run_wrote(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "photos").mkdir()
    (out / ".git").mkdir()
    (out / "eval_demo_test").mkdir()  # scripts/evaluate.py's report of the old model: replaced with it
    with pytest.raises(FileExistsError, match=r"holds files that no training run wrote \(\.git/, notes.txt, "
                                              r"photos/\)"):
        train(TrainingConfig(**tiny_options(tmp_path, overwrite_output_dir=True)))
    assert sorted(p.name for p in out.iterdir()) == [".git", "config.json", "eval_demo_test", "notes.txt", "photos"]
    assert not (tmp_path / "out.partial").exists()


def test_resuming_an_interrupted_overwrite_run_needs_the_overwrite_flag(tmp_path, monkeypatch):
    from hspnet.training.run_folder import plan_folders

    checkpoint = tmp_path / "out.partial" / "checkpoints" / "epoch_0-step_6"
    checkpoint.mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "epoch_2-step_18").mkdir(parents=True)
    options = dict(output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"belongs to an interrupted --overwrite_output_dir run .* add "
                                         r"--overwrite_output_dir true to continue it"):
        plan_folders(TrainingConfig(**options, resume_from_checkpoint=str(checkpoint)))
    both = dict(options, overwrite_output_dir=True)
    staging, out = str(tmp_path / "out.partial"), str(tmp_path / "out")
    assert plan_folders(TrainingConfig(**both, resume_from_checkpoint="latest")).working == staging
    assert plan_folders(TrainingConfig(**options, resume_from_checkpoint="latest")).working == out
    assert plan_folders(TrainingConfig(**both)).working == staging  # a fresh overwrite run
    monkeypatch.chdir(out)  # "." holding a run: the staging folder is its sibling, not "./.partial"
    assert plan_folders(TrainingConfig(output_dir=".", overwrite_output_dir=True)).working == staging


# --- 2. resume settings ----------------------------------------------------------------------------------------------


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


def test_resume_into_a_folder_without_the_runs_best_model_is_refused(run_copy, tmp_path):
    out, options = run_copy
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(ResumeMismatchError, match=r"saved a best model \(epoch 0\) that .*elsewhere does not hold"):
        train(TrainingConfig(**dict(options, output_dir=str(elsewhere),
                                    resume_from_checkpoint=str(out / "checkpoints" / "epoch_0-step_6"))))


# --- 6. a diverging loss ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_with_the_step_and_keeps_the_best_model(tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from hspnet import HSPNetForImageClassification

    saved_as_best = []
    original_save = HSPNetForImageClassification.save_pretrained

    def spy(self, folder, *args, **kwargs):  # remember every model saved as the best one
        saved_as_best.append({k: v.detach().clone() for k, v in self.state_dict().items()})
        return original_save(self, folder, *args, **kwargs)

    monkeypatch.setattr(HSPNetForImageClassification, "save_pretrained", spy)
    poison(monkeypatch, at=8, mode="nan")
    status, lines = run_main(as_argv(tiny_options(tmp_path, epochs=2)), capsys)
    assert status == 1
    # step 8 = the 2nd batch of epoch 1 (6 steps per epoch)
    assert error_line(lines).startswith(
        "train.py: error: training diverged at global step 8 (epoch 1, batch 2 of 6): the loss is nan; this step was "
        "not applied, the best model so far (epoch 0, validation mAP "
    )
    out = tmp_path / "out"
    assert not (out / "all_results.json").exists()
    assert len(saved_as_best) == 1  # after epoch 0
    on_disk = load_file(out / "model.safetensors")
    for key, value in on_disk.items():  # the model on disk is the last one saved as best, whole and finite
        torch.testing.assert_close(value, saved_as_best[-1][key], atol=0, rtol=0, msg=key)
        assert torch.isfinite(value).all(), key


@pytest.mark.parametrize("mode, at, expected", [
    ("inf", 2, "global step 2 (epoch 0, batch 2 of 6): the loss is inf"),
    ("grad", 1, "global step 1 (epoch 0, batch 1 of 6): the gradients are not finite"),
])
def test_inf_loss_or_gradients_stop_before_any_model_is_saved(tmp_path, monkeypatch, mode, at, expected):
    poison(monkeypatch, at=at, mode=mode)
    with pytest.raises(TrainingDivergedError) as caught:
        train(TrainingConfig(**tiny_options(tmp_path, evaluate_before_training=False)))
    assert f"training diverged at {expected}" in str(caught.value)
    assert "no model was saved yet" in str(caught.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- 7. one line naming the culprit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    # "seed: 1: 2": the second ':' (line 3, column 8) starts a mapping where none is allowed
    ("epochs: 5\nlr: 0.1\nseed: 1: 2\n", "c.yaml, line 3, column 8: not valid YAML: mapping values are not allowed"),
    ("epochs: 5\nlr: 0.1\nepochs: 6\n", "c.yaml, line 3: option 'epochs' is given twice (first on line 1)"),
    ("epochs: many\n", "c.yaml: epochs: 'many' is not a valid INT"),
    ("epochz: 5\n", "c.yaml: unknown option(s) ['epochz'] (did you mean 'epochz' -> 'epochs'?)"),
    ("labels: [cat, dog]\n", "c.yaml: unknown option(s) ['labels']"),
    ("- epochs\n", "c.yaml: expected a mapping of option: value, got list"),
])
def test_bad_config_file_is_one_line(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    status, lines = run_main(["--config", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert status == 1
    assert expected in error_line(lines)
    assert not (tmp_path / "out").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: many\n")
    with pytest.raises(ValueError, match="epochs: 'many' is not a valid INT"):
        load_train_main()(["--config", str(path), "--debug"])


def test_missing_model_sources_are_named(tmp_path, capsys, make_model):
    missing = str(tmp_path / "no-such-clip")
    status, lines = run_main(as_argv(tiny_options(tmp_path, clip_model=missing)), capsys)
    assert status == 1 and f"--clip_model '{missing}': no such file or folder" in error_line(lines)
    status, lines = run_main(as_argv(tiny_options(tmp_path, clip_model="someone/no-such-clip",
                                                  output_dir=str(tmp_path / "o2"))), capsys)
    assert status == 1 and "--clip_model 'someone/no-such-clip': cannot load this CLIP" in error_line(lines)

    # a model trained on the 6 labels of the test hierarchy, fine-tuned on the 12-label demo data
    six = tmp_path / "six-labels"
    make_model().save_pretrained(six)
    status, lines = run_main(as_argv(tiny_options(tmp_path, model_name_or_path=str(six),
                                                  output_dir=str(tmp_path / "o3"))), capsys)
    line = error_line(lines)
    assert status == 1 and f"--model_name_or_path '{six}' was trained on other labels than the dataset 'demo'" in line
    assert "6 labels in the model, 12 in the dataset; only in the model: ['cat', 'dog'," in line


def unwritable_folder(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if os.path.isdir("/sys") and not os.access("/sys", os.W_OK) or os.path.isdir("/sys/kernel"):
        return Path("/sys")  # root ignores permission bits; sysfs refuses new folders even to root
    pytest.skip("no folder this user cannot write to")


def test_unwritable_output_dir_is_one_line(tmp_path, capsys):
    target = unwritable_folder(tmp_path) / "hspnet-out"
    status, lines = run_main(as_argv(tiny_options(tmp_path, output_dir=str(target))), capsys)
    assert status == 1
    assert f"output_dir '{target}': cannot create this folder" in error_line(lines)

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    status, lines = run_main(as_argv(tiny_options(tmp_path, output_dir=str(a_file))), capsys)
    assert status == 1 and f"output_dir '{a_file}' exists and is not a folder" in error_line(lines)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_a_failing_write_is_one_line_and_leaves_no_half_file(fresh_training_runs):
    """The kernel refuses every write past 200 kB (RLIMIT_FSIZE), as a full disk would: the first large file is the
    best model (~0.5 MB) after epoch 0. (/dev/full does not fail writes on every machine, so it is not used.) The
    run is step 2 of the session's `fresh_training_runs` (train.py's `main`, tiny_options, in a fresh
    interpreter)."""
    report = fresh_training_runs["report"]
    _, stderr = fresh_training_runs["outputs"].get("file_size_limit", ("", ""))
    assert report is not None, fresh_training_runs["result"].stderr[-3000:]
    out = fresh_training_runs["folder"] / "limited" / "out"
    assert report["file_size_limit"] == 1, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert f"cannot write the model to {out}" in lines[0] and "File too large" in lines[0]
    leftovers = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" not in leftovers and not any(name.startswith(".best-") for name in leftovers)


def test_a_log_file_that_cannot_be_written_stops_the_run(tmp_path):
    """logging would print a traceback and go on without a log; the run's log handler stops it with one line."""
    import errno
    import logging

    from hspnet.training.run_log import RaisingFileHandler

    handler = RaisingFileHandler(str(tmp_path / "train.log"))

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    handler.stream = FullDisk()
    log = logging.getLogger("hspnet.test-full-disk")
    log.propagate = False
    log.addHandler(handler)
    try:
        with pytest.raises(OSError, match=rf"cannot write the log file {tmp_path / 'train.log'}: No space left on "
                                          "device"):
            log.warning("hello")
    finally:
        log.removeHandler(handler)
