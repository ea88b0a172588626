"""The fixtures the test modules share; the plain functions they share are in `tests/helpers.py`, the scripts that
some fixtures run in other interpreters in `tests/scripts/`.

Cheap fixtures first (a tiny random CLIP, models built from it), then the expensive session fixtures, each one run
that several tests assert on (copy a fixture's folder before changing it): trained tiny models, the shared fresh
interpreters, the 2-process launch. The three that start other interpreters are made once per test session, also
under pytest-xdist (`tests.helpers.once_per_session`)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import (  # noqa: E402
    GROUPS,
    LABEL_TO_GROUP,
    LABELS,
    REPO,
    SCRIPTS,
    TINY_DEMO_OPTIONS,
    FakeHub,
    FreshRun,
    as_argv,
    free_port,
    hold_lock,
    hub_options,
    json_report,
    once_per_session,
    one_thread,
    python_dash_m_case,
    run_script,
    save_hspnet_folder,
    save_model,
    save_processor_folder,
    save_resnet_folder,
    special_files_command_lines,
    special_files_folder,
    tiny_options,
    write_rgb_png,
    write_space_for_fresh_run,
)

# torch's threads per test process: 2 (the cores of the CI machine), or 1 in each of pytest-xdist's workers (`make
# test` runs two), exported as OMP_NUM_THREADS too, so an interpreter a test starts adds floats in the same order.
TORCH_THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2
os.environ["OMP_NUM_THREADS"] = str(TORCH_THREADS)
torch.set_num_threads(TORCH_THREADS)

# Tests of half a minute or more run first. In alphabetical order the C = 10,000 end-to-end test starts late in a
# worker's share of `make test`, and its ~40 s then run alone at the end while the other worker has nothing left to
# do; started first, they overlap the rest of the suite.
RUN_FIRST = ("tests/test_label_scale_e2e.py::test_everything_at_10000_labels",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid not in RUN_FIRST)  # a stable sort: the others keep their order


# ----------------------------------------------------------------------------------------------------------------------
# A tiny random CLIP and the models built from it
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP checkpoint folder laid out like a Hub repository."""
    from hspnet.utils.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), seed=0)


@pytest.fixture
def hierarchy():
    return dict(labels=list(LABELS), groups=list(GROUPS), label_to_group=list(LABEL_TO_GROUP))


@pytest.fixture
def make_model(tiny_clip_dir, hierarchy):
    """Build an HSPNetForImageClassification from the tiny CLIP (seeded, so GCN/meta-net weights are fixed)."""
    from hspnet import HSPNetForImageClassification

    def factory(seed=0, **kwargs):
        torch.manual_seed(seed)
        options = dict(hierarchy)
        options.update(kwargs)
        return HSPNetForImageClassification.from_clip(tiny_clip_dir, **options)

    return factory


@pytest.fixture
def pixel_values():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=generator)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """The Hub faked for this test (`tests.helpers.FakeHub`), its repositories under tmp_path / "hub"."""
    return FakeHub(tmp_path / "hub").install(monkeypatch)


@pytest.fixture
def run_as_main(monkeypatch, capsys):
    """Run `scripts/<name>` as __main__ in this interpreter: its exit status, stdout and stderr (a fresh interpreter
    running the `hspnet` command is tests/test_cli.py's; the script adds only its exit status)."""
    import runpy
    import subprocess

    def run(name, *args):
        script = str(REPO / "scripts" / name)
        monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(script, run_name="__main__")
        out = capsys.readouterr()
        return subprocess.CompletedProcess([script, *args], stop.value.code, out.out, out.err)

    return run


# ----------------------------------------------------------------------------------------------------------------------
# Trained tiny models
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_demo_model_dir(tiny_clip_dir, tmp_path_factory):
    """A saved, untrained tiny HSPNet on the built-in demo data's hierarchy (12 labels, 3 groups), seed 0. Shared by
    the session: copy it before changing it."""
    from hspnet import HSPNetForImageClassification
    from hspnet.data.demo import demo_hierarchy

    torch.manual_seed(0)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, **demo_hierarchy().model_kwargs())
    folder = tmp_path_factory.mktemp("tiny-demo-model")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_demo_cache(tmp_path_factory):
    """The datasets cache folder of `trained_tiny_model`'s demo data."""
    return str(tmp_path_factory.mktemp("tiny-demo-cache"))


