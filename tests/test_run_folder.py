"""The output folder of a training run (`hspnet.training.run_folder`, docs/method.md section 7.2): its lock (also
across the processes of a distributed run), `--overwrite_output_dir` through a staging folder (the old run is replaced
only by a complete new one), and writes that fail (an unwritable folder, a full disk, a log file that cannot be
written), each one line naming the culprit. Expected values are worked out by hand in each test (step numbers, file
names), never read back from the code."""

import json
import os
import signal
from pathlib import Path

import pytest

from hspnet.hub.transfer import TRAINING_ARGS_NAME
from hspnet.training.arguments import TrainingConfig
from hspnet.training.loop import TrainingDivergedError, train
from hspnet.training.run_folder import LOCK_NAME, OutputDirInUseError, OutputDirLock
from tests.helpers import as_argv, digest_tree, error_line, hold_lock, poison, run_main, tiny_options

# ----------------------------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------------------------


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
    assert f"hspnet train: error: output_dir '{out}' is in use by another training run" in result.stderr
    assert "hspnet train: error: process 0 stopped: output_dir" in result.stderr  # the other process
    assert max(reports[rank]["locked"]["seconds"] for rank in ("0", "1")) < 250


# ----------------------------------------------------------------------------------------------------------------------
# Never overwritten silently; --overwrite_output_dir
# ----------------------------------------------------------------------------------------------------------------------


def test_output_dir_is_never_overwritten_silently(trained_with_checkpoints):
    from hspnet.training.loop import train

    out, _ = trained_with_checkpoints
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        train(TrainingConfig(**tiny_options(out.parent, output_dir=str(out))))
    assert (out / "model.safetensors").read_bytes() == before


def test_overwrite_replaces_the_folder_only_when_the_new_run_is_complete(run_copy, monkeypatch):
    out, options = run_copy
    before = digest_tree(out)
    new_run = dict(options, overwrite_output_dir=True, seed=1, epochs=2, schedule_epochs=2)
    # a new run that fails midway (NaN loss at step 8, after its first epoch) leaves the old folder as it was
    poison(monkeypatch, at=8, mode="nan")
    with pytest.raises(TrainingDivergedError, match=rf"{out} is unchanged"):
        train(TrainingConfig(**new_run))
    staging = out / ".hspnet-next-run"  # inside the output folder: nothing is left beside it
    assert digest_tree(out, skip=staging) == before and sorted(p.name for p in out.parent.iterdir()) == ["out"]
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


def test_overwrite_keeps_what_no_training_run_writes(run_copy):
    """`--overwrite_output_dir` replaces the earlier run (its model files, log, TensorBoard logs, checkpoints) and
    keeps everything else, as transformers' Trainer (which deletes nothing) would: the user's notes, `hspnet
    evaluate`'s `eval_demo_test/` report, a `.git` folder; one log line for each."""
    out, options = run_copy
    mine = {"notes.txt": "mine", "eval_demo_test/metrics.json": '{"mAP": 1}', ".git/HEAD": "ref: main",
            "photos/a/b.txt": "deep", ".gitattributes": "*.safetensors lfs"}
    for name, text in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    (out / "model-00002-of-00002.safetensors").write_bytes(b"a shard of the earlier model")
    old_model = (out / "model.safetensors").read_bytes()

    train(TrainingConfig(**dict(options, overwrite_output_dir=True, seed=1, evaluate_before_training=False)))
    assert {name: (out / name).read_text() for name in mine} == mine
    assert not (out / "model-00002-of-00002.safetensors").exists()  # the earlier model's: not kept
    assert (out / "model.safetensors").read_bytes() != old_model
    assert json.loads((out / TRAINING_ARGS_NAME).read_text())["seed"] == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no out.replaced, no staging left
    assert not (out / ".hspnet-next-run").exists()
    log = (out / "train.log").read_text()
    for shown in (".git/", ".gitattributes", "eval_demo_test/", "notes.txt", "photos/"):
        assert log.count(f"kept {shown} of the previous {out} in the new one (no training run writes it)") == 1, shown
    assert log.count(" kept ") == 5


def test_resuming_an_interrupted_overwrite_run_needs_the_overwrite_flag(tmp_path, monkeypatch):
    from hspnet.training.run_folder import plan_folders

    checkpoint = tmp_path / "out" / ".hspnet-next-run" / "checkpoints" / "epoch_0-step_6"
    checkpoint.mkdir(parents=True)
    earlier = tmp_path / "out" / "checkpoints" / "epoch_2-step_18"
    earlier.mkdir(parents=True)
    options = dict(output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"belongs to an interrupted --overwrite_output_dir run .* add "
                                         r"--overwrite_output_dir true to continue it"):
        plan_folders(TrainingConfig(**options, resume_from_checkpoint=str(checkpoint)))
    both = dict(options, overwrite_output_dir=True)
    staging, out = str(tmp_path / "out" / ".hspnet-next-run"), str(tmp_path / "out")
    assert plan_folders(TrainingConfig(**both, resume_from_checkpoint="latest")).working == staging
    assert plan_folders(TrainingConfig(**options, resume_from_checkpoint="latest")).working == out
    assert plan_folders(TrainingConfig(**both)).working == staging  # a fresh overwrite run
    monkeypatch.chdir(out)  # "." holding a run: the staging folder is inside it, by its absolute path
    assert plan_folders(TrainingConfig(output_dir=".", overwrite_output_dir=True)).working == staging
    earlier.rmdir()  # only the interrupted overwrite run has checkpoints: "latest" alone would find none
    with pytest.raises(ValueError, match=r"the checkpoints under .*out belong to an interrupted "
                                         r"--overwrite_output_dir run .* add --overwrite_output_dir true"):
        plan_folders(TrainingConfig(**options, resume_from_checkpoint="latest"))


# ----------------------------------------------------------------------------------------------------------------------
# Writes that fail
# ----------------------------------------------------------------------------------------------------------------------


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
    lines = [line for line in stderr.splitlines() if line.startswith("hspnet train: error:")]
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


def test_ctrl_c_during_the_swap_waits_until_the_new_run_is_in_place(tmp_path, monkeypatch):
    """Ctrl-C (SIGINT) while `swap_in` moves the folders is held back until the swap is complete: never an output
    folder half replaced, or renamed aside and left there."""
    import hspnet.training.run_folder as run_folder

    out = tmp_path / "out"
    (out / ".hspnet-next-run").mkdir(parents=True)
    (out / "config.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / ".hspnet-next-run" / "config.json").write_text("new")
    listed = run_folder.kept_entries

    def interrupted_listing(folder):  # called between the renames and the moves of the kept entries
        os.kill(os.getpid(), signal.SIGINT)
        return listed(folder)

    monkeypatch.setattr(run_folder, "kept_entries", interrupted_listing)
    folders = run_folder.RunFolders(str(out), str(out / ".hspnet-next-run"))
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_folder.swap_in(folders, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert {p.name: p.read_text() for p in out.iterdir()} == {"config.json": "new", "notes.txt": "mine"}
    assert signal.getsignal(signal.SIGINT) is handler  # put back
