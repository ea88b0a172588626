"""The plain functions and classes the tests share; the fixtures are in `tests/conftest.py`, the scripts some of them
run in other interpreters in `tests/scripts/`.

Sections: the repository, the test hierarchy, models and one-line errors; training runs (tiny options,
`scripts/train.py`'s main in this process, other processes); a fake Hugging Face Hub; fresh interpreters (once per
session) and the cases each test module checks in the shared ones; image files and models for predict and evaluate;
dataset trees in the official layouts (COCO-2014, VOC-2012, NUS-WIDE, CUB-200-2011) and custom data, and reading
datasets back. Images are tiny pictures written into a test's tmp_path: nothing binary is committed."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hspnet.data.hierarchy import builtin_hierarchy, coco_category_ids

# ----------------------------------------------------------------------------------------------------------------------
# The repository, the test hierarchy, models, one-line errors
# ----------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "scripts"  # what the tests run in fresh interpreters

# the hierarchy of `make_model` (tests/conftest.py): 6 labels in 4 groups
LABELS = ["cat", "dog", "traffic_light", "car", "bus", "person"]
GROUPS = ["animal", "outdoor", "vehicle", "person"]
LABEL_TO_GROUP = [0, 0, 1, 2, 2, 3]

TINY_DEMO_OPTIONS = {"num_train": 64, "num_test": 32, "image_size": 32}
"""The small demo set of the `trained_tiny_model` fixture (prepare it with these options and `tiny_demo_cache`)."""


def randomize_trainables(model, seed=3):
    """Perturb the GCN/meta-net so the test does not only see their initial values (gamma != 0.9, etc.)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (model.hspnet.gcn, model.hspnet.meta_net):
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))


def one_line(excinfo):
    """The message of a caught exception, checked to be one line."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------------------------------------
# Training runs: tiny options, scripts/train.py's main in this process, other processes
# ----------------------------------------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 6  # tiny_options: 60 demo images, 25 % held out -> 45 training images, batch 8 -> 6 steps


def tiny_options(tmp_path, **overrides):
    """A few seconds of training on a small demo set with the tiny random CLIP."""
    options = dict(
        clip_model="tiny-random",
        dataset="demo",
        dataset_options={"num_train": 60, "num_test": 23, "image_size": 32, "validation_fraction": 0.25},
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "out"),
        epochs=2,
        schedule_epochs=3,
        batch_size=8,
        lr=1e-3,
        gcn_lr=5e-3,
        loss_kwargs={"change_epoch": 1},
        with_tracking=False,
        logging_steps=1,
        seed=0,
    )
    options.update(overrides)
    return options


def as_argv(options):
    argv = []
    for key, value in options.items():
        argv += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def free_port() -> int:
    """A free loopback port for a multi-process run's rendezvous (not accelerate's fixed 29500, which another run on
    the machine may hold)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def one_thread():
    """torch on one thread, as in the interpreters `run_script` starts (OMP_NUM_THREADS=1), so that a run in this
    process and one in a subprocess add floats in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_script(args, env_extra=None, timeout=600, launcher=None):
    """`python ARGS` (or `LAUNCHER ARGS`) from the repository root, on one torch thread: the finished process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    command = (launcher or [sys.executable]) + args
    # a session of its own, so that a timeout takes every process down (the launcher and the ranks it started)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_streaming_two_process(report, mode, options, stop):
    """tests/scripts/streaming_two_process.py under `accelerate launch --multi_gpu --num_processes 2` on the CPU
    (gloo): `hspnet train` with `options` in `mode` ("full", "killed" at step `stop`, "resumed"); writes
    REPORT-RANK.json. The finished launcher process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    return run_script([str(SCRIPTS / "streaming_two_process.py"), str(report), mode, json.dumps(as_argv(options)),
                       str(stop)], launcher=launcher, env_extra={"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)})


def interrupt_training_at(monkeypatch, done_steps):
    """Ctrl-C (KeyboardInterrupt) inside the training step that follows `done_steps` applied steps: the run's own
    `training_step` method, patched on its class for this test."""
    from hspnet.training.loop import TrainingRun

    original = TrainingRun.training_step

    def training_step(self, batch, epoch):
        if self.state.global_step == done_steps:
            raise KeyboardInterrupt
        return original(self, batch, epoch)

    monkeypatch.setattr(TrainingRun, "training_step", training_step)


def load_train_main():
    """scripts/train.py's `main`, loaded from the file."""
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
    """The single `hspnet train: error:` line (and check there is exactly one and no traceback)."""
    errors = [line for line in lines if line.startswith("hspnet train: error:")]
    assert len(errors) == 1, lines[-20:]
    assert not any(line.startswith("Traceback") for line in lines), lines[-20:]
    return errors[0]


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


