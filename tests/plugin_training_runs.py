"""Session fixtures for the training, resume, Hub and distributed tests (loaded by `tests/conftest.py`).

Each fixture is one expensive run that several tests assert on (copy its folder before changing it)."""

import json
import sys
from pathlib import Path

import pytest

from tests.session_once import once_per_session

# the fixtures conftest.py star-imports
__all__ = ["fresh_training_runs", "trained_with_checkpoints", "two_process_runs", "uninterrupted_ten_step_run"]


# The script every process of `two_process_runs` runs: argv = the report folder, then the train.py arguments of the
# locked run and of the Hub run (JSON lists). Each process writes what it saw to report-RANK.json.
_TWO_PROCESS_SCRIPT = """\
import json, os, sys, time
import pytest
import torch
from accelerate import Accelerator
import hspnet.training.loop as training
from hspnet.evaluation.metrics import MultiLabelMetricAccumulator
from tests.test_hub import FakeHub

folder, locked_argv, hub_argv = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
report = {}

# 1. the metric accumulator over 2 processes: 7 samples, batch 2 (an uneven split, padded by accelerate)
accelerator = Accelerator(cpu=True)
generator = torch.Generator().manual_seed(0)
logits = torch.randn(7, 4, generator=generator)
targets = (torch.rand(7, 4, generator=generator) < 0.4).long()
targets[0] = 1
loader = accelerator.prepare(
    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, targets), batch_size=2))
accumulator = MultiLabelMetricAccumulator(4, from_logits=True)
for batch_logits, batch_targets in loader:
    accumulator.add_from_accelerator(accelerator, batch_logits, batch_targets)
if accelerator.is_main_process:
    report["gather"] = {"world": accelerator.num_processes, "metrics": accumulator.compute(),
                        "scores": accumulator.scores.tolist(), "all_scores": logits.tolist(),
                        "all_targets": targets.tolist()}
accelerator.wait_for_everyone()
del accelerator, loader

# 2. train.py on an output folder whose lock another process holds: every process must stop
start = time.time()
report["locked"] = {"status": training.main(locked_argv), "seconds": time.time() - start}

# 3. train.py pushing to the fake Hub
patch = pytest.MonkeyPatch()
hub = FakeHub(os.path.join(folder, "hub")).install(patch)
status = training.main(hub_argv)
report["hub_run"] = {"status": status, "commits": hub.commits, "repos": hub.repos}
with open(os.path.join(folder, f"report-{os.environ['RANK']}.json"), "w") as file:
    json.dump(report, file)
sys.exit(status)
"""


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory):
    """ONE `accelerate launch --num_processes 2` on CPU (gloo; three interpreters: the launcher and two ranks) whose
    processes do, one after the other (the process group of step 1 serves the rest):

    1. `tests/test_metrics.py`: a `MultiLabelMetricAccumulator` fed through `add_from_accelerator` by a prepared
       loader of 7 samples (rank 0 reports what it gathered, and the inputs);
    2. `tests/test_training_reliability.py`: scripts/train.py's `main` on an output folder locked by another
       process (`hold_lock`): each rank reports its exit status and how long it took to stop;
    3. `tests/test_training.py` and `tests/test_hub.py`: `main` trains one epoch pushing to this package's fake Hub
       (`hub_strategy checkpoint`, states at step 2 and at the end, step 3), with tracking; each rank reports the
       Hub calls it made.

    Returns ``dict(folder, result, reports, locked_out)``: the run's tmp folder (step 3's data cache is
    ``folder / "cache"``, its output ``folder / "out"``), the finished launch (stderr: both ranks), each rank's
    report (None if it wrote none) and the locked output folder of step 2. Made once per session
    (`once_per_session`)."""
    return once_per_session(tmp_path_factory, "two-process", _two_process_runs)


