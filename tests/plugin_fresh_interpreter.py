"""Session fixtures for the tests that need a fresh interpreter (loaded by `tests/conftest.py`).

A fresh interpreter that imports torch and transformers costs seconds, so the checks that need one share two runs of
`tests/fresh_interpreter_checks.py` (see its docstring): one with the installed `hspnet` (import side effects, global
state), one without it (remote code, then a Space's app.py). Each run prints one JSON report; each test asserts on
its part, against values computed here in the test process."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

__all__ = ["fresh_package_report", "fresh_remote_run"]  # what conftest.py star-imports

CHECKS_SCRIPT = str(Path(__file__).resolve().with_name("fresh_interpreter_checks.py"))


def run_fresh_interpreter(python_flags, args, cwd, env=None):
    """Run the checks script in a new interpreter; returns its JSON report."""
    result = subprocess.run([sys.executable, *python_flags, CHECKS_SCRIPT, *map(str, args)], cwd=cwd,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", **(env or {})), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def fresh_package_report(tiny_clip_dir, tmp_path_factory):
    """The report of a fresh interpreter that imports the core of the installed `hspnet`, trains, saves, loads and
    runs a tiny model, then registers one global hook."""
    root = tmp_path_factory.mktemp("fresh-package")
    return run_fresh_interpreter([], ["package", tiny_clip_dir, root / "model"], cwd=root)


@pytest.fixture(scope="session")
def fresh_remote_run(tiny_clip_dir, tiny_demo_model_dir, tmp_path_factory):
    """Saved folders loaded as remote code in one interpreter where `hspnet` cannot be imported (`-I -S`: only
    site-packages on sys.path, no .pth files), then a written Space's app.py run in the same interpreter.

    Returns {"report": the whole report, name: {"job", "expected", "result"} for each folder and "space"}; the folders
    and the expected values come from the test modules that own them."""
    from tests.test_demo import write_space_for_fresh_run
    from tests.test_image_processing import save_processor_folder
    from tests.test_remote_code_and_pipeline import save_hspnet_folder
    from tests.test_rn50 import save_resnet_folder

    root = tmp_path_factory.mktemp("fresh-remote")
    # distinct folder names: transformers copies each folder's remote code to transformers_modules/<folder name>
    folders = {
        "hspnet_vit": save_hspnet_folder(root / "hspnet-vit", tiny_clip_dir),
        "clip_resnet": save_resnet_folder(root / "hspnet-resnet"),
        "processor": save_processor_folder(root / "vit-with-hspnet-processor"),
    }
    space = write_space_for_fresh_run(root / "space", tiny_demo_model_dir)
    jobs = {"clip_dir": tiny_clip_dir, "folders": {name: case["job"] for name, case in folders.items()},
            "space": space["job"]}
    jobs_file = root / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    work = root / "elsewhere"  # not a folder above any of them
    work.mkdir()
    report = run_fresh_interpreter(
        ["-I", "-S"], ["remote", sysconfig.get_paths()["purelib"], jobs_file], cwd=work,
        env={"HF_MODULES_CACHE": str(root / "modules"), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    run = {"report": report}
    for name, case in {**folders, "space": space}.items():
        run[name] = dict(case, result=report.get(name))
    return run


def check_result(case):
    """The result of one check of a fresh run, failing with the run's traceback if it raised."""
    result = case["result"] if isinstance(case, dict) and "result" in case else case
    assert result is not None, "the check did not run"
    assert "error" not in result, result.get("error")
    return result