def hold_lock(folder):
    """A separate process holding the lock of `folder` as a training run does (`flock` on the lock file, which holds
    its PID, host and start time), returned once it holds it. It imports nothing of hspnet: a second of interpreter
    start instead of five of imports."""
    from hspnet.training.run_folder import LOCK_NAME

    holder = subprocess.Popen([sys.executable, str(SCRIPTS / "hold_lock.py"), str(folder), LOCK_NAME],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def digest_tree(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """{path relative to `folder`: sha256} of every file under `folder` (except under `skip`)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and (skip is None or skip not in p.parents)}


# ----------------------------------------------------------------------------------------------------------------------
# A fake Hub
# ----------------------------------------------------------------------------------------------------------------------


class FakeHub:
    """The Hugging Face Hub, faked: no network. `install` patches `HfApi.create_repo` / `HfApi.create_commit` and
    `huggingface_hub.snapshot_download` (the only Hub calls hspnet makes) to record every commit (its files, the epoch
    and step of its message, the thread, the token) and to keep the repository's files in a local folder under
    `root`, from which `snapshot_download` serves the resumes. `fail_commit` / `fail_create_repo` return an exception
    to raise for a call (or None), `before_commit` is called with each commit's record first (e.g. to block)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.commits: list[dict] = []
        self.repos: list[dict] = []
        self.downloads: list[dict] = []
        self.fail_commit = lambda record: None  # -> an exception to raise for this commit, or None
        self.fail_create_repo = lambda call: None
        self.before_commit = None  # called with the record before the files are stored (e.g. to block)

    def folder(self, repo_id: str) -> Path:
        return self.root / repo_id.replace("/", "--")

    def files(self, repo_id: str = "me/hspnet-demo") -> set[str]:
        base = self.folder(repo_id)
        return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}

    def periodic(self) -> list[dict]:
        return [c for c in self.commits if c["step"] is not None and "failed" not in c]

    def install(self, monkeypatch):
        import huggingface_hub
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoUrl

        fake = self

        def create_repo(api, repo_id, *, private=False, exist_ok=False, **kwargs):
            call = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "token": api.token}
            fake.repos.append(call)
            error = fake.fail_create_repo(call)
            if error is not None:
                raise error
            fake.folder(repo_id).mkdir(parents=True, exist_ok=True)
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_commit(api, repo_id, operations, *, commit_message, **kwargs):
            match = re.search(r"epoch (\d+), step (\d+)", commit_message)
            record = {"message": commit_message, "files": sorted(op.path_in_repo for op in operations),
                      "epoch": int(match.group(1)) if match else None, "step": int(match.group(2)) if match else None,
                      "thread": threading.current_thread().name, "token": api.token, "pid": os.getpid()}
            if fake.before_commit is not None:
                fake.before_commit(record)
            error = fake.fail_commit(record)
            if error is not None:
                record["failed"] = str(error)
                fake.commits.append(record)
                raise error
            assert fake.folder(repo_id).is_dir(), "commit to a repository that was never created"
            for op in operations:
                target = fake.folder(repo_id) / op.path_in_repo
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(op.path_or_fileobj, target)
            fake.commits.append(record)

        def snapshot_download(repo_id, *, allow_patterns=None, local_dir=None, token=None, revision=None, **kwargs):
            fake.downloads.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "token": token})
            source = fake.folder(repo_id)
            if not source.is_dir():
                raise OSError(f"404 Client Error: Repository Not Found for url: https://huggingface.co/{repo_id}")
            for path in source.rglob("*"):
                relative = path.relative_to(source).as_posix()
                if path.is_file() and (allow_patterns is None
                                       or any(fnmatch.fnmatch(relative, p) for p in allow_patterns)):
                    target = Path(local_dir) / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
            return str(local_dir)

        def not_used(*args, **kwargs):
            raise AssertionError("hspnet uploads with create_commit only")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", not_used)
        monkeypatch.setattr(HfApi, "upload_file", not_used)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return self


def synchronous_uploads(monkeypatch):
    """Each save waits for its upload: the commits of a run then follow its saves one for one."""
    from hspnet.hub.transfer import HubUploader

    original = HubUploader.save

    def save(self, **kwargs):
        queued = original(self, **kwargs)
        self.wait()
        return queued

    monkeypatch.setattr(HubUploader, "save", save)


def hub_options(tmp_path, **overrides):
    """`tiny_options` pushing to the fake Hub's me/hspnet-demo, with states every 4 steps."""
    options = dict(checkpointing_steps="4", evaluate_before_training=False, push_to_hub=True,
                   hub_model_id="me/hspnet-demo")
    return tiny_options(tmp_path, **dict(options, **overrides))


