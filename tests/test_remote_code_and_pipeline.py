import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hspnet"] = None  # `import hspnet` now raises ImportError, as on a machine without the package
    try:
        import hspnet  # noqa: F401
        raise SystemExit("hspnet is importable in the clean process")
    except ImportError:
        pass
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    folder, pixels = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    x = torch.load(pixels)
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        base_logits = base(pixel_values=x).logits
    print(json.dumps({
        "config": type(config).__name__, "model": type(model).__name__, "base": type(base).__name__,
        "module": type(model).__module__, "logits": logits.tolist(), "base_logits": base_logits.tolist(),
        "frozen": not any(p.requires_grad for p in model.hspnet.clip.text_model.parameters()),
    }))
    """
)


def test_remote_code_loads_without_the_package(make_model, pixel_values, tmp_path):
    model = make_model()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hspnet.HSPNetConfig",
        "AutoModel": "modeling_hspnet.HSPNetModel",
        "AutoModelForImageClassification": "modeling_hspnet.HSPNetForImageClassification",
    }
    torch.save(pixel_values, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "x.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["config"] == "HSPNetConfig" and out["model"] == "HSPNetForImageClassification"
    assert out["base"] == "HSPNetModel" and out["frozen"]
    assert out["module"].startswith("transformers_modules"), out["module"]  # the copied remote code, not hspnet
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(out["base_logits"]), expected, atol=1e-6, rtol=1e-6)


def test_remote_code_files_import_only_each_other_torch_and_transformers():
    """What transformers checks before it runs remote code (`check_imports`): the files copied next to the weights
    need only torch, transformers and their usual dependencies (imports inside `try:` blocks are optional)."""
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    package = Path(__file__).resolve().parents[1] / "hspnet"
    files = {Path(f).name for f in get_relative_import_files(str(package / "modeling_hspnet.py"))}
    assert files == {"configuration_hspnet.py", "image_processing_hspnet.py", "losses.py", "losses_base.py",
                     "losses_cole.py", "modeling_clip_resnet.py", "modeling_label_graph.py",
                     "modeling_prompt_encoder.py"}
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