def _two_process_runs(folder):
    from tests.test_hub import hub_options
    from tests.test_training import REPO, as_argv, free_port, run_script, tiny_options
    from tests.test_training_reliability import hold_lock

    script = folder / "two_process_script.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    locked = tiny_options(folder / "locked")
    # with_tracking (the default): the trackers end, and the process group is destroyed, only after the last
    # collective call of the run (ending them earlier failed the end of every distributed run with tracking)
    options = hub_options(folder, epochs=1, schedule_epochs=1, hub_strategy="checkpoint", checkpointing_steps="2",
                          with_tracking=True)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    env = {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}  # the script imports tests.test_hub
    holder = hold_lock(Path(locked["output_dir"]))
    try:
        result = run_script([str(script), str(folder), json.dumps(as_argv(locked)), json.dumps(as_argv(options))],
                            launcher=launcher, env_extra=env)
    finally:
        holder.kill()
        holder.wait()
    reports = {}
    for rank in ("0", "1"):
        path = folder / f"report-{rank}.json"
        reports[rank] = json.loads(path.read_text()) if path.exists() else None
    return dict(folder=Path(folder), result=result, reports=reports, locked_out=Path(locked["output_dir"]))


@pytest.fixture(scope="session")
def uninterrupted_ten_step_run(tmp_path_factory):
    """The reference of the resume tests: a tiny run of 10 optimizer steps (6 per epoch, so it ends mid-epoch 1)
    with checkpoints every 4 steps and the metrics before training, not interrupted, trained in this process on one
    thread (as the interpreters `tests.test_training.run_script` starts: the same float reductions).

    Returns ``(options, output folder)``; ``options`` without ``output_dir`` / ``cache_dir`` are the ones a resumed
    run must use to be comparable."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.test_training import one_thread, tiny_options

    folder = tmp_path_factory.mktemp("uninterrupted")
    options = tiny_options(folder, output_dir=str(folder / "full"), max_train_steps=10, epochs=3,
                           checkpointing_steps="4", evaluate_before_training=True)
    with one_thread():
        train(TrainingConfig(**options))
    return options, folder / "full"


@pytest.fixture(scope="session")
def trained_with_checkpoints(tmp_path_factory):
    """A tiny run of 2 epochs (6 steps each) with tracking, checkpoints every 4 steps and a validation split, trained
    in this process: ``(output folder, the results train returned)``."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train
    from tests.test_training import tiny_options

    folder = tmp_path_factory.mktemp("train")
    config = TrainingConfig(**tiny_options(folder, with_tracking=True, checkpointing_steps="4"))
    results = train(config)
    return Path(config.output_dir), results


# The script of `fresh_training_runs`: argv = the report folder, the trained model folder, then the train.py
# arguments of the file-size-limited run, the predict.py command lines and the train.py arguments of the run to kill
# (JSON lists).
_FRESH_INTERPRETER_SCRIPT = """\
import contextlib, importlib.util, json, os, resource, runpy, signal, sys, traceback
folder, model_dir = sys.argv[1], sys.argv[2]
limited_argv, predict_command_lines, killed_argv = map(json.loads, sys.argv[3:6])
report = {}


@contextlib.contextmanager
def output_to(name):
    \"\"\"File descriptors 1 and 2 (print, logging, C code) go to folder/NAME.out and folder/NAME.err.\"\"\"
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.path.join(folder, name + ".out"), "w") as out, open(os.path.join(folder, name + ".err"), "w") as err:
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(saved[0], 1); os.dup2(saved[1], 2)


# 1. the model folder loads and runs through transformers' remote code while the hspnet package cannot be imported
with output_to("remote_code"):
    report["hspnet_imported_before"] = [name for name in sys.modules if name.split(".")[0] == "hspnet"]
    sys.modules["hspnet"] = None
    try:
        import torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True)
        with torch.no_grad():
            print(model(pixel_values=torch.zeros(1, 3, 32, 32)).logits.shape, type(model).__module__)
        report["remote_code"] = "ok"
    except Exception as error:
        traceback.print_exc()
        report["remote_code"] = repr(error)
    finally:
        del sys.modules["hspnet"]

# 2. scripts/train.py's main while the kernel refuses every write past 200 kB (RLIMIT_FSIZE), as a full disk would
with output_to("file_size_limit"):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200000, hard))
    try:
        spec = importlib.util.spec_from_file_location("train_script", os.path.join(os.getcwd(), "scripts", "train.py"))
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        report["file_size_limit"] = script.main(limited_argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

# 3. `python scripts/predict.py ARGS` for each ARGS, as the command line runs it (the script as __main__)
report["predict"] = []
for index, args in enumerate(predict_command_lines):
    with output_to(f"predict_{index}"):
        sys.argv = ["scripts/predict.py", *args]
        try:
            runpy.run_path(os.path.join(os.getcwd(), "scripts", "predict.py"), run_name="__main__")
            report["predict"].append(0)
        except SystemExit as stop:
            report["predict"].append(stop.code)
with open(os.path.join(folder, "report.json"), "w") as file:
    json.dump(report, file)

# 4. a run killed (SIGKILL, like a crashed node) once its optimizer step 9 is done and nothing of it is saved
import hspnet.training.ema as ema
import hspnet.training.loop as training
from hspnet.training.arguments import load_config
calls = {"n": 0}
original = ema.ModelEMA.update


def update(self, model):
    calls["n"] += 1
    if calls["n"] == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, model)


ema.ModelEMA.update = update
training.train(load_config(killed_argv))
"""


