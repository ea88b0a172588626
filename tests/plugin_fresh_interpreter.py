"""Session fixtures for the tests that need a fresh interpreter (loaded by `tests/conftest.py`).

A fresh interpreter that imports torch and transformers costs seconds, so the checks that need one share two runs of
`tests/fresh_interpreter_checks.py` (see its docstring): one with the installed `hspnet` (import side effects, global
state), one without it (remote code, then a Space's app.py). They start together with the one `python -m hspnet`
command line of the suite and are made once per test session (also under pytest-xdist). Each prints one JSON report;
each test asserts on its part, against values computed in the test process."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.session_once import once_per_session

# what conftest.py star-imports
__all__ = ["fresh_runs", "fresh_package_report", "fresh_remote_run", "fresh_python_dash_m"]

CHECKS_SCRIPT = str(Path(__file__).resolve().with_name("fresh_interpreter_checks.py"))


class FreshRun:
    """`python ARGS` started in a new interpreter, its output to files (so several can run at once); `finish()` waits
    for it and returns its exit status and output."""

    def __init__(self, args, cwd, env=None):
        self.stdout, self.stderr = Path(cwd) / "stdout.txt", Path(cwd) / "stderr.txt"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen([sys.executable, *map(str, args)], cwd=cwd, stdout=out, stderr=err,
                                            env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})))

    def finish(self, timeout=600):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        return {"returncode": self.process.returncode, "stdout": self.stdout.read_text(),
                "stderr": self.stderr.read_text()}



def json_report(finished):
    """The JSON report a finished run of the checks script printed last (failing with its stderr if it failed)."""
    assert finished["returncode"] == 0, finished["stderr"][-5000:]
    return json.loads(finished["stdout"].strip().splitlines()[-1])


def run_all(root, tiny_clip_dir, tiny_demo_model_dir):
    """The fresh runs, started together (each costs seconds of imports; the machine has more than one core).

    "package": a fresh interpreter that imports the core of the installed `hspnet`, trains, saves, loads and runs a
    tiny model, then registers one global hook.
    "remote": saved folders loaded as remote code in one interpreter where `hspnet` cannot be imported (`-I -S`:
    only site-packages on sys.path, no .pth files), then a written Space's app.py run in the same interpreter; the
    folders and the values expected from them ("cases") come from the test modules that own them.
    "python_dash_m": `python -m hspnet predict` on a missing model folder (tests/test_cli.py): its exit status and
    output."""
    from tests.test_cli import python_dash_m_case
    from tests.test_demo import write_space_for_fresh_run
    from tests.test_image_processing import save_processor_folder
    from tests.test_remote_code_and_pipeline import save_hspnet_folder
    from tests.test_rn50 import save_resnet_folder

    for name in ("package", "remote", "python-dash-m"):
        (root / name).mkdir()
    runs = {"package": FreshRun([CHECKS_SCRIPT, "package", tiny_clip_dir, root / "package" / "model"],
                                cwd=root / "package")}
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
        runs["remote"] = FreshRun(["-I", "-S", CHECKS_SCRIPT, "remote", sysconfig.get_paths()["purelib"],
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
def fresh_runs(tiny_clip_dir, tiny_demo_model_dir, tmp_path_factory):
    """The reports of `run_all` and its cases, made once per test session: under pytest-xdist the first worker
    that needs them makes them in the session's shared temporary folder, the others wait for them and read them
    (the folders are read-only for the tests)."""
    return once_per_session(tmp_path_factory, "fresh-runs",
                            lambda folder: run_all(folder, tiny_clip_dir, tiny_demo_model_dir))


@pytest.fixture(scope="session")
def fresh_package_report(fresh_runs):
    """The report of the "package" run of `run_all`."""
    return json_report(fresh_runs["package"])


@pytest.fixture(scope="session")
def fresh_remote_run(fresh_runs):
    """The "remote" run of `run_all`: {"report": its whole report, and for each folder name and "space":
    the case its test module made ("job", "expected" or what was written) with "result": its part of the report}."""
    report = json_report(fresh_runs["remote"])
    run = {"report": report}
    for name, case in fresh_runs["cases"].items():
        if name != "python_dash_m":
            run[name] = dict(case, result=report.get(name))
    return run


@pytest.fixture(scope="session")
def fresh_python_dash_m(fresh_runs):
    """The "python_dash_m" run of `run_all`: {"returncode", "stdout", "stderr"} and its case ("args", "folder")."""
    return dict(fresh_runs["python_dash_m"], **fresh_runs["cases"]["python_dash_m"])


def check_result(case):
    """The result of one check of a fresh run, failing with the run's traceback if it raised."""
    result = case["result"] if isinstance(case, dict) and "result" in case else case
    assert result is not None, "the check did not run"
    assert "error" not in result, result.get("error")
    return result