@pytest.fixture(scope="session")
def trained_tiny_model(tiny_demo_cache, tmp_path_factory):
    """A tiny HSPNet on the tiny random CLIP, trained once per session by `hspnet.training.train` for one epoch on
    the demo data (`TINY_DEMO_OPTIONS`): the model folder exactly as training writes it. Copy it before changing it."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    output_dir = str(tmp_path_factory.mktemp("trained-tiny") / "model")
    train(TrainingConfig(
        clip_model="tiny-random", dataset="demo", dataset_options=dict(TINY_DEMO_OPTIONS), cache_dir=tiny_demo_cache,
        output_dir=output_dir, epochs=1, schedule_epochs=1, batch_size=16, with_tracking=False,
        evaluate_before_training=False, checkpointing_steps=None, lr=1e-3, gcn_lr=5e-3,
    ))
    return output_dir


@pytest.fixture(scope="session")
def trained_with_checkpoints(tmp_path_factory):
    """A tiny run of 2 epochs (6 steps each) with tracking, checkpoints every 4 steps and a validation split, trained
    in this process: ``(output folder, the results train returned)``."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    folder = tmp_path_factory.mktemp("train")
    config = TrainingConfig(**tiny_options(folder, with_tracking=True, checkpointing_steps="4"))
    results = train(config)
    return Path(config.output_dir), results


@pytest.fixture(scope="session")
def uninterrupted_ten_step_run(tmp_path_factory):
    """The reference of the resume tests: a tiny run of 10 optimizer steps (6 per epoch, so it ends mid-epoch 1)
    with checkpoints every 4 steps and the metrics before training, not interrupted, trained in this process on one
    thread (as the interpreters `tests.helpers.run_script` starts: the same float reductions).

    Returns ``(options, output folder)``; ``options`` without ``output_dir`` / ``cache_dir`` are the ones a resumed
    run must use to be comparable."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    folder = tmp_path_factory.mktemp("uninterrupted")
    options = tiny_options(folder, output_dir=str(folder / "full"), max_train_steps=10, epochs=3,
                           checkpointing_steps="4", evaluate_before_training=True)
    with one_thread():
        train(TrainingConfig(**options))
    return options, folder / "full"


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory):
    """A finished tiny run of one epoch (6 steps) with its checkpoint `epoch_0-step_6` (tests copy it with
    `run_copy`): ``(folder, options)``, the run's output in ``folder / "out"``."""
    from hspnet.training.arguments import TrainingConfig
    from hspnet.training.loop import train

    tmp_path = tmp_path_factory.mktemp("one-epoch")
    options = tiny_options(tmp_path, epochs=1, schedule_epochs=1)
    train(TrainingConfig(**options))
    return tmp_path, options


