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
