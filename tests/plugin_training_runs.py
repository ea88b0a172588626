"""Session fixtures for the training, resume, Hub and distributed tests (loaded by `tests/conftest.py`).

Each fixture is one expensive run that several tests assert on (copy its folder before changing it)."""

import json
import sys
from pathlib import Path

import pytest

# the 2-process run: `tests.test_training.run_script` under `accelerate launch` on CPU, with the fake Hub of
# tests/test_hub.py installed in every process; each process writes the Hub calls it made to calls-RANK.json
_TRAIN_WITH_FAKE_HUB = """\
import json, os, sys
import pytest
from tests.test_hub import FakeHub
import hspnet.training as training
mp = pytest.MonkeyPatch()
hub = FakeHub({hub!r}).install(mp)
status = training.main(sys.argv[1:])
rank = os.environ.get("RANK", "0")
with open(os.path.join({folder!r}, f"calls-{{rank}}.json"), "w") as calls:
    json.dump({{"commits": hub.commits, "repos": hub.repos}}, calls)
sys.exit(status)
"""


@pytest.fixture(scope="session")
def two_process_hub_run(tmp_path_factory):
    """One 2-process DDP run on CPU (`accelerate launch --num_processes 2`, gloo) of scripts/train.py's `main` for
    one epoch, pushing to a fake Hub (`hub_strategy checkpoint`, states at step 2 and at the end, step 3) with
    tracking on. One launch (three interpreters) serves the distributed training test of tests/test_training.py and
    the "only the main process uploads" test of tests/test_hub.py.

    Returns ``dict(folder, options, result, calls)``: the run's tmp folder (its data cache is ``folder / "cache"``,
    its output ``folder / "out"``), its options, the finished process and each rank's recorded Hub calls."""
    from tests.test_hub import hub_options
    from tests.test_training import REPO, as_argv, free_port, run_script

    folder = tmp_path_factory.mktemp("two-process")
    script = folder / "train_with_fake_hub.py"
    script.write_text(_TRAIN_WITH_FAKE_HUB.format(hub=str(folder / "hub"), folder=str(folder)))
    # with_tracking (the default): the trackers end, and the process group is destroyed, only after the last
    # collective call of the run (ending them earlier failed the end of every distributed run with tracking)
    options = hub_options(folder, epochs=1, schedule_epochs=1, hub_strategy="checkpoint", checkpointing_steps="2",
                          with_tracking=True)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    env = {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}  # the script imports tests.test_hub
    result = run_script([str(script)] + as_argv(options), launcher=launcher, env_extra=env)
    calls = {}
    for rank in ("0", "1"):
        path = folder / f"calls-{rank}.json"
        calls[rank] = json.loads(path.read_text()) if path.exists() else None
    return dict(folder=Path(folder), options=options, result=result, calls=calls)


@pytest.fixture(scope="session")
def uninterrupted_ten_step_run(tmp_path_factory):
    """The reference of the resume tests: a tiny run of 10 optimizer steps (6 per epoch, so it ends mid-epoch 1)
    with checkpoints every 4 steps and the metrics before training, not interrupted, trained in this process on one
    thread (as the interpreters `tests.test_training.run_script` starts: the same float reductions).

    Returns ``(options, output folder)``; ``options`` without ``output_dir`` / ``cache_dir`` are the ones a resumed
    run must use to be comparable."""
    from hspnet.training import TrainingConfig, train
    from tests.test_training import one_thread, tiny_options

    folder = tmp_path_factory.mktemp("uninterrupted")
    options = tiny_options(folder, output_dir=str(folder / "full"), max_train_steps=10, epochs=3,
                           checkpointing_steps="4", evaluate_before_training=True)
    with one_thread():
        train(TrainingConfig(**options))
    return options, folder / "full"