@pytest.fixture
def run_copy(one_epoch_run, tmp_path):
    """A copy of `one_epoch_run`'s output in tmp_path / "out": ``(folder, the options that continue it)``."""
    source, options = one_epoch_run
    shutil.copytree(source / "out", tmp_path / "out")
    return tmp_path / "out", dict(options, output_dir=str(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------------------------------
# Fresh interpreters, made once per session
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fresh_runs(tiny_clip_dir, tiny_demo_model_dir, tmp_path_factory):
    """Three fresh interpreters, started together (each costs seconds of imports; the machine has more than one core)
    and made once per test session (`once_per_session`). Each prints one JSON report (the first two run
    tests/scripts/fresh_interpreter_checks.py, see its docstring); each test asserts on its part, against values
    computed in the test process.

    "package": a fresh interpreter that imports the core of the installed `hspnet`, trains, saves, loads and runs a
    tiny model, then registers one global hook.
    "remote": saved folders loaded as remote code in one interpreter where `hspnet` cannot be imported (`-I -S`:
    only site-packages on sys.path, no .pth files), then a written Space's app.py run in the same interpreter; the
    folders and the values expected from them ("cases") are made by the `tests.helpers` functions named after the
    test modules that check them.
    "python_dash_m": `python -m hspnet predict` on a missing model folder (tests/test_cli.py): its exit status and
    output."""
    return once_per_session(tmp_path_factory, "fresh-runs",
                            lambda folder: _start_fresh_runs(folder, tiny_clip_dir, tiny_demo_model_dir))


def _start_fresh_runs(root, tiny_clip_dir, tiny_demo_model_dir):
    checks = SCRIPTS / "fresh_interpreter_checks.py"
    for name in ("package", "remote", "python-dash-m"):
        (root / name).mkdir()
    runs = {"package": FreshRun([checks, "package", tiny_clip_dir, root / "package" / "model"], cwd=root / "package")}
    try:
        # distinct folder names: transformers copies each folder's remote code to transformers_modules/<folder name>
        cases = {
            "hspnet_vit": save_hspnet_folder(root / "hspnet-vit", tiny_clip_dir),
            "clip_resnet": save_resnet_folder(root / "hspnet-resnet"),
            "processor": save_processor_folder(root / "vit-with-hspnet-processor"),
            "space": write_space_for_fresh_run(root / "space", tiny_demo_model_dir),
        }
        jobs = {"clip_dir": tiny_clip_dir, "space": cases["space"]["job"],
                "folders": {name: case["job"] for name, case in cases.items() if name != "space"}}
        (root / "jobs.json").write_text(json.dumps(jobs))
        # run from a folder that is not above any of the ones it loads
        runs["remote"] = FreshRun(["-I", "-S", checks, "remote", sysconfig.get_paths()["purelib"],
                                   root / "jobs.json"], cwd=root / "remote",
                                  env={"HF_MODULES_CACHE": str(root / "modules"), "GRADIO_ANALYTICS_ENABLED": "False"})
        cases["python_dash_m"] = python_dash_m_case(root / "python-dash-m")
        runs["python_dash_m"] = FreshRun(cases["python_dash_m"]["args"], cwd=root / "python-dash-m")
        # each run's outcome, failed or not: a failed run fails the tests that use it, not the others
        return {"package": runs["package"].finish(), "remote": runs["remote"].finish(),
                "python_dash_m": runs["python_dash_m"].finish(timeout=120), "cases": cases}
    finally:
        for run in runs.values():
            if run.process.poll() is None:
                run.process.kill()


@pytest.fixture(scope="session")
def fresh_package_report(fresh_runs):
    """The report of the "package" run of `fresh_runs`."""
    return json_report(fresh_runs["package"])


@pytest.fixture(scope="session")
def fresh_remote_run(fresh_runs):
    """The "remote" run of `fresh_runs`: {"report": its whole report, and for each folder name and "space":
    the case its test module made ("job", "expected" or what was written) with "result": its part of the report}."""
    report = json_report(fresh_runs["remote"])
    run = {"report": report}
    for name, case in fresh_runs["cases"].items():
        if name != "python_dash_m":
            run[name] = dict(case, result=report.get(name))
    return run


@pytest.fixture(scope="session")
def fresh_python_dash_m(fresh_runs):
    """The "python_dash_m" run of `fresh_runs`: {"returncode", "stdout", "stderr"} and its case ("args", "folder")."""
    return dict(fresh_runs["python_dash_m"], **fresh_runs["cases"]["python_dash_m"])


@pytest.fixture(scope="session")
def fresh_training_runs(request, tmp_path_factory):
    """ONE fresh interpreter (`tests.helpers.run_script`: OMP_NUM_THREADS=1) running
    tests/scripts/fresh_training_checks.py: four checks that each need one, done one after the other (each step's
    stdout/stderr in its own files):

    1. tests/test_training.py's `test_trained_folder_loads_with_auto_classes_and_remote_code`:
       `trained_with_checkpoints`' folder loads with `trust_remote_code` and predicts while `import hspnet` fails;
       report "remote_code" ("ok" or the error), remote_code.out/.err;
    2. tests/test_run_folder.py's `test_a_failing_write_is_one_line_and_leaves_no_half_file`: train.py's `main`
       (tiny_options, its data cache made beforehand, unlimited) under a 200 kB RLIMIT_FSIZE; report
       "file_size_limit" (the exit status), file_size_limit.out/.err, output in ``folder / "limited" / "out"``;
    3. tests/test_predict.py's `test_special_files_never_hang_the_command_line`: `special_files_command_lines` (on a
       `special_files_folder` and a `save_model` model, ``folder / "predict"``) run as `python scripts/predict.py
       ...`; report "predict" (the exit statuses), predict_I.out/.err;
    4. tests/test_resume.py's `test_resume_after_kill_matches_uninterrupted_run`: the options of
       `uninterrupted_ten_step_run` with output ``folder / "killed"``, killed with SIGKILL during step 9: the
       process's exit status and stderr.

    Returns ``dict(folder, result, report, outputs, killed_options, special_folder)``; ``outputs[NAME]`` is
    ``(stdout, stderr)`` of step NAME. Made once per session (`once_per_session`; the session fixtures it uses are
    asked for only by the process that makes it)."""
    return once_per_session(tmp_path_factory, "fresh-interpreter", lambda folder: _fresh_training_runs(
        folder, model_dir=request.getfixturevalue("trained_with_checkpoints")[0],
        reference_options=request.getfixturevalue("uninterrupted_ten_step_run")[0],
        tiny_clip_dir=request.getfixturevalue("tiny_clip_dir")))


def _fresh_training_runs(folder, model_dir, reference_options, tiny_clip_dir):
    from hspnet.data import load_demo_dataset

    limited = tiny_options(folder / "limited")
    load_demo_dataset(cache_dir=limited["cache_dir"], **limited["dataset_options"])  # the data cache, unlimited
    killed = dict(reference_options, output_dir=str(folder / "killed"), cache_dir=str(folder / "cache"))
    (folder / "predict").mkdir()
    predict_model = save_model(tiny_clip_dir, folder / "predict" / "model")
    image = write_rgb_png(folder / "predict" / "plain.png")
    with special_files_folder(folder / "predict" / "in", image) as special_folder:
        command_lines = special_files_command_lines(special_folder, predict_model)
        result = run_script([str(SCRIPTS / "fresh_training_checks.py"), str(folder), str(model_dir),
                             json.dumps(as_argv(limited)), json.dumps(command_lines), json.dumps(as_argv(killed))],
                            env_extra={"HF_MODULES_CACHE": str(folder / "modules"), "PYTHONDONTWRITEBYTECODE": "1"})
    report_path = folder / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None

    outputs = {path.stem: tuple(path.with_suffix(suffix).read_text() for suffix in (".out", ".err"))
               for path in folder.glob("*.out")}
    return dict(folder=Path(folder), result=result, report=report, outputs=outputs, killed_options=killed,
                special_folder=special_folder)


# ----------------------------------------------------------------------------------------------------------------------
# Two processes, made once per session
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def two_process_runs(tmp_path_factory):
    """ONE `accelerate launch --num_processes 2` on CPU (gloo; three interpreters: the launcher and two ranks) of
    tests/scripts/two_process_run.py, whose processes do, one after the other (the process group of step 1 serves
    the rest):

    1. tests/test_metrics.py: a `MultiLabelMetricAccumulator` fed through `add_from_accelerator` by a prepared loader
       of 7 samples (rank 0 reports what it gathered, and the inputs);
    2. tests/test_run_folder.py: scripts/train.py's `main` on an output folder locked by another process
       (`hold_lock`): each rank reports its exit status and how long it took to stop;
    3. tests/test_training.py and tests/test_hub.py: `main` trains one epoch pushing to the fake Hub (`hub_strategy
       checkpoint`, states at step 2 and at the end, step 3), with tracking; each rank reports the Hub calls it made.

    Returns ``dict(folder, result, reports, locked_out)``: the run's tmp folder (step 3's data cache is
    ``folder / "cache"``, its output ``folder / "out"``), the finished launch (stderr: both ranks), each rank's
    report (None if it wrote none) and the locked output folder of step 2. Made once per session
    (`once_per_session`)."""
    return once_per_session(tmp_path_factory, "two-process", _two_process_runs)


def _two_process_runs(folder):
    locked = tiny_options(folder / "locked")
    # with_tracking (the default): the trackers end, and the process group is destroyed, only after the last
    # collective call of the run (ending them earlier failed the end of every distributed run with tracking)
    options = hub_options(folder, epochs=1, schedule_epochs=1, hub_strategy="checkpoint", checkpointing_steps="2",
                          with_tracking=True)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    env = {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}  # the script imports tests.helpers
    holder = hold_lock(Path(locked["output_dir"]))
    try:
        result = run_script([str(SCRIPTS / "two_process_run.py"), str(folder), json.dumps(as_argv(locked)),
                             json.dumps(as_argv(options))], launcher=launcher, env_extra=env)
    finally:
        holder.kill()
        holder.wait()
    reports = {}
    for rank in ("0", "1"):
        path = folder / f"report-{rank}.json"
        reports[rank] = json.loads(path.read_text()) if path.exists() else None
    return dict(folder=Path(folder), result=result, reports=reports, locked_out=Path(locked["output_dir"]))