@pytest.fixture(scope="session")
def fresh_training_runs(request, tmp_path_factory):
    """ONE fresh interpreter (`tests.test_training.run_script`: OMP_NUM_THREADS=1) for four checks that each need
    one, done one after the other (each step's stdout/stderr in its own files):

    1. `test_trained_folder_loads_with_auto_classes_and_remote_code`: `trained_with_checkpoints`' folder loads
       with `trust_remote_code` and predicts while `import hspnet` fails (sys.modules["hspnet"] = None), in an
       interpreter that had not imported hspnet; report "remote_code" ("ok" or the error), remote_code.out/.err;
    2. `test_a_failing_write_is_one_line_and_leaves_no_half_file`: train.py's `main` (tiny_options, its data cache
       made beforehand, unlimited) under a 200 kB RLIMIT_FSIZE, restored afterwards; report "file_size_limit" (the
       exit status), file_size_limit.out/.err, output in ``folder / "limited" / "out"``;
    3. tests/test_prediction_reliability.py's `test_special_files_never_hang_the_command_line`: its
       `special_files_command_lines` (on a `special_files_folder` and a model of that module, ``folder /
       "predict"``) run as `python scripts/predict.py ...`; report "predict" (the exit statuses), predict_I.out/.err;
    4. `test_resume_after_kill_matches_uninterrupted_run`: the options of `uninterrupted_ten_step_run` with output
       ``folder / "killed"``, killed with SIGKILL during step 9: the process's exit status and stderr.

    Returns ``dict(folder, result, report, outputs, killed_options, special_folder)``; ``outputs[NAME]`` is
    ``(stdout, stderr)`` of step NAME. Made once per session (`once_per_session`; the session fixtures it uses are
    asked for only by the process that makes it)."""
    return once_per_session(tmp_path_factory, "fresh-interpreter", lambda folder: _fresh_training_runs(
        folder, model_dir=request.getfixturevalue("trained_with_checkpoints")[0],
        reference_options=request.getfixturevalue("uninterrupted_ten_step_run")[0],
        tiny_clip_dir=request.getfixturevalue("tiny_clip_dir")))


def _fresh_training_runs(folder, model_dir, reference_options, tiny_clip_dir):
    from hspnet.data import load_demo_dataset
    from tests.test_prediction_reliability import (
        save_model,
        special_files_command_lines,
        special_files_folder,
        write_rgb_png,
    )
    from tests.test_training import as_argv, run_script, tiny_options

    limited = tiny_options(folder / "limited")
    load_demo_dataset(cache_dir=limited["cache_dir"], **limited["dataset_options"])  # the data cache, unlimited
    killed = dict(reference_options, output_dir=str(folder / "killed"), cache_dir=str(folder / "cache"))
    (folder / "predict").mkdir()
    predict_model = save_model(tiny_clip_dir, folder / "predict" / "model")
    image = write_rgb_png(folder / "predict" / "plain.png")
    with special_files_folder(folder / "predict" / "in", image) as special_folder:
        command_lines = special_files_command_lines(special_folder, predict_model)
        result = run_script(["-c", _FRESH_INTERPRETER_SCRIPT, str(folder), str(model_dir),
                             json.dumps(as_argv(limited)), json.dumps(command_lines), json.dumps(as_argv(killed))],
                            env_extra={"HF_MODULES_CACHE": str(folder / "modules"), "PYTHONDONTWRITEBYTECODE": "1"})
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None

    outputs = {path.stem: tuple(path.with_suffix(suffix).read_text() for suffix in (".out", ".err"))
               for path in folder.glob("*.out")}
    return dict(folder=Path(folder), result=result, report=report, outputs=outputs, killed_options=killed,
                special_folder=special_folder)