# ----------------------------------------------------------------------------------------------------------------------
# Fresh interpreters: once per session, the scripts of tests/scripts/
# ----------------------------------------------------------------------------------------------------------------------


def once_per_session(tmp_path_factory, name, make):
    """``make(folder)`` once per test session, in a new folder, for the few session fixtures that start other
    interpreters (tens of seconds each on 2 cores: the fresh runs, the 2-process launch).

    A session-scoped fixture is made once per process, and `make test` runs two pytest-xdist worker processes, which
    would each make their own. Here the first worker that needs the value makes it in the folder the workers share
    (the parent of their temporary folders), under a file lock; the other one waits for the lock and reads the
    pickled result. Without xdist it is a plain call. The result must be picklable, and the folder is read-only for
    the tests (copy what you change)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(shared) + ".lock"):
        done = shared / "made.pickle"
        if not done.is_file():
            if shared.exists():  # a worker that failed before: start again
                shutil.rmtree(shared)
            shared.mkdir()
            done.write_bytes(pickle.dumps(make(shared)))
        return pickle.loads(done.read_bytes())


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


def check_result(case):
    """The result of one check of a fresh run, failing with the run's traceback if it raised."""
    result = case["result"] if isinstance(case, dict) and "result" in case else case
    assert result is not None, "the check did not run"
    assert "error" not in result, result.get("error")
    return result


# ----------------------------------------------------------------------------------------------------------------------
# The cases of the shared fresh runs (the `fresh_runs` fixture): what each test module checks there, made in this
# process with the values expected from it
# ----------------------------------------------------------------------------------------------------------------------


def docs_python_blocks(page: str) -> list[str]:
    """The ```python blocks of docs/`page`, in order, as written."""
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def save_hspnet_folder(folder, tiny_clip_dir):
    """For the shared fresh run without hspnet (`fresh_remote_run`; tests/test_remote_code.py): the `make_model()`
    HSPNet saved, with the `pixel_values` input and the logits of the model as built (in this process, by the
    package), and the remote-code example of docs/zero-shot-pipeline.md to run there (tests/test_zero_shot_pipeline.py
    checks its scores)."""
    from hspnet import HSPNetForImageClassification

    torch.manual_seed(0)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=LABELS, groups=GROUPS,
                                                   label_to_group=LABEL_TO_GROUP)
    model.save_pretrained(folder)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(pixel_values, folder / "x.pt")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    return {"job": {"kind": "hspnet", "folder": str(folder), "pixels": str(folder / "x.pt"),
                    "zero_shot_code": docs_python_blocks("zero-shot-pipeline.md")[0]}, "expected": expected}


RESNET_IMAGE = 64  # the image size of the reduced CLIP ResNets of tests/test_rn50.py


def tiny_resnet_parts():
    """The parts (`load_openai_clip_parts`) of a random reduced CLIP ResNet in the OpenAI layout (vocabulary 514,
    64-px images; tests/official_reference.py), seed 0."""
    from hspnet.models.openai_clip import load_openai_clip_parts
    from tests.official_reference import RefCLIP, randomize

    torch.manual_seed(0)
    return load_openai_clip_parts(randomize(RefCLIP(vision="resnet", vocab_size=514, image_size=64), 0).eval()
                                  .state_dict())


def tiny_resnet_hspnet(hierarchy):
    """An HSPNet in eval mode on :func:`tiny_resnet_parts` with the byte-level tokenizer and randomised trainables:
    `(model, parts)`."""
    from hspnet import HSPNetForImageClassification
    from hspnet.utils.tiny_clip import byte_level_clip_tokenizer

    parts = tiny_resnet_parts()
    model = HSPNetForImageClassification.from_clip(parts, tokenizer=byte_level_clip_tokenizer(), **hierarchy).eval()
    randomize_trainables(model)
    return model, parts


def resnet_images(n=2, seed=1):
    return torch.randn(n, 3, RESNET_IMAGE, RESNET_IMAGE, generator=torch.Generator().manual_seed(seed))


def resnet_config(**overrides):
    """A reduced ResNet HSPNet (stages [1, 1, 1, 1], width 8, 64-pixel images) on 3 labels in 2 groups."""
    from hspnet import HSPNetConfig
    from hspnet.utils.tiny_clip import tiny_clip_config

    options = dict(
        clip_config=tiny_clip_config(hidden_size=32, projection_dim=16).to_dict(),
        vision_backbone="clip_resnet", resnet_layers=[1, 1, 1, 1], resnet_width=8, resnet_image_size=RESNET_IMAGE,
        id2label={0: "cat", 1: "dog", 2: "car"}, group_names=["animal", "vehicle"], label_to_group=[0, 0, 1],
    )
    options.update(overrides)
    return HSPNetConfig(**options)


