"""Remote code (docs/method.md, section 7.1): a saved folder loads and runs through transformers' Auto classes where
`hspnet` cannot be imported (in the shared fresh interpreter of the `fresh_remote_run` fixture), the files copied
beside the weights import only each other, torch and transformers, and `pipeline("image-classification")` scores
every label with a sigmoid."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import check_result


def test_remote_code_loads_without_the_package(fresh_remote_run):
    """In a fresh interpreter where `import hspnet` fails, AutoConfig, AutoModelForImageClassification and AutoModel
    load the folder's copied code and give the package's logits."""
    case = fresh_remote_run["hspnet_vit"]
    config = json.loads((Path(case["job"]["folder"]) / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hspnet.HSPNetConfig",
        "AutoModel": "modeling_hspnet.HSPNetModel",
        "AutoModelForImageClassification": "modeling_hspnet.HSPNetForImageClassification",
    }
    assert fresh_remote_run["report"]["hspnet_import"] == "ModuleNotFoundError"  # hspnet is not importable there
    assert fresh_remote_run["report"]["hspnet_imported_by_remote_code"] is False
    out = check_result(case)
    assert out["config"] == "HSPNetConfig" and out["model"] == "HSPNetForImageClassification"
    assert out["base"] == "HSPNetModel" and out["frozen"]
    for module in (out["module"], out["base_module"]):  # the copied remote code, not hspnet
        assert module.startswith("transformers_modules"), module
    expected = case["expected"]
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(out["base_logits"]), expected, atol=1e-6, rtol=1e-6)


def test_remote_code_files_import_only_each_other_torch_and_transformers():
    """What transformers checks before it runs remote code (`check_imports`): the files copied next to the weights
    need only torch, transformers and their usual dependencies (imports inside `try:` blocks are optional)."""
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    package = Path(__file__).resolve().parents[1] / "hspnet" / "models" / "hspnet"
    files = {Path(f).name for f in get_relative_import_files(str(package / "modeling_hspnet.py"))}
    # the folder is exactly the remote-code bundle: every file of it is saved with the weights, and nothing else
    assert files | {"modeling_hspnet.py", "__init__.py"} == {p.name for p in package.glob("*.py")}
    allowed = {"torch", "transformers", "huggingface_hub", "numpy", "PIL"} | set(sys.stdlib_module_names)
    for name in files | {"modeling_hspnet.py"}:
        needed = set(get_imports(str(package / name)))
        assert needed <= allowed, (name, needed - allowed)


def _images(n=2, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


def _check_scores(results, model, images, processor):
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        probs = torch.sigmoid(model(pixel_values=inputs["pixel_values"]).logits)
    assert len(results) == len(images)
    for result, row in zip(results, probs):
        assert len(result) == model.config.num_labels
        assert {r["label"] for r in result} == set(model.config.label_names)
        for r in result:
            expected = float(row[model.config.label2id[r["label"]]])
            assert r["score"] == pytest.approx(expected, abs=1e-5)
        assert sum(r["score"] for r in result) != pytest.approx(1.0)  # sigmoid per label, not a softmax


def test_pipeline_from_saved_folder_and_object(make_model, tmp_path):
    from transformers import AutoImageProcessor, pipeline

    model = make_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    images = _images()
    processor = AutoImageProcessor.from_pretrained(folder)

    classifier = pipeline("image-classification", model=str(folder))
    results = classifier(images, top_k=model.config.num_labels)
    _check_scores(results, classifier.model, images, processor)

    classifier = pipeline("image-classification", model=model, image_processor=model.image_processor)
    results = classifier(images, top_k=model.config.num_labels)
    _check_scores(results, model, images, processor)


PIPELINE_AT_A_TERMINAL = """
import sys, time
import hspnet
from transformers import pipeline
print("IMPORTED", flush=True)
for folder in sys.argv[1:]:
    start = time.time()
    classifier = pipeline("image-classification", model=folder)
    print("LOADED", type(classifier.image_processor).__name__, round(time.time() - start, 2), flush=True)
"""


def run_at_a_terminal(args, env, timeout=300):
    """`python ARGS` with a pseudo-terminal as stdin/stdout/stderr (where transformers asks its `[y/N]` questions and
    waits 15 s for an answer): (exit status, output). Stops the child at once if it asks."""
    import os
    import pty
    import select
    import signal
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execve(sys.executable, [sys.executable, *args], env)
    output, deadline = b"", time.time() + timeout
    try:
        while time.time() < deadline and b"[y/N]" not in output:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                output += data
    finally:
        if b"[y/N]" in output or time.time() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_pipeline_loads_without_a_prompt_at_a_terminal(make_model, trained_tiny_model, tmp_path):
    """The README's one-liners at a terminal, after `import hspnet`: `pipeline("image-classification", model=folder)`
    asks nothing (transformers would derive a remote video processor from the image processor's `auto_map` and ask
    whether to run that code, waiting 15 s) and takes seconds; for a model built from a HF CLIP folder and for one
    trained by `hspnet train` (the demo's tiny random CLIP), both with the HSPNet image processor."""
    import os

    built = tmp_path / "built-on-a-clip-folder"
    make_model().save_pretrained(built)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TERM="dumb")
    status, output = run_at_a_terminal(["-c", PIPELINE_AT_A_TERMINAL, str(built), trained_tiny_model], env)
    assert "[y/N]" not in output and "custom code" not in output, output[-3000:]
    assert status == 0, output[-3000:]
    loaded = [line.split() for line in output.splitlines() if line.startswith("LOADED")]
    assert [words[1] for words in loaded] == ["HSPNetImageProcessor", "HSPNetImageProcessor"], output[-3000:]
    assert all(float(words[2]) < 10 for words in loaded), loaded  # the question would have waited 15 s
