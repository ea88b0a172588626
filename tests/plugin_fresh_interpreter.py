"""Session fixtures for the tests that need a fresh interpreter (loaded by `tests/conftest.py`).

A fresh interpreter that imports torch and transformers costs seconds, so the checks that need one share two runs of
`tests/fresh_interpreter_checks.py` (see its docstring): one with the installed `hspnet` (import side effects, global
state), one without it (remote code, then a Space's app.py), started together and made once per test session (also
under pytest-xdist). Each prints one JSON report; each test asserts on its part, against values computed in the test
process."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

__all__ = ["fresh_runs", "fresh_package_report", "fresh_remote_run"]  # what conftest.py star-imports

CHECKS_SCRIPT = str(Path(__file__).resolve().with_name("fresh_interpreter_checks.py"))


class FreshRun:
    """The checks script started in a new interpreter (output to files, so several can run at once); `report()`
    waits for it and returns its JSON report."""

    def __init__(self, python_flags, args, cwd, env=None):
        self.stdout, self.stderr = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, *python_flags, CHECKS_SCRIPT, *map(str, args)], cwd=cwd, stdout=out, stderr=err,
                env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))

    def report(self):
        try:
            self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        assert self.process.returncode == 0, self.stderr.read_text()[-5000:]
        return json.loads(self.stdout.read_text().strip().splitlines()[-1])


def run_both(root, tiny_clip_dir, tiny_demo_model_dir):
    """Both fresh runs, started together (each costs seconds of imports; the machine has more than one core).

    "package": a fresh interpreter that imports the core of the installed `hspnet`, trains, saves, loads and runs a
    tiny model, then registers one global hook.
    "remote": saved folders loaded as remote code in one interpreter where `hspnet` cannot be imported (`-I -S`:
    only site-packages on sys.path, no .pth files), then a written Space's app.py run in the same interpreter; the
    folders and the values expected from them ("cases") come from the test modules that own them."""
    from tests.test_demo import write_space_for_fresh_run
    from tests.test_image_processing import save_processor_folder
    from tests.test_remote_code_and_pipeline import save_hspnet_folder
    from tests.test_rn50 import save_resnet_folder

    (root / "package").mkdir()
    package = FreshRun([], ["package", tiny_clip_dir, root / "package" / "model"], cwd=root / "package")
    remote = None
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
        (root / "remote").mkdir()  # the current folder of the run: not a folder above any of the ones it loads
        remote = FreshRun(["-I", "-S"], ["remote", sysconfig.get_paths()["purelib"], root / "jobs.json"],
                          cwd=root / "remote",
                          env={"HF_MODULES_CACHE": str(root / "modules"), "GRADIO_ANALYTICS_ENABLED": "False"})
        return {"package": package.report(), "remote": remote.report(), "cases": cases}
    finally:
        for run in (package, remote):
            if run is not None and run.process.poll() is None:
                run.process.kill()


@pytest.fixture(scope="session")
def fresh_runs(tiny_clip_dir, tiny_demo_model_dir, tmp_path_factory):
    """The reports of `run_both` and its cases, made once per test session: under pytest-xdist the first worker
    that needs them makes them in the session's shared temporary folder, the others wait for them and read them
    (the folders are read-only for the tests)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return run_both(tmp_path_factory.mktemp("fresh-runs"), tiny_clip_dir, tiny_demo_model_dir)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "fresh-runs"
    with FileLock(str(shared) + ".lock"):
        done = shared / "runs.pickle"
        if not done.is_file():
            if shared.exists():  # a worker that failed before: start again
                shutil.rmtree(shared)
            shared.mkdir()
            runs = run_both(shared, tiny_clip_dir, tiny_demo_model_dir)
            done.write_bytes(pickle.dumps(runs))
        return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def fresh_package_report(fresh_runs):
    """The report of the "package" run of `run_both`."""
    return fresh_runs["package"]


@pytest.fixture(scope="session")
def fresh_remote_run(fresh_runs):
    """The "remote" run of `run_both`: {"report": its whole report, and for each folder name and "space":
    the case its test module made ("job", "expected" or what was written) with "result": its part of the report}."""
    run = {"report": fresh_runs["remote"]}
    for name, case in fresh_runs["cases"].items():
        run[name] = dict(case, result=fresh_runs["remote"].get(name))
    return run


def check_result(case):
    """The result of one check of a fresh run, failing with the run's traceback if it raised."""
    result = case["result"] if isinstance(case, dict) and "result" in case else case
    assert result is not None, "the check did not run"
    assert "error" not in result, result.get("error")
    return result
