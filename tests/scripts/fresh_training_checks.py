"""Four checks that each need a fresh interpreter, run one after the other by the `fresh_training_runs` fixture
(tests/conftest.py); each step's stdout and stderr go to FOLDER/<step>.out and FOLDER/<step>.err:

1. "remote_code": MODEL_DIR loads and runs through transformers' remote code while the hspnet package cannot be
   imported (`sys.modules["hspnet"] = None`), in an interpreter that had not imported hspnet;
2. "file_size_limit": scripts/train.py's `main(LIMITED_ARGV)` while the kernel refuses every write past 200 kB
   (RLIMIT_FSIZE), as a full disk would;
3. "predict_<i>": `python scripts/predict.py ARGS` for each ARGS of PREDICT_COMMAND_LINES, as the command line runs it
   (the script as __main__): the exit statuses;
4. a training run `load_config(KILLED_ARGV)` killed with SIGKILL (like a crashed node) once its optimizer step 9 is
   done: the process ends there, so this step comes last.

`python tests/scripts/fresh_training_checks.py FOLDER MODEL_DIR LIMITED_ARGV PREDICT_COMMAND_LINES KILLED_ARGV`
(the last three: JSON lists). Steps 1-3 write FOLDER/report.json before step 4 starts."""

import contextlib
import importlib.util
import json
import os
import resource
import runpy
import signal
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
folder, model_dir = sys.argv[1], sys.argv[2]
limited_argv, predict_command_lines, killed_argv = map(json.loads, sys.argv[3:6])
report = {}


@contextlib.contextmanager
def output_to(name):
    """File descriptors 1 and 2 (print, logging, C code) go to folder/NAME.out and folder/NAME.err."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.path.join(folder, name + ".out"), "w") as out, open(os.path.join(folder, name + ".err"), "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


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
        spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
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
            runpy.run_path(str(REPO / "scripts" / "predict.py"), run_name="__main__")
            report["predict"].append(0)
        except SystemExit as stop:
            report["predict"].append(stop.code)
with open(os.path.join(folder, "report.json"), "w") as file:
    json.dump(report, file)

# 4. a run killed (SIGKILL, like a crashed node) once its optimizer step 9 is done and nothing of it is saved
import hspnet.training.ema as ema  # noqa: E402
import hspnet.training.loop as training  # noqa: E402
from hspnet.training.arguments import load_config  # noqa: E402

calls = {"n": 0}
original = ema.ModelEMA.update


def update(self, model):
    calls["n"] += 1
    if calls["n"] == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, model)


ema.ModelEMA.update = update
training.train(load_config(killed_argv))