def save_resnet_folder(folder):
    """For the shared fresh run without hspnet (`fresh_remote_run`; tests/test_rn50.py): a ResNet HSPNet with random
    prompts, relation, EOS positions and batch-norm statistics, saved with its input; its logits before saving are
    the expected ones."""
    from hspnet import HSPNetForImageClassification

    torch.manual_seed(0)
    model = HSPNetForImageClassification(resnet_config()).eval()
    with torch.no_grad():
        for buffer in (model.hspnet.group_prompt_embeds, model.hspnet.label_prompt_embeds, model.hspnet.relation):
            buffer.normal_()
        model.hspnet.group_eos_positions.fill_(5)
        model.hspnet.label_eos_positions.copy_(torch.tensor([7, 7, 8]))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
        x = resnet_images()
        expected = model(pixel_values=x).logits
    model.save_pretrained(folder)
    torch.save(x, folder / "x.pt")
    return {"job": {"kind": "resnet", "folder": str(folder), "pixels": str(folder / "x.pt")}, "expected": expected}


PROCESSOR_FILE = REPO / "hspnet" / "models" / "hspnet" / "image_processing_hspnet.py"


def load_processor_module():
    """The processor file loaded on its own (it is remote code: it must not need the `hspnet` package)."""
    spec = importlib.util.spec_from_file_location("image_processing_hspnet", PROCESSOR_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_image(width, height, seed=0, mode="RGB"):
    """For tests/test_image_processing.py: seeded noise over horizontal and vertical gradients: every pixel differs
    from its neighbours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(-40, 41, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = rng.integers(0, 256, size=(height, width, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([pixels, alpha], axis=-1), mode="RGBA")
    return Image.fromarray(pixels).convert(mode)


def save_processor_folder(folder):
    """For the shared fresh run without hspnet (`fresh_remote_run`; tests/test_image_processing.py): a tiny ViT
    classifier saved with the processor (size 64) and three PNG images (lossless), with the processor's pixels for
    them computed in this process."""
    from transformers import ViTConfig, ViTForImageClassification

    processor = load_processor_module().HSPNetImageProcessor(size=64)
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=64, patch_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    paths = []
    for i, (w, h) in enumerate([(640, 427), (427, 640), (333, 501)]):
        paths.append(str(folder.parent / f"{folder.name}-{i}.png"))
        make_image(w, h, seed=20 + i).save(paths[-1])
    expected = processor([Image.open(p) for p in paths], return_tensors="np")["pixel_values"]
    job = {"kind": "processor", "folder": str(folder), "images": paths,
           "pixels_out": str(folder.parent / f"{folder.name}-remote-pixels.npy")}
    return {"job": job, "expected": expected}


def write_space_for_fresh_run(space, model_dir):
    """For the shared fresh run (`fresh_remote_run`, which runs the Space's app.py last; tests/test_demo.py): a Space
    written by the command line, with what the command printed."""
    import io

    from hspnet.cli.demo import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--model", model_dir, "--write-space", str(space), "--title", "Shapes", "--threshold", "0.3",
                     "--top_k", "2"])
    # listed now: running app.py in the fresh run writes the copy's __pycache__
    pycache = [root for root, _, _ in os.walk(space / "hspnet") if "__pycache__" in root]
    return {"job": {"app": str(space / "app.py")}, "space": space, "model_dir": model_dir,
            "as_written": {"exit_code": code, "printed": printed.getvalue(), "pycache": pycache}}


def python_dash_m_case(folder):
    """For the shared fresh runs (`fresh_python_dash_m`; tests/test_cli.py): `python -m hspnet predict` with a
    missing model folder, on a folder with one file that is not an image."""
    (folder / "images").mkdir()
    (folder / "images" / "a.png").write_bytes(b"not checked: the model is looked at first")
    return {"args": ["-m", "hspnet", "predict", "--model", str(folder / "missing"), str(folder / "images")],
            "folder": str(folder)}


# ----------------------------------------------------------------------------------------------------------------------
# Image files and models for predict and evaluate
# ----------------------------------------------------------------------------------------------------------------------

# the hierarchy of the models of tests/test_predict.py and tests/test_evaluate.py (`save_model`)
PREDICT_LABELS = ["cat", "dog", "car", "bus"]
PREDICT_GROUPS = ["animal", "vehicle"]
PREDICT_LABEL_TO_GROUP = [0, 0, 1, 1]
EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the counter-clockwise quarter turns (np.rot90's k) that bring the stored pixels upright:
# 3 = stored upside down, 6 = stored turned 90 degrees counter-clockwise (display turns it clockwise), 8 = the converse
ROT90_K = {3: 2, 6: -1, 8: 1}


def save_model(tiny_clip_dir, folder, labels=PREDICT_LABELS, groups=PREDICT_GROUPS,
               label_to_group=PREDICT_LABEL_TO_GROUP, seed=0):
    """A tiny HSPNet (untrained, seeded) saved in `folder`: its path."""
    from hspnet import HSPNetForImageClassification

    torch.manual_seed(seed)
    model = HSPNetForImageClassification.from_clip(tiny_clip_dir, labels=list(labels), groups=list(groups),
                                                   label_to_group=list(label_to_group))
    model.save_pretrained(folder)
    return str(folder)


def grey_arrays(seed=0, shape=(24, 40)):
    """A random 16-bit grey array and its 8-bit equivalent, round(v / 257) (65535 / 255 = 257)."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    return wide, np.rint(wide / 257.0).astype(np.uint8)


def write_png_16bit(path, seed=0):
    """A 16-bit grey PNG; returns the 8-bit equivalent as an RGB PIL image."""
    wide, narrow = grey_arrays(seed)
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I")  # really stored as 16 bits
    return Image.fromarray(narrow, mode="L").convert("RGB")


def write_float_tiff(path, seed=1, shape=(24, 40)):
    """A 32-bit float grey TIFF with values in [0, 1]; returns the 8-bit equivalent (round(v * 255)) as RGB."""
    rng = np.random.default_rng(seed)
    narrow = rng.integers(0, 256, size=shape).astype(np.uint8)
    values = np.clip((narrow + rng.uniform(-0.4, 0.4, size=shape)) / 255.0, 0.0, 1.0).astype(np.float32)
    Image.fromarray(values, mode="F").save(path)
    assert Image.open(path).mode == "F"
    return Image.fromarray(narrow, mode="L").convert("RGB")


def write_exif_jpeg(path, orientation=6, seed=2, shape=(24, 40)):
    """A JPEG whose EXIF orientation tag says how to turn it; returns the upright image a viewer shows (the stored
    pixels, decoded without looking at the tag, turned by np.rot90 as the EXIF specification says)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    pixels[: shape[0] // 3] = [250, 20, 20]  # a red band on top of the stored image: not rotation invariant
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as stored:
        stored.load()
        assert stored.getexif().get(EXIF_ORIENTATION) == orientation
        raw = np.asarray(stored.convert("RGB"))  # convert() ignores the tag: the pixels as stored
    return Image.fromarray(np.ascontiguousarray(np.rot90(raw, k=ROT90_K[orientation])))


def write_png_bomb(path, width=10_000, height=10_000):
    """A tiny PNG file whose header claims width x height 1-bit grey pixels (a decompression bomb: 100 million
    pixels by default); missing parent folders are created."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * ((width + 7) // 8 + 1) * 4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return str(path)


def write_rgb_png(path, seed=3, shape=(24, 40)):
    """A random 8-bit RGB PNG: its path."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(path)
    return str(path)


def digest_files(*paths):
    """{path: sha256} of every regular file under the given files / folders (what 'unchanged' means)."""
    out = {}
    for top in paths:
        top = str(top)
        walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top) else os.walk(top)
        for root, _, files in walk:
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as handle:
                        out[path] = hashlib.sha256(handle.read()).hexdigest()
    return out


def fail_fsync(monkeypatch):
    """Make every os.fsync fail as on a full disk (atomic_write syncs before the rename)."""

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)


@contextlib.contextmanager
def special_files_folder(root, image):
    """``root``: a new folder with a copy of ``image`` (a.png) and, under image names, a FIFO, a socket, a link to a
    device and a broken link; the socket is closed when the block ends."""
    root.mkdir()
    shutil.copy(image, root / "a.png")
    os.mkfifo(root / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(root)  # a short relative name: socket paths are limited to about 100 bytes
    try:
        server.bind("sock.jpg")
    finally:
        os.chdir(cwd)
    (root / "dev.jpg").symlink_to("/dev/zero")
    (root / "gone.png").symlink_to(root / "missing.png")
    try:
        yield root
    finally:
        server.close()


def special_files_command_lines(folder, model_dir):
    """The arguments of two `scripts/predict.py` command lines: the folder with special files, then its FIFO named
    explicitly."""
    return [[str(folder), "--model", str(model_dir), "--no_progress"],
            [str(folder / "fifo.png"), "--model", str(model_dir), "--no_progress"]]


# ----------------------------------------------------------------------------------------------------------------------
# Dataset trees in the exact official layouts (COCO-2014, VOC-2012, NUS-WIDE, CUB-200-2011) and custom data, 8x8
# images
# ----------------------------------------------------------------------------------------------------------------------


def write_image(path, seed: int = 0, size: int = 8) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 193) % 256)
    image = Image.new("RGB", (size, size), colour)
    image.save(path, format="PNG" if str(path).endswith(".png") else "JPEG")
    return str(path)


def write_text(path, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


# --- COCO-2014

COCO_TRAIN = {  # image id -> category ids (repeats = several instances)
    9: [1, 1, 18],  # person, dog
    25: [24],  # zebra
    30: [1, 3, 3, 8],  # person, car, truck
    34: [2, 27],  # bicycle, backpack
    36: [1, 44, 90],  # person, bottle, toothbrush
    42: [],  # no annotation -> excluded from training
    49: [17, 18],  # cat, dog
    61: [62, 67],  # chair, dining table
}
COCO_VAL = {
    139: [1, 64],
    285: [23],
    632: [],  # no annotation -> not a test image
    724: [13, 3],
}


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def coco_json(split: str, images: dict[int, list[int]]) -> dict:
    hierarchy = builtin_hierarchy("coco")
    categories = [
        {"supercategory": hierarchy.groups[group], "id": cid, "name": name}
        for cid, name, group in zip(coco_category_ids(), hierarchy.labels, hierarchy.label_to_group)
    ]
    image_entries, annotations = [], []
    next_id = 1
    for image_id, cats in images.items():
        image_entries.append(
            {
                "license": 1,
                "file_name": coco_file_name(split, image_id),
                "coco_url": "",
                "height": 8,
                "width": 8,
                "date_captured": "2013-11-14 16:28:13",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for cid in cats:
            annotations.append(
                {
                    "segmentation": [[1.0, 1.0, 6.0, 1.0, 6.0, 6.0]],
                    "area": 12.5,
                    "iscrowd": 0,
                    "image_id": image_id,
                    "bbox": [1.0, 1.0, 5.0, 5.0],
                    "category_id": cid,
                    "id": next_id,
                }
            )
            next_id += 1
    return {
        "info": {"description": "COCO 2014 Dataset (test fixture)", "year": 2014},
        "images": image_entries,
        "licenses": [{"url": "", "id": 1, "name": "test"}],
        "annotations": annotations,
        "categories": categories,
    }


def make_coco_tree(root, train=None, val=None, images: bool = True) -> str:
    root = str(root)
    for split, content in (("train", train or COCO_TRAIN), ("val", val or COCO_VAL)):
        write_text(
            os.path.join(root, "annotations", f"instances_{split}2014.json"), json.dumps(coco_json(split, content))
        )
        if images:
            for image_id in content:
                write_image(os.path.join(root, f"{split}2014", coco_file_name(split, image_id)), seed=image_id)
    return root


def coco_expected_labels(split: str, content: dict[int, list[int]]) -> dict[str, list[int]]:
    index = {cid: i for i, cid in enumerate(coco_category_ids())}
    return {coco_file_name(split, image_id): sorted({index[c] for c in cats}) for image_id, cats in content.items()}


# --- VOC-2012

VOC_TRAIN = {  # image id -> [(class, difficult)]
    "2008_000008": [("horse", 0), ("person", 0)],
    "2008_000015": [("bottle", 0), ("bottle", 1)],
    "2008_000019": [("dog", 0)],
    "2008_000023": [("bottle", 0), ("diningtable", 0), ("person", 0), ("tvmonitor", 1)],
    "2008_000028": [("car", 0)],
    "2008_000033": [("aeroplane", 0), ("aeroplane", 0)],
    "2008_000036": [("bicycle", 0), ("person", 1)],
    "2008_000037": [("boat", 0)],
    "2008_000041": [("cat", 1)],  # only a difficult object: no positive with difficult="negative"
    "2008_000045": [("sheep", 0), ("cow", 0)],
}
VOC_VAL = {
    "2008_000002": [("tvmonitor", 0)],
    "2008_000003": [("person", 0), ("train", 0)],
    "2008_000007": [("bus", 0), ("car", 1)],
    "2008_000009": [("cow", 0)],
}


def voc_xml(image_id: str, objects: list[tuple[str, int]]) -> str:
    parts = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>The VOC2008 Database</database>",
        "\t\t<annotation>PASCAL VOC2008</annotation>",
        "\t\t<image>flickr</image>",
        "\t</source>",
        "\t<size>",
        "\t\t<width>8</width>",
        "\t\t<height>8</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, difficult in objects:
        parts += [
            "\t<object>",
            f"\t\t<name>{name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<occluded>0</occluded>",
            "\t\t<bndbox>",
            "\t\t\t<xmin>1</xmin>",
            "\t\t\t<ymin>1</ymin>",
            "\t\t\t<xmax>7</xmax>",
            "\t\t\t<ymax>7</ymax>",
            "\t\t</bndbox>",
            f"\t\t<difficult>{difficult}</difficult>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def voc_dir(root):
    """The VOC2012 folder of a `make_voc_tree` tree."""
    return os.path.join(root, "VOCdevkit", "VOC2012")


def make_voc_tree(root, train=None, val=None, images: bool = True, devkit: bool = True) -> str:
    root = str(root)
    voc = os.path.join(root, "VOCdevkit", "VOC2012") if devkit else os.path.join(root, "VOC2012")
    train, val = train or VOC_TRAIN, val or VOC_VAL
    for split, content in (("train", train), ("val", val)):
        write_text(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "".join(f"{i}\n" for i in content))
        for seed, (image_id, objects) in enumerate(content.items()):
            write_text(os.path.join(voc, "Annotations", f"{image_id}.xml"), voc_xml(image_id, objects))
            if images:
                write_image(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), seed=seed)
    return root


def voc_expected(content, difficult="negative") -> dict[str, list[int]]:
    labels = builtin_hierarchy("voc").labels
    out = {}
    for image_id, objects in content.items():
        out[f"{image_id}.jpg"] = sorted(
            {labels.index(name) for name, flag in objects if difficult == "positive" or not flag}
        )
    return out


# --- NUS-WIDE

NUS_TRAIN = {  # official relative path (as in TrainImagelist.txt, with a backslash) -> concept names
    "actor\\0001_2124494179.jpg": ["person", "dancing"],
    "airport\\0002_174174086.jpg": ["airport", "plane", "sky"],
    "animal\\0003_1235324612.jpg": ["animal", "dog", "grass"],
    "beach\\0004_2341343221.jpg": ["beach", "sand", "water", "ocean"],
    "beach\\0005_2342341212.jpg": [],  # no concept -> excluded
    "bear\\0006_2224356785.jpg": ["bear", "animal"],
    "cars\\0007_1241341234.jpg": ["cars", "street", "vehicle"],
    "sunset\\0008_234234234.jpg": ["sunset", "sky", "sun", "clouds"],
}
NUS_TEST = {
    "castle\\0101_324234234.jpg": ["castle", "buildings"],
    "cat\\0102_234234123.jpg": ["cat"],
    "clouds\\0103_765765765.jpg": [],
    "zebra\\0104_987987987.jpg": ["zebra", "animal", "grass"],
}


def make_nuswide_official(root, train=None, test=None, missing=(), images: bool = True, image_dir="Flickr") -> str:
    """The official NUS-WIDE files: Concepts81.txt, ImageList/, Groundtruth/TrainTestLabels/, images under Flickr/."""
    root = str(root)
    concepts = builtin_hierarchy("nuswide").labels
    train, test = train or NUS_TRAIN, test or NUS_TEST
    write_text(os.path.join(root, "ConceptsList", "Concepts81.txt"), "\n".join(concepts) + "\n")
    all_images = {**train, **test}
    write_text(os.path.join(root, "ImageList", "Imagelist.txt"), "".join(f"C:\\ImageData\\{p}\n" for p in all_images))
    for split, content in (("Train", train), ("Test", test)):
        write_text(os.path.join(root, "ImageList", f"{split}Imagelist.txt"), "".join(f"{p}\r\n" for p in content))
        for concept in concepts:
            values = "".join(f"{1 if concept in names else 0}\n" for names in content.values())
            write_text(os.path.join(root, "Groundtruth", "TrainTestLabels", f"Labels_{concept}_{split}.txt"), values)
    if images:
        for seed, relative in enumerate(all_images):
            if relative in missing:
                continue
            write_image(os.path.join(root, image_dir, *relative.split("\\")), seed=seed)
    return root


def nus_expected(content) -> dict[str, list[int]]:
    concepts = builtin_hierarchy("nuswide").labels
    return {p.replace("\\", "/"): sorted(concepts.index(n) for n in names) for p, names in content.items()}


def make_nuswide_flat(root, train=None, test=None, train_list="nus_train.txt", test_list="nus_val.txt") -> str:
    """The authors' flat layout: images/ and 'file,idx idx' lists (nus_val.txt format)."""
    root = str(root)
    concepts = builtin_hierarchy("nuswide").labels
    train, test = train or NUS_TRAIN, test or NUS_TEST
    for list_name, content in ((train_list, train), (test_list, test)):
        lines = []
        for seed, (relative, names) in enumerate(content.items()):
            flat = relative.split("\\")[-1].replace(".jpg", "_m.jpg")
            lines.append(f"{flat},{' '.join(str(concepts.index(n)) for n in names)}")
            write_image(os.path.join(root, "images", flat), seed=seed)
        write_text(os.path.join(root, list_name), "\n".join(lines))
    return root


# --- CUB-200-2011

CUB_IMAGES = [  # (relative path, is_train, positive attribute ids 1..312)
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1, [5, 10, 213]),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0074_59.jpg", 1, [1, 306]),
    ("001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 0, [5, 98, 135]),
    ("002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 1, [2, 3, 4, 199]),
    ("002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg", 0, [312]),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0037_190698.jpg", 1, []),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0049_190708.jpg", 1, [164, 295]),
    ("200.Common_Yellowthroat/Common_Yellowthroat_0008_190703.jpg", 0, [7, 16, 17]),
]


def make_cub_tree(
    root, images_spec=None, images: bool = True, attributes_txt: bool = True, extra_column_line=True
) -> str:
    root = str(root)
    spec = images_spec or CUB_IMAGES
    cub = os.path.join(root, "CUB_200_2011")
    write_text(os.path.join(cub, "images.txt"), "".join(f"{i} {p}\n" for i, (p, _, _) in enumerate(spec, start=1)))
    write_text(
        os.path.join(cub, "train_test_split.txt"), "".join(f"{i} {t}\n" for i, (_, t, _) in enumerate(spec, start=1))
    )
    lines = []
    for image_id, (_, _, positives) in enumerate(spec, start=1):
        for attribute in range(1, 313):
            present = 1 if attribute in positives else 0
            certainty = 3 if present else 1
            lines.append(f"{image_id} {attribute} {present} {certainty} 2.5")
    if extra_column_line:  # the real file has a few lines with an extra column; they must still parse
        lines[3] = lines[3] + " 0"
    write_text(os.path.join(cub, "attributes", "image_attribute_labels.txt"), "\n".join(lines) + "\n")
    if attributes_txt:
        names = [f"{i} has_attribute_{i}::value" for i in range(1, 313)]
        write_text(os.path.join(root, "attributes.txt"), "\n".join(names) + "\n")
    if images:
        for seed, (relative, _, _) in enumerate(spec):
            write_image(os.path.join(cub, "images", relative), seed=seed)
    return root


def cub_expected(spec=None) -> dict[str, tuple[int, list[int]]]:
    return {p: (t, sorted(a - 1 for a in attrs)) for p, t, attrs in (spec or CUB_IMAGES)}


# ----------------------------------------------------------------------------------------------------------------------
# Reading datasets back, and bad input files
# ----------------------------------------------------------------------------------------------------------------------

BOM = "\ufeff"  # the UTF-8 byte-order mark Excel writes


def rows_by_id(dataset):
    """{image_id: labels} of one split."""
    return {row["image_id"]: row["labels"] for row in dataset.select_columns(["image_id", "labels"])}


def all_rows(data):
    """{image_id: labels} of every split of a DatasetDict."""
    out = {}
    for split in data.values():
        out.update(rows_by_id(split))
    return out


def raises_at(call, file_suffix, line=None, field=None, match=()):
    """`call()` raises ONE line of DatasetFormatError naming the file (ending in `file_suffix`) and the line and
    field given, with every text of `match` in its message: the error."""
    from hspnet.data import DatasetFormatError

    with pytest.raises(DatasetFormatError) as error:
        call()
    message = str(error.value)
    assert error.value.file is not None and error.value.file.endswith(file_suffix), message
    if line is not None:
        assert error.value.line == line and f"line {line}" in message, message
    if field is not None:
        assert error.value.field == field, message
    for text in (match,) if isinstance(match, str) else match:
        assert text in message, message
    assert "\n" not in message
    return error.value


def finishes(call, timeout=60):
    """Run ``call`` in a thread; fail (instead of hanging the suite) if it does not return within ``timeout``."""
    result = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call blocked (a FIFO was opened?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


def folder_with(tmp_path, lines, name="data", images=None, newline=True):
    """A folder with ``metadata.csv`` = ``lines`` and an 8x8 image for every file name in the first column."""
    root = tmp_path / name
    for seed, line in enumerate(lines[1:]):
        write_image(root / line.split(",")[0], seed=seed)
    text = "\n".join(lines) + ("\n" if newline else "")
    write_text(root / "metadata.csv", text)
    return root


def write_truncated_jpeg(path):
    """The first half of a 64x64 JPEG (the header alone reads fine): its path."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
    return str(path)
